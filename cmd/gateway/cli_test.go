package main

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"

	"github.com/nimbus/gateway/authn"
)

// TestFirstRun: serve on an empty data dir prints a working token and a
// curl line, and the token opens a session on the demo catalog.
func TestFirstRun(t *testing.T) {
	dir := t.TempDir()
	g := startGateway(t, dir)
	defer g.stop()
	out := g.stdout.String()
	if !strings.Contains(out, "export NIMBUS_TOKEN=") || !strings.Contains(out, "curl -s -X POST http://localhost:") {
		t.Fatalf("welcome text:\n%s", out)
	}
	tok := strings.Fields(strings.SplitN(out, "export NIMBUS_TOKEN=", 2)[1])[0]
	var stdout, stderr bytes.Buffer
	t.Setenv("NIMBUS_TOKEN", tok)
	t.Setenv("NIMBUS_ENDPOINT", g.URL)
	if code := run([]string{"sessions", "open", "--service", "worker", "--channel", "stdio", "--ttl", "10m"}, &stdout, &stderr); code != 0 {
		t.Fatalf("sessions open: %d %s", code, stderr.String())
	}
	var s map[string]any
	if err := json.Unmarshal(stdout.Bytes(), &s); err != nil {
		t.Fatal(err)
	}
	id := s["metadata"].(map[string]any)["id"].(string)
	for _, args := range [][]string{{"sessions", "get", id}, {"sessions", "list", "--state", "open"}, {"sessions", "close", id, "--reason", "bye"}} {
		stdout.Reset()
		stderr.Reset()
		if code := run(args, &stdout, &stderr); code != 0 {
			t.Fatalf("%v: %d %s", args, code, stderr.String())
		}
		if !strings.Contains(stdout.String(), id) {
			t.Fatalf("%v printed %s", args, stdout.String())
		}
	}
	// A server error surfaces with its code and a non-zero exit.
	stderr.Reset()
	if code := run([]string{"sessions", "open", "--service", "nope", "--channel", "stdio"}, &stdout, &stderr); code != 1 ||
		!strings.Contains(stderr.String(), "permission_denied") {
		t.Fatalf("open without grant: %d %s", code, stderr.String())
	}
}

func TestTokenMint(t *testing.T) {
	dir := t.TempDir()
	var stdout, stderr bytes.Buffer
	code := run([]string{"token", "mint", "--data-dir", dir, "--tenant", "demo", "--subject", "alice",
		"--service", "worker", "--service", "browser", "--sandbox", "sbx-worker", "--admin", "--ttl", "2h"}, &stdout, &stderr)
	if code != 0 {
		t.Fatalf("%d %s", code, stderr.String())
	}
	tok := strings.TrimSpace(stdout.String())
	if strings.ContainsAny(tok, " \n") {
		t.Fatalf("token mint printed more than the token: %q", stdout.String())
	}
	key, err := authn.LoadOrCreateDevKey(dir)
	if err != nil {
		t.Fatal(err)
	}
	v, err := authn.NewVerifier([]authn.Key{authn.DevKey(key)})
	if err != nil {
		t.Fatal(err)
	}
	p, err := v.Verify(tok)
	if err != nil {
		t.Fatal(err)
	}
	if p.Tenant != "demo" || p.Subject != "alice" || !p.Admin || !p.CanService("browser") || !p.CanSandbox("sbx-worker") {
		t.Fatalf("claims %+v", p)
	}
	if code := run([]string{"token", "mint", "--data-dir", dir}, &stdout, &stderr); code != 2 {
		t.Fatalf("missing flags: exit %d", code)
	}
}

func jsonString(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}
