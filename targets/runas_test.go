package targets

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// needRoot: switching users needs root. CI runs as root, so there the
// test must run, not skip.
func needRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		if os.Getenv("CI") == "true" {
			t.Fatal("CI must run the tests as root: workloads under --sandbox-user are untested otherwise")
		}
		t.Skip("switching the workload's user needs root")
	}
}

// passable makes dir and its parent traversable by others (t.TempDir
// makes both 0700).
func passable(t *testing.T, dir string) string {
	t.Helper()
	for _, d := range []string{filepath.Dir(dir), dir} {
		if err := os.Chmod(d, 0o711); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// TestRunAsUser: with RunAs the workload runs as that user and group and
// no other group, owns its root, and cannot read the gateway's files
// beside the sandboxes (keys are 0600 in a 0700 directory).
func TestRunAsUser(t *testing.T) {
	t.Parallel()
	needRoot(t)
	dir := passable(t, t.TempDir())
	if err := os.Mkdir(filepath.Join(dir, "keys"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "keys", "connect.json"), []byte("SECRET"), 0o600); err != nil {
		t.Fatal(err)
	}
	cred := &Credential{UID: 65534, GID: 65534}
	c := NewCatalog(newMemStore(), Options{DataDir: dir, StopGrace: time.Second, RunAs: cred})
	t.Cleanup(c.Close)
	ctx := context.Background()
	sb, err := c.CreateSandbox(ctx, "t1", SandboxSpec{ID: "sb", Command: []string{"/bin/sh", "-c",
		`read go; echo "ids $(id -u) $(id -g) $(id -G)"; touch mine && echo "owner $(stat -c %u:%g mine)";` +
			` cat ../../../keys/connect.json 2>/dev/null || echo "keys denied"; echo done`}})
	if err != nil || sb.State != Ready {
		t.Fatalf("create: %+v %v", sb, err)
	}
	fi, err := os.Stat(sb.Root)
	if st := fi.Sys().(*syscall.Stat_t); err != nil || st.Uid != 65534 || st.Gid != 65534 {
		t.Fatalf("sandbox root %s: %v %+v", sb.Root, err, fi.Sys())
	}
	w, _ := c.Workload("t1", "sb")
	s := w.Subscribe(SubscribeOptions{})
	defer s.Close()
	if _, err := w.Write([]byte("\n")); err != nil {
		t.Fatal(err)
	}
	out := waitFor(t, s, "done\n")
	for _, want := range []string{"ids 65534 65534 65534\n", "owner 65534:65534\n", "keys denied\n"} {
		if !strings.Contains(out, want) {
			t.Errorf("workload output %q lacks %q", out, want)
		}
	}
	if strings.Contains(out, "SECRET") {
		t.Fatal("the workload read the gateway's keys")
	}
}

// TestRunAsUnreachableRoot: a data directory the run-as user cannot pass
// through fails the sandbox with the reason, naming the directory.
func TestRunAsUnreachableRoot(t *testing.T) {
	t.Parallel()
	needRoot(t)
	dir := t.TempDir() // 0700 under a 0700 parent
	c := NewCatalog(newMemStore(), Options{DataDir: dir, StopGrace: time.Second, RunAs: &Credential{UID: 65534, GID: 65534}})
	t.Cleanup(c.Close)
	sb, err := c.CreateSandbox(context.Background(), "t1", SandboxSpec{ID: "sb", Command: []string{"true"}})
	if err == nil && sb.State == Ready {
		t.Fatal("a sandbox its user cannot reach started")
	}
	if got, _ := c.GetSandbox(context.Background(), "t1", "sb"); got.State != Failed || !strings.Contains(got.Error, "cannot reach") {
		t.Fatalf("sandbox %+v, create error %v", got, err)
	}
}
