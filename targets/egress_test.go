package targets

import (
	"bufio"
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/containernetworking/cni/pkg/invoke"
	types100 "github.com/containernetworking/cni/pkg/types/100"
	"go.uber.org/zap/zaptest"
	"golang.org/x/sys/unix"
)

// The egress tests run real CNI plugins, real namespaces and the host's
// real iptables. They are not parallel: the plugins turn on the host-wide
// net.ipv4.ip_forward, which each test puts back as it found it.

// The test's "outside host": a namespace on a veth from the host, on
// TEST-NET-2 (this host's own uplink may well sit on TEST-NET-1). It has
// no route to the containers' subnet, so only NAT gets a reply to them.
const (
	outsideHostSide = "198.51.100.1"
	outsideAddr     = "198.51.100.2"
	outsidePrefix   = "/24"
)

// blockedDial bounds a dial that a DROP rule is expected to swallow; the
// test asserts it fails, never how long it took.
const blockedDial = 4 * time.Second

func TestEgress(t *testing.T) {
	cfg := egressTestConfig(t)
	e := newTestEgress(t, cfg)
	ctx := context.Background()

	for _, r := range e.rules {
		if at, err := r.jumpPositions(ctx); err != nil || len(at) != 1 || at[0] != 1 {
			t.Fatalf("%s %s: jump to %s at %v (%v), want first and once", r.bin, r.hook, r.chain, at, err)
		}
	}

	outside := newOutsideHost(t)
	outsideSrv := serveTCP(t, outside, outsideAddr+":0", "outside")

	// Attach two containers at once (the plugins race on the first ADDs
	// to make the bridge and its address).
	ids := []string{"tenant.a.0001", "tenant.b.0002"}
	paths := make([]string, len(ids))
	var wg sync.WaitGroup
	errs := make([]error, len(ids))
	for i, id := range ids {
		wg.Go(func() { paths[i], errs[i] = e.Attach(ctx, id) })
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("Attach %s: %v", ids[i], err)
		}
	}
	nsA, nsB := paths[0], paths[1]
	for _, p := range paths {
		if !isNetns(p) {
			t.Fatalf("%s is not a network namespace", p)
		}
	}
	ports := bridgePorts(t, cfg.Bridge)
	if len(ports) != 2 {
		t.Fatalf("bridge ports %v, want 2", ports)
	}
	for _, p := range ports {
		if b, err := os.ReadFile("/sys/class/net/" + p + "/brport/isolated"); err != nil || strings.TrimSpace(string(b)) != "1" {
			t.Errorf("bridge port %s isolated = %q (%v), want 1", p, b, err)
		}
	}
	if _, err := e.Attach(ctx, ids[0]); err == nil {
		t.Error("a second Attach of the same id succeeded")
	}
	if _, err := e.Attach(ctx, "../escape"); err == nil {
		t.Error("Attach of a bad id succeeded")
	}
	if _, err := os.Lstat(filepath.Join(cfg.StateDir, "escape")); err == nil {
		t.Error("a bad id made a file")
	}

	gw := bridgeAddr(t, cfg.Bridge)
	ipA, ipB := containerAddr(t, nsA), containerAddr(t, nsB)
	hostLoop := serveTCP(t, "", "127.0.0.1:0", "host loopback")
	hostAll := serveTCP(t, "", ":0", "host any") // [::]: every address, v4 and v6
	srvB := serveTCP(t, nsB, ipB.String()+":0", "container b")
	srvA := serveTCP(t, nsA, ipA.String()+":0", "container a")
	_, allPort, _ := net.SplitHostPort(hostAll)

	t.Run("loopback", func(t *testing.T) {
		if up, err := loUp(nsA); err != nil || !up {
			t.Errorf("lo up = %v (%v)", up, err)
		}
	})
	t.Run("outside reachable, NATed", func(t *testing.T) {
		got, err := dialFrom(nsA, outsideSrv, 10*time.Second)
		if err != nil {
			t.Fatalf("dial the outside host: %v", err)
		}
		if want := "outside " + outsideHostSide; got != want {
			t.Errorf("got %q, want %q (masqueraded to the host's address)", got, want)
		}
	})
	t.Run("host loopback is the container's own", func(t *testing.T) {
		_, err := dialFrom(nsA, hostLoop, blockedDial)
		if !errors.Is(err, syscall.ECONNREFUSED) {
			t.Errorf("dial %s: %v, want connection refused", hostLoop, err)
		}
	})
	t.Run("host addresses rejected", func(t *testing.T) {
		targets := hostIPv4Addrs(t) // the bridge's and the outside veth's among them
		for _, want := range []netip.Addr{gw, netip.MustParseAddr(outsideHostSide)} {
			if !slices.Contains(targets, want) {
				t.Fatalf("host addresses %v lack %v", targets, want)
			}
		}
		for _, a := range targets {
			addr := net.JoinHostPort(a.String(), allPort)
			if got, err := dialFrom("", addr, 10*time.Second); err != nil || got != "host any" {
				t.Fatalf("from the host, dial %s: %q, %v (the server must listen there)", addr, got, err)
			}
			if got, err := dialFrom(nsA, addr, blockedDial); !errors.Is(err, syscall.EHOSTUNREACH) {
				t.Errorf("from a container, dial %s: %q, %v, want rejected (host unreachable)", addr, got, err)
			}
		}
	})
	t.Run("bridge IPv6 link-local rejected", func(t *testing.T) {
		ll, brIndex := linkLocal(t, "", cfg.Bridge)
		_, index := linkLocal(t, nsA, egressIfName) // a source address to dial from
		// Zones by number: Go's zone cache maps names to the indexes of
		// whichever namespace it was filled in.
		local := net.JoinHostPort(fmt.Sprintf("%s%%%d", ll, brIndex), allPort)
		if got, err := dialFrom("", local, 10*time.Second); err != nil || got != "host any" {
			t.Fatalf("from the host, dial %s: %q, %v (the server must listen there)", local, got, err)
		}
		addr := net.JoinHostPort(fmt.Sprintf("%s%%%d", ll, index), allPort)
		if got, err := dialFrom(nsA, addr, blockedDial); !errors.Is(err, syscall.EACCES) {
			t.Errorf("dial %s: %q, %v, want rejected (permission denied)", addr, got, err)
		}
	})
	t.Run("other container unreachable", func(t *testing.T) {
		if got, err := dialFrom("", srvB, 10*time.Second); err != nil || got != "container b" {
			t.Fatalf("from the host, dial %s: %q, %v (the host reaches containers)", srvB, got, err)
		}
		if got, err := dialFrom(nsA, srvB, blockedDial); err == nil {
			t.Errorf("dial %s from container a: %q, want no connection", srvB, got)
		}
		// Without br_netfilter's view of bridged frames, the isolated
		// ports alone keep them apart.
		withSysctl(t, "/proc/sys/net/bridge/bridge-nf-call-iptables", "0", func() {
			if got, err := dialFrom(nsA, srvB, blockedDial); err == nil {
				t.Errorf("dial %s from container a, bridge-nf-call-iptables=0: %q, want no connection", srvB, got)
			}
		})
		// Routed through the gateway instead of switched (both ways, or
		// the switch stops the replies): in and out on the bridge,
		// dropped in FORWARD.
		for _, r := range []struct {
			ns string
			to netip.Addr
		}{{nsA, ipB}, {nsB, ipA}} {
			route := []string{"route", "add", r.to.String() + "/32", "via", gw.String()}
			if err := inNetns(r.ns, func() error { return run("ip", route...) }); err != nil {
				t.Fatal(err)
			}
		}
		if got, err := dialFrom(nsA, srvB, blockedDial); err == nil {
			t.Errorf("dial %s via the gateway from container a: %q, want no connection", srvB, got)
		}
	})
	t.Run("nothing unsolicited reaches a container", func(t *testing.T) {
		route := []string{"route", "add", e.subnet.String(), "via", outsideHostSide}
		if err := inNetns(outside, func() error { return run("ip", route...) }); err != nil {
			t.Fatal(err)
		}
		if got, err := dialFrom(outside, srvA, blockedDial); err == nil {
			t.Errorf("dial %s from the outside host: %q, want no connection", srvA, got)
		}
	})

	t.Run("ResolvConf", func(t *testing.T) {
		b, err := e.ResolvConf()
		if err != nil {
			t.Skipf("this host has no nameserver a container reaches: %v", err)
		}
		host := hostIPv4Addrs(t)
		for _, line := range strings.Split(string(b), "\n") {
			f := strings.Fields(line)
			if len(f) != 2 || f[0] != "nameserver" {
				continue
			}
			a, err := netip.ParseAddr(f[1])
			if err != nil || !a.Is4() || a.IsLoopback() || slices.Contains(host, a) {
				t.Errorf("nameserver %s is not one a container reaches", f[1])
			}
		}
	})
	t.Run("Detach", func(t *testing.T) {
		veth := containerPort(t, e, ids[0])
		if err := e.Detach(ctx, ids[0]); err != nil {
			t.Fatal(err)
		}
		if _, err := os.Lstat(nsA); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("netns file %s: %v, want gone", nsA, err)
		}
		if _, err := os.Lstat("/sys/class/net/" + veth); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("veth %s: %v, want gone", veth, err)
		}
		if _, err := os.Lstat(filepath.Join(cfg.StateDir, "ipam", egressNetwork, ipA.String())); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("address %s still reserved (%v)", ipA, err)
		}
		if m, _ := filepath.Glob(filepath.Join(cfg.StateDir, "cni", "results", "*"+ids[0]+"*")); len(m) > 0 {
			t.Errorf("CNI cache entries left: %v", m)
		}
		if err := e.Detach(ctx, ids[0]); err != nil {
			t.Errorf("second Detach: %v", err)
		}
	})
	t.Run("Close", func(t *testing.T) {
		if err := e.Close(); err != nil {
			t.Fatal(err)
		}
		if !chainExists(t, "iptables", "filter", "NIMBUS-IN-"+cfg.Bridge) {
			t.Fatal("Close removed the rules while a container is attached")
		}
		if _, err := e.Attach(ctx, "tenant.c.0003"); !errors.Is(err, errEgressClosed) {
			t.Errorf("Attach after Close: %v, want %v", err, errEgressClosed)
		}
		if err := e.Detach(ctx, ids[1]); err != nil {
			t.Fatal(err)
		}
		if err := e.Close(); err != nil {
			t.Fatal(err)
		}
		checkEgressGone(t, cfg)
	})
}

