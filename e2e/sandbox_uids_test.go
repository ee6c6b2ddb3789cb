package e2e

import (
	"context"
	"strings"
	"testing"

	"github.com/nimbus/gateway/client"
)

// TestSandboxUIDs: with a block of ids (--sandbox-user first-last) two
// sandboxes run as different users: one cannot read a file uploaded into
// the other, which that other's workload can change.
func TestSandboxUIDs(t *testing.T) {
	t.Parallel()
	g := startGatewayIn(t, sandboxUserDir(t), "--sandbox-user", "253000-253099") // not in the browsers' default block, 300000-399999
	script := `read f; cat "$f" 2>/dev/null || echo read-denied; echo changed >> "$(basename "$f")" && echo append-ok; echo "uid $(id -u)"; sleep 60`
	g.createSandbox("sbx-a", false, "/bin/sh", "-c", script)
	g.createSandbox("sbx-b", false, "/bin/sh", "-c", script)
	c := g.adminFor("sbx-a", "sbx-b")
	ctx := context.Background()
	a := g.open(c, client.SandboxTarget("sbx-a"), "stdio")
	b := g.open(c, client.SandboxTarget("sbx-b"), "stdio", "files")
	if _, err := c.Put(ctx, b.Status.Connect["files"], "secret.txt", strings.NewReader("b's\n"), 4, nil); err != nil {
		t.Fatal(err)
	}
	run := func(s *client.Session, file string) string {
		sh, err := client.DialStdio(ctx, s.Status.Connect["stdio"])
		if err != nil {
			t.Fatal(err)
		}
		defer sh.Close()
		if _, err := sh.Write([]byte(file + "\n")); err != nil {
			t.Fatal(err)
		}
		return readUntilOutput(t, sh, "uid 25")
	}
	outA := run(a, "../sbx-b/secret.txt")
	outB := run(b, "secret.txt")
	if !strings.Contains(outA, "read-denied") || strings.Contains(outA, "b's") {
		t.Errorf("sandbox a read b's file: %q", outA)
	}
	if !strings.Contains(outB, "b's\n") || !strings.Contains(outB, "append-ok") {
		t.Errorf("sandbox b with its own file: %q", outB)
	}
	var got strings.Builder
	if _, err := c.Download(ctx, b.Status.Connect["files"], "secret.txt", &got, 0, nil); err != nil || got.String() != "b's\nchanged\n" {
		t.Fatalf("b's file after its append: %q %v", got.String(), err)
	}
}
