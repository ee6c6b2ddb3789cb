package targets

import (
	"context"
	"errors"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nimbus/gateway/problem"
)

// newTestPool makes a pool on a fresh data dir and, at cleanup, closes it
// and checks that no Chromium process of that dir is left.
func newTestPool(t *testing.T, o BrowserOptions) *BrowserPool {
	t.Helper()
	if _, err := findChromium(""); err != nil {
		noChromium(t, err)
	}
	if o.DataDir == "" {
		o.DataDir = t.TempDir()
	}
	if o.StartTimeout == 0 {
		// Parallel tests start many Chromiums at once on two cores.
		o.StartTimeout = 30 * time.Second
	}
	p, err := NewBrowserPool(o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		p.Close()
		if left := ProfileProcesses(p.root, true); len(left) > 0 {
			t.Errorf("Chromium processes left after Close: %v", left)
		}
		if ents, _ := os.ReadDir(p.root); len(ents) > 0 {
			t.Errorf("profiles left after Close: %v", ents)
		}
	})
	return p
}

func acquire(t *testing.T, p *BrowserPool, sessionID string, ttl time.Duration) *Browser {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	b, err := p.Acquire(ctx, "t1", sessionID, time.Now().Add(ttl))
	if err != nil {
		t.Fatalf("acquire %s: %v", sessionID, err)
	}
	return b
}

// eventually polls cond for up to d.
func eventually(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// checkGone: no process of b's profile is alive and the profile is gone.
func checkGone(t *testing.T, b *Browser) {
	t.Helper()
	select {
	case <-b.Gone():
	case <-time.After(10 * time.Second):
		t.Fatalf("browser %s not cleaned up 10 s after it exited", b.ID)
	}
	if left := ProfileProcesses(b.dir, false); len(left) > 0 {
		t.Fatalf("processes of %s left: %v", b.ID, left)
	}
	if _, err := os.Stat(b.dir); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("profile %s not removed: %v", b.dir, err)
	}
}

// TestBrowserAcquireRelease: a session gets a browser of its own, with a
// DevTools endpoint and a process group; Release kills the whole group
// and removes the profile.
func TestBrowserAcquireRelease(t *testing.T) {
	t.Parallel()
	p := newTestPool(t, BrowserOptions{Warm: -1})
	b := acquire(t, p, "ses_a", time.Hour)
	if got, ok := p.Lookup("ses_a"); !ok || got != b {
		t.Fatalf("Lookup = %v, %v", got, ok)
	}
	v, err := b.Version(context.Background())
	if err != nil || !strings.Contains(v.Product, "Chrome") || v.ProtocolVersion == "" {
		t.Fatalf("Version = %+v, %v", v, err)
	}
	id, err := b.NewPage(context.Background())
	if err != nil || id == "" {
		t.Fatalf("NewPage: %q %v", id, err)
	}
	ts, err := b.Targets(context.Background())
	if err != nil || !slices.ContainsFunc(ts, func(ti TargetInfo) bool { return ti.TargetID == id && ti.Type == "page" }) {
		t.Fatalf("Targets = %+v, %v; want page %s", ts, err, id)
	}
	// The browser and whichever helpers (zygote, renderer, utility) carry
	// the profile on their command line — how many varies with the load
	// and the Chromium build — must all be in the browser's group.
	procs := ProfileProcesses(b.dir, false)
	if len(procs) < 1 {
		t.Fatalf("no process of the browser's profile: %v", procs)
	}
	for _, pp := range procs {
		if pgid, _ := syscall.Getpgid(pp.PID); pgid != b.PID {
			t.Errorf("process %d is in group %d, not the browser's %d", pp.PID, pgid, b.PID)
		}
	}

	select {
	case <-p.Release("ses_a"):
	case <-time.After(5 * time.Second):
		t.Fatal("the released browser is not gone after 5 s")
	}
	select {
	case <-b.Done():
	default:
		t.Fatal("Release's channel closed before Done")
	}
	checkGone(t, b)
	if _, ok := p.Lookup("ses_a"); ok {
		t.Fatal("Lookup after Release")
	}
	p.Release("ses_a") // idempotent
	if s := p.Stats(); s != (BrowserStats{}) {
		t.Fatalf("Stats after release: %+v", s)
	}
}

