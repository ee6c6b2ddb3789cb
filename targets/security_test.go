package targets

import (
	"context"
	"hash/fnv"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Tests of issue 12's sandbox items: ids kept across restarts, an id not
// handed out while something owns it, RLIMIT_NPROC per sandbox user.

// TestUIDsKeptAcrossRestart: a sandbox runs as the same id after a
// restart. Before, ids were fnv64a(tenant/id) mod the block's size, the
// next free one on a collision, and nothing was stored: a sandbox of
// tenant t1 named to collide with an older one of t2 got the next id
// when created, and t2's id after a restart, which starts sandboxes in
// (tenant, id) order.
func TestUIDsKeptAcrossRestart(t *testing.T) {
	t.Parallel()
	needRoot(t)
	dir := passable(t, t.TempDir())
	block := UIDRange{First: 250300, Last: 250301}
	slot := func(k string) uint64 {
		h := fnv.New64a()
		_, _ = h.Write([]byte(k))
		return h.Sum64() % 2
	}
	victim, attacker := sandboxKey{"t2", "v"}, sandboxKey{}
	for i := range 64 {
		if id := "a" + strconv.Itoa(i); slot("t1/"+id) == slot("t2/v") {
			attacker = sandboxKey{"t1", id}
			break
		}
	}
	if attacker.id == "" {
		t.Fatal("no colliding name in 64 tries")
	}
	st := newMemStore()
	ctx := context.Background()
	opts := Options{DataDir: dir, StopGrace: time.Second, UIDs: &block}
	c1 := NewCatalog(st, opts)
	before := map[sandboxKey]uint32{}
	for _, k := range []sandboxKey{victim, attacker} { // the victim first
		if sb, err := c1.CreateSandbox(ctx, k.tenantID, SandboxSpec{ID: k.id, Command: []string{"sleep", "60"}}); err != nil || sb.State != Ready {
			c1.Close()
			t.Fatalf("create %v: %+v %v", k, sb, err)
		}
		before[k] = c1.RunAs(k.tenantID, k.id).UID
	}
	c1.Close()

	c2 := NewCatalog(st, opts)
	t.Cleanup(c2.Close)
	if err := c2.Start(ctx); err != nil {
		t.Fatal(err)
	}
	for k, uid := range before {
		got := c2.RunAs(k.tenantID, k.id)
		if got == nil || got.UID != uid {
			t.Errorf("%s/%s after the restart: %+v, want uid %d", k.tenantID, k.id, got, uid)
		}
		if sb, _ := st.GetSandbox(ctx, k.tenantID, k.id); sb.UID != uid {
			t.Errorf("%s/%s: the store records uid %d, want %d", k.tenantID, k.id, sb.UID, uid)
		}
		fi, err := os.Stat(c2.root(k.tenantID, k.id))
		if err != nil || fi.Sys().(*syscall.Stat_t).Uid != uid {
			t.Errorf("%s/%s: root %v %v, want owned by %d", k.tenantID, k.id, fi, err, uid)
		}
	}
}

// TestUIDNotReusedWhileOwned: an id no sandbox holds is not handed out
// while a process runs under it or a sandbox root (one the store knows
// nothing of) belongs to it; it is once the process is gone.
func TestUIDNotReusedWhileOwned(t *testing.T) {
	t.Parallel()
	needRoot(t)
	dir := passable(t, t.TempDir())
	const first = 250310
	c := NewCatalog(newMemStore(), Options{DataDir: dir, StopGrace: time.Second, UIDs: &UIDRange{First: first, Last: first + 2}})
	t.Cleanup(c.Close)
	ctx := context.Background()
	// As in a gateway that is up: the block was claimed (what ran under it
	// killed) at start, and something runs under one of its ids since.
	if err := c.claim(ctx); err != nil {
		t.Fatal(err)
	}
	stray := exec.Command("sleep", "60")
	stray.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: first, Gid: first}}
	if err := stray.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = stray.Process.Kill(); _ = stray.Wait() })
	stale := filepath.Join(dir, "sandboxes", "t9", "old")
	if err := os.MkdirAll(stale, 0o711); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(stale, first+1, first+1); err != nil {
		t.Fatal(err)
	}
	if sb, err := c.CreateSandbox(ctx, "t1", SandboxSpec{ID: "a", Command: []string{"sleep", "60"}}); err != nil || sb.State != Ready {
		t.Fatalf("create a: %+v %v", sb, err)
	}
	if got := c.RunAs("t1", "a"); got == nil || got.UID != first+2 {
		t.Fatalf("a runs as %+v, want the only id nothing owns, %d", got, first+2)
	}
	sb, err := c.CreateSandbox(ctx, "t1", SandboxSpec{ID: "b", Command: []string{"sleep", "60"}})
	if err != nil || sb.State != Failed || !strings.Contains(sb.Error, "no free user id") {
		t.Fatalf("b, with every id owned: %+v %v (runs as %+v)", sb, err, c.RunAs("t1", "b"))
	}
	_ = stray.Process.Kill()
	_ = stray.Wait()
	if _, err := c.DeleteSandbox(ctx, "t1", "b"); err != nil {
		t.Fatal(err)
	}
	if sb, err := c.CreateSandbox(ctx, "t1", SandboxSpec{ID: "b", Command: []string{"sleep", "60"}}); err != nil || sb.State != Ready {
		t.Fatalf("b once the stray process is gone: %+v %v", sb, err)
	}
	if got := c.RunAs("t1", "b"); got == nil || got.UID != first {
		t.Fatalf("b runs as %+v, want %d (%d still owns a root)", got, first, first+1)
	}
}

