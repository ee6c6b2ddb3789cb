package targets

import (
	"context"
	"fmt"
	"os"
	"os/exec"
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

// TestRunAsUIDRange: with a block of ids each sandbox runs as an id of
// its own (user and group), cannot enter another sandbox's root, and a
// deleted sandbox's root goes back to the gateway before its id is free.
func TestRunAsUIDRange(t *testing.T) {
	t.Parallel()
	needRoot(t)
	dir := passable(t, t.TempDir())
	c := NewCatalog(newMemStore(), Options{DataDir: dir, StopGrace: time.Second, UIDs: &UIDRange{First: 300000, Last: 300009}})
	t.Cleanup(c.Close)
	ctx := context.Background()
	script := `read go; echo "ids $(id -u) $(id -g)"; echo mine > mine.txt; ` +
		`cat ../b/mine.txt 2>/dev/null || echo "b denied"; ls ../b >/dev/null 2>&1 || echo "b unlisted"; echo done; sleep 60`
	for _, id := range []string{"a", "b"} {
		if sb, err := c.CreateSandbox(ctx, "t1", SandboxSpec{ID: id, Command: []string{"/bin/sh", "-c", script}}); err != nil || sb.State != Ready {
			t.Fatalf("create %s: %+v %v", id, sb, err)
		}
	}
	ca, cb := c.RunAs("t1", "a"), c.RunAs("t1", "b")
	if ca == nil || cb == nil || ca.UID == cb.UID || ca.UID < 300000 || ca.UID > 300009 || ca.GID != ca.UID {
		t.Fatalf("ids a %+v, b %+v", ca, cb)
	}
	// b writes its file first, then a tries to read it.
	wb, _ := c.Workload("t1", "b")
	sb := wb.Subscribe(SubscribeOptions{})
	defer sb.Close()
	if _, err := wb.Write([]byte("\n")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, sb, "done\n")
	fi, err := os.Stat(filepath.Join(dir, "sandboxes", "t1", "b", "mine.txt"))
	if err != nil || fi.Sys().(*syscall.Stat_t).Uid != cb.UID {
		t.Fatalf("b's own file: %v %+v", err, fi)
	}
	wa, _ := c.Workload("t1", "a")
	sa := wa.Subscribe(SubscribeOptions{})
	defer sa.Close()
	if _, err := wa.Write([]byte("\n")); err != nil {
		t.Fatal(err)
	}
	out := waitFor(t, sa, "done\n")
	for _, want := range []string{fmt.Sprintf("ids %d %d\n", ca.UID, ca.UID), "b denied\n", "b unlisted\n"} {
		if !strings.Contains(out, want) {
			t.Errorf("a's output %q lacks %q", out, want)
		}
	}

	// Deleted: the root is the gateway's and closed, the id free again.
	if _, err := c.DeleteSandbox(ctx, "t1", "b"); err != nil {
		t.Fatal(err)
	}
	fi, err = os.Stat(filepath.Join(dir, "sandboxes", "t1", "b"))
	if err != nil {
		t.Fatal(err)
	}
	if st := fi.Sys().(*syscall.Stat_t); st.Uid != 0 || fi.Mode().Perm() != 0o700 {
		t.Fatalf("deleted sandbox root: owner %d, mode %v", st.Uid, fi.Mode())
	}
	if c.RunAs("t1", "b") != nil {
		t.Fatal("a deleted sandbox still holds its id")
	}
}

// TestUIDAllocator: one id per sandbox, stable while held, recorded in
// the store, refused when the block is used up, reusable once released.
func TestUIDAllocator(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	st := newMemStore()
	for _, id := range []string{"x", "y", "z", "w"} {
		if _, err := st.CreateSandbox(ctx, Sandbox{TenantID: "t", ID: id}); err != nil {
			t.Fatal(err)
		}
	}
	// Ids no process of this machine has (the test binary's are 0).
	a := newUIDAllocator(UIDRange{First: 250010, Last: 250012}, st, t.TempDir())
	seen := map[uint32]bool{}
	for _, id := range []string{"x", "y", "z"} {
		uid, err := a.acquire(ctx, sandboxKey{"t", id}, "")
		if err != nil || uid < 250010 || uid > 250012 || seen[uid] {
			t.Fatalf("acquire %s = %d, %v (seen %v)", id, uid, err, seen)
		}
		seen[uid] = true
		if again, _ := a.acquire(ctx, sandboxKey{"t", id}, ""); again != uid {
			t.Fatalf("acquire %s again = %d, want %d", id, again, uid)
		}
		if sb, _ := st.GetSandbox(ctx, "t", id); sb.UID != uid {
			t.Fatalf("the store says %s has uid %d, want %d", id, sb.UID, uid)
		}
	}
	if _, err := a.acquire(ctx, sandboxKey{"t", "w"}, ""); err == nil {
		t.Fatal("a fourth sandbox got an id from a block of three")
	}
	if err := a.release(ctx, sandboxKey{"t", "y"}); err != nil {
		t.Fatal(err)
	}
	if sb, _ := st.GetSandbox(ctx, "t", "y"); sb.UID != 0 {
		t.Fatalf("a released id is still y's in the store: %d", sb.UID)
	}
	if _, err := a.acquire(ctx, sandboxKey{"t", "w"}, ""); err != nil {
		t.Fatalf("after a release: %v", err)
	}
}

// TestRunAsEscapedProcessKilled: a child that left its sandbox's process
// group and session survives the workload's stop, but not the sandbox's
// delete: its id is only given out again once nothing runs under it.
func TestRunAsEscapedProcessKilled(t *testing.T) {
	t.Parallel()
	needRoot(t)
	dir := passable(t, t.TempDir())
	const uid = 300100
	c := NewCatalog(newMemStore(), Options{DataDir: dir, StopGrace: time.Second, UIDs: &UIDRange{First: uid, Last: uid}})
	t.Cleanup(c.Close)
	ctx := context.Background()
	if _, err := c.CreateSandbox(ctx, "t1", SandboxSpec{ID: "a", Command: []string{"/bin/sh", "-c",
		// The escaped shell says so itself, once it has its own session.
		`setsid sh -c 'echo escaped; exec sleep 300 </dev/null >/dev/null 2>&1' & sleep 60`}}); err != nil {
		t.Fatal(err)
	}
	w, _ := c.Workload("t1", "a")
	s := w.Subscribe(SubscribeOptions{})
	waitFor(t, s, "escaped\n")
	s.Close()
	if _, err := c.DeleteSandbox(ctx, "t1", "a"); err != nil {
		t.Fatal(err)
	}
	if left := userProcesses(func(u uint32) bool { return u == uid }); len(left) > 0 {
		t.Fatalf("processes of the deleted sandbox's user still run: %v", left)
	}
	// The only id of the block is free again.
	if sb, err := c.CreateSandbox(ctx, "t1", SandboxSpec{ID: "b", Command: []string{"sleep", "60"}}); err != nil || sb.State != Ready {
		t.Fatalf("create after delete: %+v %v", sb, err)
	}
}

// TestRunAsClaimAtStart: before the first workload starts, whatever runs
// under the block's ids is killed and every sandbox root is closed.
func TestRunAsClaimAtStart(t *testing.T) {
	t.Parallel()
	needRoot(t)
	dir := passable(t, t.TempDir())
	const uid = 300200
	stray := exec.Command("sleep", "300")
	stray.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uid, Gid: uid}}
	if err := stray.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = stray.Process.Kill(); _ = stray.Wait() })
	st := newMemStore()
	old := Sandbox{TenantID: "t1", ID: "old", State: Stopped, Command: []string{"true"}, Root: filepath.Join(dir, "sandboxes", "t1", "old")}
	if _, err := st.CreateSandbox(context.Background(), old); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(old.Root, 0o750); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(old.Root, uid, uid); err != nil {
		t.Fatal(err)
	}
	c := NewCatalog(st, Options{DataDir: dir, StopGrace: time.Second, UIDs: &UIDRange{First: uid, Last: uid + 9}})
	t.Cleanup(c.Close)
	if err := c.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := stray.Wait(); err == nil {
		t.Fatal("a process under the block's ids survived the start")
	}
	fi, err := os.Stat(old.Root)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Sys().(*syscall.Stat_t).Uid != 0 || fi.Mode().Perm() != 0o700 {
		t.Fatalf("a stopped sandbox's root after the start: owner %d, mode %v", fi.Sys().(*syscall.Stat_t).Uid, fi.Mode())
	}
}