// TestBrowserWarmPool: Start fills the warm pool; an Acquire takes a warm
// browser (fast) and the pool refills in the background.
func TestBrowserWarmPool(t *testing.T) {
	t.Parallel()
	p := newTestPool(t, BrowserOptions{Warm: 2, Max: 4})
	if err := p.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	if s := p.Stats(); s.Warm != 2 || s.Live != 2 {
		t.Fatalf("after Start: %+v", s)
	}
	start := time.Now()
	b := acquire(t, p, "ses_w", time.Hour)
	if d := time.Since(start); d > 100*time.Millisecond {
		t.Errorf("a warm acquire took %v", d)
	}
	eventually(t, 20*time.Second, "the refill", func() bool { s := p.Stats(); return s.Warm == 2 && s.Live == 3 && s.InUse == 1 })
	<-p.Release("ses_w")
	checkGone(t, b)
	if s := p.Stats(); s.Warm != 2 || s.Live != 2 {
		t.Fatalf("after release: %+v", s)
	}
}

// TestBrowserMax: beyond Max live browsers, Acquire is resource_exhausted
// with a Retry-After; a release makes room.
func TestBrowserMax(t *testing.T) {
	t.Parallel()
	p := newTestPool(t, BrowserOptions{Warm: 1, Max: 2, MaxPerTenant: 3})
	if err := p.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	acquire(t, p, "ses_1", time.Hour)
	acquire(t, p, "ses_2", time.Hour)
	_, err := p.Acquire(context.Background(), "t1", "ses_3", time.Now().Add(time.Hour))
	var pe *problem.Error
	if !errors.As(err, &pe) || pe.Code != problem.ResourceExhausted || pe.RetryAfter <= 0 {
		t.Fatalf("third acquire: %v", err)
	}
	p.Release("ses_1") // not waited for: Acquire waits for the slot
	acquire(t, p, "ses_3", time.Hour)
	if s := p.Stats(); s.Live > 2 {
		t.Fatalf("over Max: %+v", s)
	}
}