// TestEgressSweep: a gateway dies with containers attached (and one
// namespace file it never mounted); the next one, on the same StateDir,
// reinstalls the rules once and sweeps everything.
func TestEgressSweep(t *testing.T) {
	cfg := egressTestConfig(t)
	ctx := context.Background()
	dead := newTestEgress(t, cfg)
	for _, id := range []string{"tenant.a.dead1", "tenant.b.dead2"} {
		if _, err := dead.Attach(ctx, id); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(cfg.StateDir, "netns", "tenant.c.dead3"), nil, 0o444); err != nil {
		t.Fatal(err)
	}
	// dead is dropped without Detach or Close: what a SIGKILL leaves.

	e := newTestEgress(t, cfg)
	for _, r := range e.rules {
		if at, err := r.jumpPositions(ctx); err != nil || len(at) != 1 || at[0] != 1 {
			t.Errorf("%s %s: jump to %s at %v (%v) after a restart, want first and once", r.bin, r.hook, r.chain, at, err)
		}
	}
	if err := e.Sweep(ctx); err != nil {
		t.Fatal(err)
	}
	if ents, err := os.ReadDir(filepath.Join(cfg.StateDir, "netns")); err != nil || len(ents) != 0 {
		t.Errorf("netns dir after Sweep: %v (%v), want empty", ents, err)
	}
	if ports := bridgePorts(t, cfg.Bridge); len(ports) != 0 {
		t.Errorf("bridge ports after Sweep: %v", ports)
	}
	if m, _ := filepath.Glob(filepath.Join(cfg.StateDir, "cni", "results", "*")); len(m) > 0 {
		t.Errorf("CNI cache after Sweep: %v", m)
	}
	if _, err := os.Lstat(filepath.Join(cfg.StateDir, "ipam", egressNetwork)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("address reservations after Sweep: %v", err)
	}
	if err := e.Close(); err != nil {
		t.Fatal(err)
	}
	checkEgressGone(t, cfg)
}