// TestWorkloadNProc: with NProc each sandbox's user may have that many
// processes: the workload's forks beyond get EAGAIN, from its first
// instruction on (the limit is set while it is stopped at its exec), and
// another sandbox, with a user and a count of its own, still forks.
func TestWorkloadNProc(t *testing.T) {
	t.Parallel()
	needRoot(t)
	if _, err := exec.LookPath("perl"); err != nil {
		t.Skip("the forking workload is a perl script")
	}
	dir := passable(t, t.TempDir())
	c := NewCatalog(newMemStore(), Options{DataDir: dir, StopGrace: time.Second,
		UIDs: &UIDRange{First: 250320, Last: 250329}, NProc: 8})
	t.Cleanup(c.Close)
	ctx := context.Background()
	const forker = `$| = 1; open(my $f, "<", "/proc/self/limits") or die; ` +
		`while (<$f>) { print "limit $1 $2\n" if /^Max processes\s+(\S+)\s+(\S+)/ } ` +
		`my $n = 0; for (1..30) { my $p = fork(); ` +
		`if (!defined $p) { print "fork failed: ", ($!{EAGAIN} ? "EAGAIN" : "$!"), "\n"; last } ` +
		`if ($p == 0) { sleep 60; exit 0 } $n++ } print "forked $n\ndone\n"; sleep 60`
	for _, id := range []string{"forker", "other"} {
		argv := []string{"perl", "-e", forker}
		if id == "other" {
			argv = []string{"/bin/sh", "-c", `read go; for i in 1 2 3 4 5; do sleep 60 & done; echo started; sleep 60`}
		}
		if sb, err := c.CreateSandbox(ctx, "t1", SandboxSpec{ID: id, Command: argv}); err != nil || sb.State != Ready {
			t.Fatalf("create %s: %+v %v", id, sb, err)
		}
	}
	w, _ := c.Workload("t1", "forker")
	s := w.Subscribe(SubscribeOptions{})
	defer s.Close()
	out := waitFor(t, s, "done\n")
	if !strings.Contains(out, "limit 8 8\n") {
		t.Errorf("the workload's own limit, first thing it read: %q", out)
	}
	if !strings.Contains(out, "fork failed: EAGAIN\n") {
		t.Errorf("forks beyond the limit: %q, want EAGAIN", out)
	}
	if m := regexp.MustCompile(`forked (\d+)\n`).FindStringSubmatch(out); m == nil {
		t.Errorf("no count of children: %q", out)
	} else if n, _ := strconv.Atoi(m[1]); n < 1 || n > 7 {
		t.Errorf("forked %d children under a limit of 8 processes", n)
	}
	// Another sandbox's user still has its own 8.
	wo, _ := c.Workload("t1", "other")
	so := wo.Subscribe(SubscribeOptions{})
	defer so.Close()
	if _, err := wo.Write([]byte("\n")); err != nil {
		t.Fatal(err)
	}
	if out := waitFor(t, so, "started\n"); strings.Contains(out, "fork") {
		t.Fatalf("the other sandbox could not fork: %q", out)
	}
	// On a PTY too.
	if sb, err := c.CreateSandbox(ctx, "t1", SandboxSpec{ID: "term", TTY: true,
		Command: []string{"/bin/sh", "-c", `grep "Max processes" /proc/self/limits; sleep 60`}}); err != nil || sb.State != Ready {
		t.Fatalf("create term: %+v %v", sb, err)
	}
	wt, _ := c.Workload("t1", "term")
	st := wt.Subscribe(SubscribeOptions{})
	defer st.Close()
	if out := waitFor(t, st, "\n"); !regexp.MustCompile(`Max processes\s+8\s+8\s`).MatchString(out) {
		t.Errorf("a PTY workload's limits: %q", out)
	}
	for _, id := range []string{"forker", "other", "term"} {
		if _, err := c.DeleteSandbox(ctx, "t1", id); err != nil {
			t.Fatal(err)
		}
	}
	if left := userProcesses(func(u uint32) bool { return u >= 250320 && u <= 250329 }); len(left) > 0 {
		t.Fatalf("processes left after the deletes: %v", left)
	}
}
