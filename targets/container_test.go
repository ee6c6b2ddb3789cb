package targets

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"
)

// testBlock is the sandbox user ids of the runc tests, apart from the
// other tests' blocks and from every gateway's default (200000-299999):
// test binaries run at once, and a catalog kills whatever runs under its
// block when it starts.
var testBlock = UIDRange{First: 4_100_000, Last: 4_100_099}

// needRunc skips a test where containers cannot run (not root, no runc),
// except in CI, which installs runc and runs as root: there it fails.
func needRunc(t testing.TB) {
	t.Helper()
	_, err := exec.LookPath("runc")
	if err == nil && os.Geteuid() == 0 {
		return
	}
	if os.Getenv("CI") != "" {
		t.Fatalf("runc tests need root and runc (CI installs runc): euid %d, %v", os.Geteuid(), err)
	}
	t.Skipf("runc tests need root and runc: euid %d, %v", os.Geteuid(), err)
}

// runcCatalog is a catalog whose sandboxes run under runc, with its own
// state directory; at the end of the test no container and no process of
// the block may be left.
func runcCatalog(t testing.TB, defaults Resources) (*Catalog, *Runc) {
	t.Helper()
	return runcCatalogWith(t, RuncConfig{Defaults: defaults})
}

// runcCatalogWith is runcCatalog with cfg (its StateDir the test's own).
func runcCatalogWith(t testing.TB, cfg RuncConfig) (*Catalog, *Runc) {
	t.Helper()
	needRunc(t)
	state := t.TempDir()
	cfg.StateDir = state
	rt, err := NewRunc(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	c := NewCatalog(newMemStore(), Options{DataDir: t.TempDir(), StopGrace: time.Second, UIDs: &testBlock, Runc: rt})
	t.Cleanup(func() {
		c.Close()
		if list, err := rt.runc.List(context.Background()); err != nil || len(list) > 0 {
			t.Errorf("containers left: %v %v", list, err)
		}
		inBlock := func(u uint32) bool { return u >= testBlock.First && u <= testBlock.Last }
		if ps := userProcesses(inBlock); len(ps) > 0 {
			t.Errorf("processes of the sandbox users left: %v", ps)
			killUsers(inBlock)
		}
		if bs, _ := os.ReadDir(filepath.Join(state, "bundles")); len(bs) > 0 {
			t.Errorf("bundles left: %v", bs)
		}
	})
	return c, rt
}

// runToEnd creates a sandbox running script under sh and returns its
// output once it exited, and how.
func runToEnd(t *testing.T, c *Catalog, spec SandboxSpec) (string, ExitStatus) {
	t.Helper()
	sb, err := c.CreateSandbox(context.Background(), "t1", spec)
	if err != nil {
		t.Fatal(err)
	}
	if sb.State != Ready {
		t.Fatalf("sandbox %s: %s", sb.State, sb.Error)
	}
	w, ok := c.Workload("t1", spec.ID)
	if !ok {
		t.Fatal("no workload")
	}
	s := w.Subscribe(SubscribeOptions{})
	defer s.Close()
	out, errOut, _ := drain(t, s)
	<-w.Done()
	return string(out) + string(errOut), w.Exit()
}

func TestContainerConfinement(t *testing.T) {
	c, _ := runcCatalog(t, Resources{})
	// A server of the host's on loopback, as the gateway's port would be.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	_, port, _ := net.SplitHostPort(ln.Addr().String())
	// Another sandbox's root, and the data directory, on the host.
	other, err := c.CreateSandbox(context.Background(), "t1", SandboxSpec{ID: "other", Command: []string{"sleep", "60"}})
	if err != nil || other.State != Ready {
		t.Fatalf("other sandbox: %+v %v", other, err)
	}
	if err := os.WriteFile(filepath.Join(other.Root, "secret"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	script := strings.Join([]string{
		`ps -e -o comm= >/tmp/ps; echo "ps: $(sort /tmp/ps | tr '\n' ' ')"`,
		`echo "id: $(id -u) $(id -g)"`,
		`echo "capeff: $(grep CapEff /proc/self/status | cut -f2)"`,
		`echo "nnp: $(grep NoNewPrivs /proc/self/status | cut -f2)"`,
		`echo "pwd: $(pwd) home: $HOME"`,
		`touch /usr/x 2>/dev/null && echo "usr: writable" || echo "usr: read-only"`,
		`touch /workspace/mine && echo "workspace: writable"`,
		`touch /tmp/t && echo "tmp: writable"`,
		`for p in ` + c.dataDir + ` ` + other.Root + ` /etc/shadow /root; do test -e $p && echo "visible: $p"; done`,
		`echo "etc: $(ls /etc | tr '\n' ' ')"`,
		`mount -t tmpfs none /mnt 2>/dev/null && echo "mount: ok" || echo "mount: refused"`,
		`unshare -r true 2>/dev/null && echo "unshare: ok" || echo "unshare: refused"`,
		`echo "net: $(ls /sys/class/net | tr '\n' ' ')"`,
		// PTRACE_ATTACH (16, syscall 101 on x86_64) on the gateway's pid: no
		// such process in this namespace.
		`perl -e '$r = syscall(101, 16, ` + fmt.Sprint(os.Getpid()) + `, 0, 0); print "ptrace: ", ($r == -1 ? "refused ($!)" : "attached"), "\n"'`,
		`kill -0 ` + fmt.Sprint(os.Getpid()) + ` 2>/dev/null && echo "gateway: signalable" || echo "gateway: unreachable"`,
		`(exec 3<>/dev/tcp/127.0.0.1/` + port + `) 2>/dev/null && echo "loopback: reached" || echo "loopback: refused"`,
		`echo "init: $(tr '\0' '\n' </proc/1/cmdline | head -2 | tr '\n' ' ')"`,
	}, "\n")
	out, st := runToEnd(t, c, SandboxSpec{ID: "probe", Command: []string{"bash", "-c", script}})
	t.Logf("inside:\n%s", out)
	if st.Code != 0 || st.Reason != ReasonExited {
		t.Errorf("exit %+v", st)
	}
	want := []string{
		// The init, the shell and ps alone: no host process, not the other
		// sandbox's sleep.
		"ps: bash init ps \n", "init: /.nimbus/init pipes \n",
		"id: 41000", "capeff: 0000000000000000", "nnp: 1", "pwd: /workspace home: /workspace",
		"usr: read-only", "workspace: writable", "tmp: writable",
		"mount: refused", "unshare: refused", "ptrace: refused", "gateway: unreachable", "net: lo \n", "loopback: refused",
	}
	for _, w := range want {
		if !strings.Contains(out, w) {
			t.Errorf("inside, want %q", w)
		}
	}
	for _, bad := range []string{"visible:", "sleep", "etc: " + "shadow"} {
		if strings.Contains(out, bad) {
			t.Errorf("inside, %q appears", bad)
		}
	}
	if _, err := os.Stat(filepath.Join(c.root("t1", "probe"), "mine")); err != nil {
		t.Errorf("a file the workload made in /workspace is not in the sandbox root: %v", err)
	}
	if _, err := c.DeleteSandbox(context.Background(), "t1", "other"); err != nil {
		t.Fatal(err)
	}
}

func TestContainerExit(t *testing.T) {
	c, _ := runcCatalog(t, Resources{})
	_, st := runToEnd(t, c, SandboxSpec{ID: "code", Command: []string{"sh", "-c", "exit 3"}})
	if st != (ExitStatus{Code: 3, Reason: ReasonExited}) {
		t.Errorf("exit 3: %+v", st)
	}
	_, st = runToEnd(t, c, SandboxSpec{ID: "sig", Command: []string{"sh", "-c", "kill -TERM $$"}})
	if st != (ExitStatus{Code: 128 + 15, Signal: "SIGTERM", Reason: ReasonSignaled}) {
		t.Errorf("kill -TERM $$: %+v", st)
	}
	sb, err := c.CreateSandbox(context.Background(), "t1", SandboxSpec{ID: "nf", Command: []string{"no-such-command"}})
	if err != nil {
		t.Fatal(err)
	}
	if sb.State != Failed || !strings.Contains(sb.Error, "no-such-command") {
		t.Errorf("a missing command: %s %q", sb.State, sb.Error)
	}
}

func TestContainerSignalsAndStop(t *testing.T) {
	c, _ := runcCatalog(t, Resources{})
	ctx := context.Background()
	// sleep as the workload would ignore SIGTERM as pid 1 of its
	// namespace; under the init it is an ordinary process.
	sb, err := c.CreateSandbox(ctx, "t1", SandboxSpec{ID: "s", Command: []string{"sh", "-c", `trap 'echo got INT; exit 7' INT; echo ready; while :; do sleep 0.05; done`}})
	if err != nil || sb.State != Ready {
		t.Fatalf("%+v %v", sb, err)
	}
	w, _ := c.Workload("t1", "s")
	s := w.Subscribe(SubscribeOptions{})
	defer s.Close()
	waitFor(t, s, "ready")
	if err := w.Signal(syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	out, _, _ := drain(t, s)
	<-w.Done()
	if !strings.Contains(string(out), "got INT") || w.Exit().Code != 7 {
		t.Errorf("SIGINT: %q %+v", out, w.Exit())
	}
	if err := w.Signal(syscall.SIGINT); err != os.ErrProcessDone {
		t.Errorf("signal after exit: %v", err)
	}

	sb, err = c.CreateSandbox(ctx, "t1", SandboxSpec{ID: "sleep", Command: []string{"sleep", "600"}})
	if err != nil || sb.State != Ready {
		t.Fatalf("%+v %v", sb, err)
	}
	w, _ = c.Workload("t1", "sleep")
	// SIGSTOP stops the workload, not its init, and SIGCONT goes on.
	if err := w.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	waitState(t, w.PID(), 'T')
	if err := w.Signal(syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	waitState(t, w.PID(), 'S')
	// SIGTERM (Stop's first step) ends sleep before the grace is up.
	w.Stop(time.Minute)
	if st := w.Exit(); st.Signal != "SIGTERM" {
		t.Errorf("Stop: %+v, want SIGTERM", st)
	}
}

// waitState waits until the workload under init has process state want.
func waitState(t *testing.T, initPID int, want byte) {
	t.Helper()
	for range 500 {
		kids, _ := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", initPID, initPID))
		f := strings.Fields(string(kids))
		if len(f) > 0 {
			st, _ := os.ReadFile("/proc/" + f[0] + "/stat")
			if i := strings.LastIndexByte(string(st), ')'); i > 0 && len(st) > i+2 && st[i+2] == want {
				return
			}
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("the workload never reached state %c", want)
}

func TestContainerTTY(t *testing.T) {
	c, _ := runcCatalog(t, Resources{})
	sb, err := c.CreateSandbox(context.Background(), "t1", SandboxSpec{ID: "tty", TTY: true, Command: []string{"bash", "--norc", "-i"}})
	if err != nil || sb.State != Ready {
		t.Fatalf("%+v %v", sb, err)
	}
	w, _ := c.Workload("t1", "tty")
	// The terminal's fd must outlive a collection (the console socket's
	// handle on it once closed it under the workload).
	runtime.GC()
	runtime.GC()
	s := w.Subscribe(SubscribeOptions{})
	defer s.Close()
	if _, err := w.Write([]byte("stty size; tty; echo $TERM; echo one-$((1+1))\n")); err != nil {
		t.Fatal(err)
	}
	out := waitFor(t, s, "one-2")
	for _, want := range []string{"24 80", "/dev/pts/0", "xterm-256color"} {
		if !strings.Contains(out, want) {
			t.Errorf("want %q in %q", want, out)
		}
	}
	// The resize reaches the shell, which owns the terminal, as under the
	// process runtime.
	if err := w.Resize(100, 40); err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write([]byte("stty size\n")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, s, "40 100")
	if _, err := w.Write([]byte("exit 5\n")); err != nil {
		t.Fatal(err)
	}
	<-w.Done()
	if st := w.Exit(); st.Code != 5 {
		t.Errorf("exit 5: %+v", st)
	}
}

func TestContainerForkBombStopsAtPids(t *testing.T) {
	c, _ := runcCatalog(t, Resources{PIDs: 32})
	sb, err := c.CreateSandbox(context.Background(), "t1", SandboxSpec{ID: "bomb", Command: []string{"bash", "-c", `bomb() { bomb | bomb & }; bomb; wait`}})
	if err != nil || sb.State != Ready {
		t.Fatalf("%+v %v", sb, err)
	}
	w, _ := c.Workload("t1", "bomb")
	s := w.Subscribe(SubscribeOptions{})
	defer s.Close()
	// Forks fail once the cgroup holds its 32 pids; bash says so.
	waitFor(t, s, "Resource temporarily unavailable")
	maxPIDs := uint64(0)
	for range 20 {
		if u := w.Usage(); u != nil {
			maxPIDs = max(maxPIDs, u.PIDs)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if maxPIDs == 0 || maxPIDs > 32 {
		t.Errorf("pids in the cgroup at %d, limit 32", maxPIDs)
	}
	// Stopping it takes every process of the bomb with it.
	if _, err := c.DeleteSandbox(context.Background(), "t1", "bomb"); err != nil {
		t.Fatal(err)
	}
	t.Logf("pids peaked at %d of 32", maxPIDs)
}

func TestContainerOOM(t *testing.T) {
	c, _ := runcCatalog(t, Resources{Memory: 32 << 20})
	ctx := context.Background()
	_, st := runToEnd(t, c, SandboxSpec{ID: "hog", Command: []string{"tail", "/dev/zero"}})
	if st.Reason != ReasonOOM || st.Signal != "SIGKILL" {
		t.Errorf("tail /dev/zero under 32Mi: %+v, want SIGKILL for oom", st)
	}
	sb := waitSandbox(t, c, "hog", Failed)
	if sb.State != Failed || sb.Reason != ReasonOOM || !strings.Contains(sb.Error, "oom") {
		t.Errorf("after the OOM kill: %s %q %q", sb.State, sb.Reason, sb.Error)
	}
	// Under the limit the same sandbox lives, and its usage is read.
	sb, err := c.CreateSandbox(ctx, "t1", SandboxSpec{ID: "fine", Command: []string{"sleep", "60"}, Resources: Resources{Memory: 64 << 20}})
	if err != nil || sb.State != Ready {
		t.Fatalf("%+v %v", sb, err)
	}
	sb, err = c.GetSandbox(ctx, "t1", "fine")
	if err != nil || sb.Usage == nil || sb.Usage.MemoryBytes == 0 || sb.Usage.PIDs < 2 {
		t.Errorf("usage of a running sandbox: %+v %v", sb.Usage, err)
	}
}

func TestContainerSweep(t *testing.T) {
	c, rt := runcCatalog(t, Resources{})
	sb, err := c.CreateSandbox(context.Background(), "t1", SandboxSpec{ID: "left", Command: []string{"sleep", "600"}})
	if err != nil || sb.State != Ready {
		t.Fatalf("%+v %v", sb, err)
	}
	w, _ := c.Workload("t1", "left")
	// A gateway that died would have left this container behind; the next
	// one, on the same state directory, removes it before anything starts.
	rt2, err := NewRunc(rt.cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	n, err := rt2.Sweep(context.Background())
	if err != nil || n != 1 {
		t.Fatalf("sweep: %d %v", n, err)
	}
	select {
	case <-w.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("the swept container's workload did not end")
	}
	if processAlive(w.PID()) {
		t.Error("the swept container's init is alive")
	}
}

// waitSandbox waits until the catalog has recorded state for sandbox id
// (its exit watcher runs after the workload's Done).
func waitSandbox(t *testing.T, c *Catalog, id string, state SandboxState) Sandbox {
	t.Helper()
	var sb Sandbox
	for range 500 {
		var err error
		if sb, err = c.GetSandbox(context.Background(), "t1", id); err != nil {
			t.Fatal(err)
		}
		if sb.State == state {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	return sb
}

func TestContainerEgress(t *testing.T) {
	needRunc(t)
	ecfg := egressTestConfig(t)
	e := newTestEgress(t, ecfg)
	outside := newOutsideHost(t)
	outsideSrv := serveTCP(t, outside, outsideAddr+":0", "outside")
	// A service of the host on every address, as the gateway's port is.
	hostSrv := serveTCP(t, "", "0.0.0.0:0", "host")
	_, outsidePort, _ := net.SplitHostPort(outsideSrv)
	_, hostPort, _ := net.SplitHostPort(hostSrv)
	c, _ := runcCatalogWith(t, RuncConfig{Egress: e})
	script := `try() { if r=$(timeout 5 bash -c "exec 3<>/dev/tcp/$1/$2 && head -1 <&3" 2>/dev/null) && [ -n "$r" ]; then echo "$3: $r"; else echo "$3: unreachable"; fi; }
gw=$(ip route | awk '/^default/ {print $3}')
echo "route: via $gw"
try ` + outsideAddr + ` ` + outsidePort + ` outside
try 127.0.0.1 ` + hostPort + ` loopback
echo before-bridge; try "$gw" ` + hostPort + ` bridge; echo after-bridge
try ` + outsideHostSide + ` ` + hostPort + ` host-veth
echo "net: $(ls /sys/class/net | tr '\n' ' ')"`
	out, st := runToEnd(t, c, SandboxSpec{ID: "egress", Network: NetworkEgress, Command: []string{"bash", "-c", script}})
	t.Logf("inside:\n%s", out)
	if st.Code != 0 {
		t.Errorf("exit %+v", st)
	}
	for _, want := range []string{
		"outside: outside ",      // reached, through NAT
		"loopback: unreachable",  // its own loopback, not the host's
		"bridge: unreachable",    // the host through the bridge
		"host-veth: unreachable", // the host's other addresses
		"net: eth0 lo",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("inside, want %q", want)
		}
	}
	// The namespace went with the container.
	if ns, _ := os.ReadDir(filepath.Join(ecfg.StateDir, "netns")); len(ns) > 0 {
		t.Errorf("network namespaces left: %v", ns)
	}
}