func TestFilterResolvConf(t *testing.T) {
	t.Parallel()
	local := netip.MustParseAddr("192.168.1.5")
	usable := func(a netip.Addr) bool { return a.Is4() && !a.IsLoopback() && a != local }
	tests := []struct {
		name, in, want string
		n              int
	}{
		{"plain", "nameserver 9.9.9.9\nsearch example.org\n", "nameserver 9.9.9.9\nsearch example.org\n", 1},
		{"stub resolver only", "# systemd\nnameserver 127.0.0.53\noptions edns0 trust-ad\n", "options edns0 trust-ad\n", 0},
		{"host's own address", "nameserver 192.168.1.5\nnameserver 1.1.1.1\n", "nameserver 1.1.1.1\n", 1},
		{"IPv6 dropped", "nameserver 2001:db8::1\nnameserver fe80::1%eth0\nnameserver 8.8.8.8\n", "nameserver 8.8.8.8\n", 1},
		{"three at most", "nameserver 1.0.0.1\nnameserver 1.0.0.2\nnameserver 1.0.0.3\nnameserver 1.0.0.4\n",
			"nameserver 1.0.0.1\nnameserver 1.0.0.2\nnameserver 1.0.0.3\n", 3},
		{"junk", "nameserver\nnameserver x\nfoo bar\n;comment\n", "", 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			out, n := filterResolvConf([]byte(tt.in), usable)
			_, body, _ := strings.Cut(string(out), "\n") // the header comment
			if body != tt.want || n != tt.n {
				t.Errorf("got %q (%d), want %q (%d)", body, n, tt.want, tt.n)
			}
		})
	}
}

