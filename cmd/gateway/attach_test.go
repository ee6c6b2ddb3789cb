package main

import (
	"bytes"
	"context"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/nimbus/gateway/authn"
	"github.com/nimbus/gateway/client"
)

// TestAttach: `gateway attach --sandbox` opens a session, relays stdin
// (ended by EOF) and output, exits with the workload's exit code, and
// closes its session when it leaves.
func TestAttach(t *testing.T) {
	dir := t.TempDir()
	g := startGateway(t, dir)
	defer g.stop()
	key, err := authn.LoadOrCreateDevKey(dir)
	if err != nil {
		t.Fatal(err)
	}
	tok, err := authn.Mint(key, authn.DevKeyID, authn.MintRequest{Tenant: "demo", Subject: "alice",
		Sandboxes: []string{"sbx-a"}, Admin: true, TTL: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	c := client.New(g.URL, "demo", tok)
	ctx := context.Background()
	if err := c.Do(ctx, http.MethodPost, "/v1/tenants/demo/sandboxes", map[string]any{
		"id": "sbx-a", "command": []string{"/bin/sh", "-c", `read x; echo "got $x"; echo oops >&2; exit 5`},
	}, nil); err != nil {
		t.Fatal(err)
	}

	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	oldStdin := os.Stdin
	os.Stdin = r
	defer func() { os.Stdin = oldStdin; r.Close() }()
	go func() { w.WriteString("hello\n"); w.Close() }()

	t.Setenv("NIMBUS_TOKEN", tok)
	t.Setenv("NIMBUS_ENDPOINT", g.URL)
	var stdout, stderr bytes.Buffer
	code := run([]string{"attach", "--sandbox", "sbx-a"}, &stdout, &stderr)
	if code != 5 {
		t.Fatalf("exit code %d, want 5 (stderr %q)", code, stderr.String())
	}
	if !strings.Contains(stdout.String(), "got hello") || !strings.Contains(stderr.String(), "oops") {
		t.Fatalf("stdout %q stderr %q", stdout.String(), stderr.String())
	}
	page, err := c.List(ctx, client.ListOptions{State: "closed"})
	if err != nil || len(page.Items) != 1 || *page.Items[0].Status.CloseReason != "detached" {
		t.Fatalf("attach did not close its session: %+v %v", page, err)
	}
}
