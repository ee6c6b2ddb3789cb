package e2e

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/nimbus/gateway/client"
)

// TestSandboxUser: a gateway started with --sandbox-user nobody runs
// workloads that cannot read its keys (a workload running as the
// gateway's user could, and forge connect URLs with them), yet can change
// a file a client uploaded through the files channel. CI runs as root.
func TestSandboxUser(t *testing.T) {
	t.Parallel()
	dir := sandboxUserDir(t)
	g := startGatewayIn(t, dir, "--sandbox-user", "nobody")
	if _, err := os.Stat(filepath.Join(dir, "keys", "connect.json")); err != nil {
		t.Fatalf("the gateway made no connect keys: %v", err)
	}
	g.createSandbox("sbx-user", false, "/bin/sh", "-c",
		`read f; cat ../../../keys/connect.json ../../../nimbus.db 2>/dev/null || echo keys-denied; `+
			`echo changed >> "$f" && echo append-ok; echo "whoami $(id -un)"; sleep 60`)
	s := g.open(g.adminFor("sbx-user"), client.SandboxTarget("sbx-user"), "stdio", "files")
	ctx := context.Background()
	c := g.adminFor("sbx-user")
	if _, err := c.Put(ctx, s.Status.Connect["files"], "in/up.txt", strings.NewReader("uploaded\n"), 9, nil); err != nil {
		t.Fatal(err)
	}
	sh, err := client.DialStdio(ctx, s.Status.Connect["stdio"])
	if err != nil {
		t.Fatal(err)
	}
	defer sh.Close()
	if _, err := sh.Write([]byte("in/up.txt\n")); err != nil {
		t.Fatal(err)
	}
	out := readUntilOutput(t, sh, "whoami nobody\n")
	for _, want := range []string{"keys-denied\n", "append-ok\n"} {
		if !strings.Contains(out, want) {
			t.Errorf("workload output %q lacks %q", out, want)
		}
	}
	var got strings.Builder
	if _, err := c.Download(ctx, s.Status.Connect["files"], "in/up.txt", &got, 0, nil); err != nil || got.String() != "uploaded\nchanged\n" {
		t.Fatalf("the uploaded file after the workload's append: %q %v", got.String(), err)
	}
}

// sandboxUserDir is a data directory for a gateway with --sandbox-user:
// one the workloads' users can pass through. Switching users needs root,
// which CI has; elsewhere the test is skipped.
func sandboxUserDir(t *testing.T) string {
	t.Helper()
	if os.Geteuid() != 0 {
		if os.Getenv("CI") == "true" {
			t.Fatal("CI must run the tests as root")
		}
		t.Skip("--sandbox-user needs root")
	}
	if err := os.Chmod(tmpRoot, 0o711); err != nil { // MkdirTemp made it 0700
		t.Fatal(err)
	}
	dir, err := os.MkdirTemp(tmpRoot, "gw-user-")
	if err != nil {
		t.Fatal(err)
	}
	return dir
}