// egressTestConfig skips where the host cannot run the egress network,
// and picks a bridge and subnet of the test's own.
func egressTestConfig(t *testing.T) EgressConfig {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: namespaces, a bridge and iptables")
	}
	for _, p := range []string{"bridge", "host-local"} {
		if _, err := invoke.FindInPath(p, defaultPluginDirs); err != nil {
			t.Skipf("no CNI plugin %s in %v", p, defaultPluginDirs)
		}
	}
	for _, b := range []string{"iptables", "ip"} {
		if _, err := exec.LookPath(b); err != nil {
			t.Skipf("no %s", b)
		}
	}
	restoreIPForward(t)
	k := rand.IntN(0xffff)
	return EgressConfig{
		StateDir: t.TempDir(),
		Bridge:   fmt.Sprintf("nbt%04x", k),
		Subnet:   fmt.Sprintf("10.231.%d.0/24", 1+k%250),
	}
}

// newTestEgress makes an Egress on cfg; at the end of the test a fresh
// one on the same StateDir sweeps and closes whatever a failed test left,
// then checks that nothing is left on the host.
func newTestEgress(t *testing.T, cfg EgressConfig) *Egress {
	t.Helper()
	e, err := NewEgress(cfg, zaptest.NewLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		last, err := NewEgress(cfg, zaptest.NewLogger(t))
		if err != nil {
			t.Errorf("cleanup: %v", err)
			return
		}
		if err := last.Sweep(context.Background()); err != nil {
			t.Errorf("cleanup sweep: %v", err)
		}
		if err := last.Close(); err != nil {
			t.Errorf("cleanup close: %v", err)
		}
		checkEgressGone(t, cfg)
	})
	return e
}

// checkEgressGone fails the test if anything of cfg's is left on the
// host: chains, jumps, the bridge, mounts under StateDir.
func checkEgressGone(t *testing.T, cfg EgressConfig) {
	t.Helper()
	for _, c := range []struct{ bin, table, chain, hook string }{
		{"iptables", "filter", "NIMBUS-IN-", "INPUT"},
		{"iptables", "filter", "NIMBUS-FWD-", "FORWARD"},
		{"iptables", "nat", "NIMBUS-NAT-", "POSTROUTING"},
		{"ip6tables", "filter", "NIMBUS-IN-", "INPUT"},
		{"ip6tables", "filter", "NIMBUS-FWD-", "FORWARD"},
	} {
		name := c.chain + cfg.Bridge
		if chainExists(t, c.bin, c.table, name) {
			t.Errorf("%s -t %s: chain %s left", c.bin, c.table, name)
		}
		out, _ := exec.Command(c.bin, "-w", "-t", c.table, "-S", c.hook).CombinedOutput()
		if strings.Contains(string(out), name) {
			t.Errorf("%s -t %s: jump to %s left in %s", c.bin, c.table, name, c.hook)
		}
	}
	if _, err := os.Lstat("/sys/class/net/" + cfg.Bridge); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("bridge %s left (%v)", cfg.Bridge, err)
	}
	mi, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(mi), cfg.StateDir) {
		t.Errorf("mounts under %s left", cfg.StateDir)
	}
}

func chainExists(t *testing.T, bin, table, chain string) bool {
	t.Helper()
	return exec.Command(bin, "-w", "-t", table, "-S", chain).Run() == nil
}

// restoreIPForward puts net.ipv4.ip_forward back at the end of the test.
func restoreIPForward(t *testing.T) {
	t.Helper()
	const p = "/proc/sys/net/ipv4/ip_forward"
	was, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := os.WriteFile(p, was, 0o644); err != nil {
			t.Errorf("restoring ip_forward: %v", err)
		}
	})
}