// TestBrowserCrash: a browser killed from outside closes Done, its group
// and profile are cleaned up, and its slot is freed.
func TestBrowserCrash(t *testing.T) {
	t.Parallel()
	p := newTestPool(t, BrowserOptions{Warm: -1, Max: 1})
	b := acquire(t, p, "ses_c", time.Hour)
	if err := syscall.Kill(b.PID, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	select {
	case <-b.Done():
	case <-time.After(time.Second):
		t.Fatal("Done not closed within 1 s of the crash")
	}
	checkGone(t, b)
	if got, ok := p.Lookup("ses_c"); !ok || got != b {
		t.Fatal("the session's dead browser should still be found, so that its connections are refused")
	}
	p.Release("ses_c")
	acquire(t, p, "ses_d", time.Hour) // the slot is free again
}

// TestBrowserExpiry: the pool releases a session's browser at expiresAt
// by itself.
func TestBrowserExpiry(t *testing.T) {
	t.Parallel()
	p := newTestPool(t, BrowserOptions{Warm: -1})
	b := acquire(t, p, "ses_e", 300*time.Millisecond)
	select {
	case <-b.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("browser outlived its session")
	}
	checkGone(t, b)
	if _, ok := p.Lookup("ses_e"); ok {
		t.Fatal("Lookup after expiry")
	}
}

// TestBrowserSweep: Start kills the Chromium a dead gateway left running
// and removes leftover profiles.
func TestBrowserSweep(t *testing.T) {
	t.Parallel()
	dataDir := t.TempDir()
	chromium, err := findChromium("")
	if err != nil {
		noChromium(t, err)
	}
	old := filepath.Join(dataDir, "browsers", "brw_old")
	if err := os.MkdirAll(filepath.Join(dataDir, "browsers", "brw_stale", "Default"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(old, 0o700); err != nil {
		t.Fatal(err)
	}
	flags := slices.DeleteFunc(slices.Clone(chromiumFlags), func(f string) bool { return f == "--remote-debugging-pipe" })
	cmd := exec.Command(chromium, append(flags, "--user-data-dir="+old, "about:blank")...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL); _ = cmd.Wait() }()
	eventually(t, 10*time.Second, "the leftover Chromium", func() bool {
		_, err := os.Stat(filepath.Join(old, "Local State"))
		return err == nil
	})

	p := newTestPool(t, BrowserOptions{DataDir: dataDir, Warm: 1})
	if err := p.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	if left := ProfileProcesses(old, false); len(left) > 0 {
		t.Fatalf("leftover Chromium still running: %v", left)
	}
	ents, _ := os.ReadDir(p.root)
	if len(ents) != 1 || !strings.HasPrefix(ents[0].Name(), "brw_") || ents[0].Name() == "brw_old" {
		var left []string // what came back, and who still runs: for the diagnosis
		_ = filepath.WalkDir(old, func(p string, _ fs.DirEntry, _ error) error { left = append(left, p); return nil })
		t.Fatalf("profiles after the sweep: %v; under brw_old: %v; its processes: %v", ents, left, ProfileProcesses(old, false))
	}
}

// TestBrowserClose: Close kills browsers in use and warm alike.
func TestBrowserClose(t *testing.T) {
	t.Parallel()
	p := newTestPool(t, BrowserOptions{Warm: 1})
	if err := p.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	b := acquire(t, p, "ses_x", time.Hour)
	p.Close()
	checkGone(t, b)
	if _, err := p.Acquire(context.Background(), "t1", "ses_y", time.Now().Add(time.Hour)); problem.CodeOf(err) != problem.Unavailable {
		t.Fatalf("acquire after Close: %v", err)
	}
}

func TestBrowserNoChromium(t *testing.T) {
	t.Parallel()
	if _, err := NewBrowserPool(BrowserOptions{Chromium: "/nonexistent/chromium", DataDir: t.TempDir()}); err == nil {
		t.Fatal("NewBrowserPool with a missing binary succeeded")
	}
}

// TestBrowserBrokenChromium: a binary that never opens DevTools fails the
// launch with unavailable, within StartTimeout, leaving nothing behind.
func TestBrowserBrokenChromium(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	fake := filepath.Join(dir, "chromium")
	if err := os.WriteFile(fake, []byte("#!/bin/sh\necho broken >&2\nexit 3\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	p := newTestPool(t, BrowserOptions{Chromium: fake, DataDir: dir, Warm: 1, StartTimeout: 2 * time.Second})
	if err := p.Start(context.Background()); problem.CodeOf(err) != problem.Unavailable || !strings.Contains(err.Error(), "broken") {
		t.Fatalf("Start: %v", err)
	}
	if _, err := p.Acquire(context.Background(), "t1", "ses_b", time.Now().Add(time.Hour)); problem.CodeOf(err) != problem.Unavailable {
		t.Fatalf("Acquire: %v", err)
	}
	if s := p.Stats(); s.Live != 0 {
		t.Fatalf("Stats: %+v", s)
	}
}

// noChromium skips a browser test on a machine without Chromium, except
// under CI=true: CI installs it (.ci/run), so there it is a failure.
func noChromium(t *testing.T, err error) {
	t.Helper()
	if os.Getenv("CI") == "true" {
		t.Fatal("CI=true but no Chromium:", err)
	}
	t.Skip("no Chromium:", err)
}