// withSysctl runs fn with the host-wide sysctl at path set to v, then
// puts it back; it skips when the host has no such setting.
func withSysctl(t *testing.T, path, v string, fn func()) {
	t.Helper()
	was, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		t.Logf("no %s here: skipped", path)
		return
	}
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(v), 0o644); err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := os.WriteFile(path, was, 0o644); err != nil {
			t.Errorf("restoring %s: %v", path, err)
		}
	}()
	fn()
}

// newOutsideHost makes the test's outside host: a namespace with a veth
// to the host netns, outsideAddr inside, outsideHostSide on the host.
// Everything goes at the end of the test, and is checked gone.
func newOutsideHost(t *testing.T) string {
	t.Helper()
	ns := filepath.Join(t.TempDir(), "outside")
	if err := newNetns(ns); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := removeNetns(ns); err != nil {
			t.Error(err)
		}
		if _, err := os.Lstat(ns); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("outside host's netns %s left (%v)", ns, err)
		}
	})
	k := rand.IntN(0xffff)
	host, peer := fmt.Sprintf("nto%04x", k), fmt.Sprintf("nti%04x", k)
	if err := run("ip", "link", "add", host, "type", "veth", "peer", "name", peer); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		// Deleting one end deletes both, now (a namespace's own end
		// goes later, in the kernel's cleanup of the namespace).
		if err := run("ip", "link", "del", host); err != nil {
			t.Error(err)
		}
		if _, err := os.Lstat("/sys/class/net/" + host); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("veth %s left (%v)", host, err)
		}
	})
	for _, args := range [][]string{
		{"link", "set", peer, "netns", ns},
		{"addr", "add", outsideHostSide + outsidePrefix, "dev", host},
		{"link", "set", host, "up"},
	} {
		if err := run("ip", args...); err != nil {
			t.Fatal(err)
		}
	}
	err := inNetns(ns, func() error {
		if err := run("ip", "addr", "add", outsideAddr+outsidePrefix, "dev", peer); err != nil {
			return err
		}
		return run("ip", "link", "set", peer, "up")
	})
	if err != nil {
		t.Fatal(err)
	}
	return ns
}

// serveTCP listens on addr in the namespace ns ("" is the host's) and
// answers each connection with banner and the peer address it sees, then
// closes it. It returns the address listened on; the server stops at the
// end of the test.
func serveTCP(t *testing.T, ns, addr, banner string) string {
	t.Helper()
	var ln net.Listener
	err := inNetns(ns, func() (err error) {
		ln, err = net.Listen("tcp", addr)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			peer, _, _ := net.SplitHostPort(c.RemoteAddr().String())
			if a, err := netip.ParseAddr(peer); err == nil {
				peer = a.Unmap().String()
			}
			_, _ = fmt.Fprintf(c, "%s %s\n", banner, peer)
			_ = c.Close()
		}
	}()
	t.Cleanup(func() {
		_ = ln.Close()
		<-done
	})
	return ln.Addr().String()
}

// dialFrom connects to addr from the namespace ns ("" is the host's) and
// returns the server's banner (without the peer address, except for the
// outside host, whose check is that address).
func dialFrom(ns, addr string, timeout time.Duration) (string, error) {
	var c net.Conn
	err := inNetns(ns, func() (err error) {
		d := net.Dialer{Timeout: timeout}
		c, err = d.Dial("tcp", addr)
		return err
	})
	if err != nil {
		return "", err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(timeout))
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return "", err
	}
	line = strings.TrimSpace(line)
	if strings.HasPrefix(line, "outside ") {
		return line, nil
	}
	return line[:strings.LastIndexByte(line, ' ')], nil
}

// inNetns runs fn on a thread in the namespace at path ("" runs it
// here). The thread goes back to the host's namespace after fn; if it
// cannot, it stays locked and the runtime ends it with the goroutine.
// Sockets fn makes stay in the namespace.
func inNetns(path string, fn func() error) error {
	if path == "" {
		return fn()
	}
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		home, err := os.Open("/proc/thread-self/ns/net")
		if err != nil {
			errc <- err
			return
		}
		defer home.Close()
		target, err := os.Open(path)
		if err != nil {
			errc <- err
			return
		}
		defer target.Close()
		if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("setns %s: %w", path, err)
			return
		}
		ferr := fn()
		if err := unix.Setns(int(home.Fd()), unix.CLONE_NEWNET); err != nil {
			errc <- errors.Join(ferr, fmt.Errorf("setns back: %w", err))
			return
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}

// run runs a command (in the calling thread's network namespace: a
// child is forked from the thread that asks).
func run(name string, args ...string) error {
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

func loUp(ns string) (up bool, err error) {
	err = inNetns(ns, func() error {
		lo, err := net.InterfaceByName("lo")
		if err == nil {
			up = lo.Flags&net.FlagUp != 0
		}
		return err
	})
	return up, err
}

func bridgePorts(t *testing.T, bridge string) []string {
	t.Helper()
	ents, err := os.ReadDir("/sys/class/net/" + bridge + "/brif")
	if err != nil {
		t.Fatal(err)
	}
	var ports []string
	for _, e := range ents {
		ports = append(ports, e.Name())
	}
	return ports
}

// containerPort is the host end of id's veth, as libcni's cache records
// the ADD's result.
func containerPort(t *testing.T, e *Egress, id string) string {
	t.Helper()
	res, err := e.cni.GetNetworkListCachedResult(e.list, e.runtimeConf(id, ""))
	if err != nil || res == nil {
		t.Fatalf("cached result of %s: %v, %v", id, res, err)
	}
	r, err := types100.GetResult(res)
	if err != nil {
		t.Fatal(err)
	}
	for _, itf := range r.Interfaces {
		if itf.Sandbox == "" && itf.Name != e.cfg.Bridge {
			return itf.Name
		}
	}
	t.Fatalf("no host veth in %s's result %v", id, r)
	return ""
}

func containerAddr(t *testing.T, ns string) netip.Addr {
	t.Helper()
	var a netip.Addr
	err := inNetns(ns, func() error {
		itf, err := net.InterfaceByName(egressIfName)
		if err != nil {
			return err
		}
		a, err = firstAddr(itf, netip.Addr.Is4)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func bridgeAddr(t *testing.T, bridge string) netip.Addr {
	t.Helper()
	itf, err := net.InterfaceByName(bridge)
	if err != nil {
		t.Fatal(err)
	}
	a, err := firstAddr(itf, netip.Addr.Is4)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// linkLocal waits (a bounded while) for ifname's IPv6 link-local address
// in the namespace ns ("" is the host's) to be usable: the kernel adds it
// once the link is up, tentative until duplicate address detection ends.
func linkLocal(t *testing.T, ns, ifname string) (_ netip.Addr, ifindex int) {
	t.Helper()
	if _, err := os.Stat("/proc/net/if_inet6"); err != nil {
		t.Skip("no IPv6 on this host")
	}
	const tentative = 0x40 // IFA_F_TENTATIVE
	for range 100 {
		var found netip.Addr
		var index int
		err := inNetns(ns, func() error {
			b, err := os.ReadFile("/proc/thread-self/net/if_inet6")
			if err != nil {
				return err
			}
			for _, line := range strings.Split(string(b), "\n") {
				// address ifindex prefixlen scope flags name
				f := strings.Fields(line)
				var flags int
				if len(f) != 6 || f[5] != ifname || f[3] != "20" {
					continue
				}
				if _, err := fmt.Sscanf(f[4], "%x", &flags); err != nil || flags&tentative != 0 {
					continue
				}
				raw, err := hex.DecodeString(f[0])
				if a, ok := netip.AddrFromSlice(raw); err == nil && ok {
					found = a
					_, _ = fmt.Sscanf(f[1], "%x", &index)
				}
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		if found.IsValid() {
			return found, index
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("%s has no usable IPv6 link-local address", ifname)
	return netip.Addr{}, 0
}

func firstAddr(itf *net.Interface, match func(netip.Addr) bool) (netip.Addr, error) {
	addrs, err := itf.Addrs()
	if err != nil {
		return netip.Addr{}, err
	}
	for _, a := range addrs {
		if p, err := netip.ParsePrefix(a.String()); err == nil && match(p.Addr()) {
			return p.Addr(), nil
		}
	}
	return netip.Addr{}, fmt.Errorf("%s: no such address in %v", itf.Name, addrs)
}

func hostIPv4Addrs(t *testing.T) []netip.Addr {
	t.Helper()
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		t.Fatal(err)
	}
	var out []netip.Addr
	for _, a := range addrs {
		if p, err := netip.ParsePrefix(a.String()); err == nil && p.Addr().Is4() && !p.Addr().IsLoopback() {
			out = append(out, p.Addr())
		}
	}
	return out
}
