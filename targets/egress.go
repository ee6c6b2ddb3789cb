package targets

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/invoke"
	"github.com/containernetworking/cni/pkg/types"
	types100 "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/utils"
	"github.com/containernetworking/cni/pkg/version"
	"github.com/prometheus/procfs"
	"go.uber.org/zap"
)

// Egress is the egress network of confined sandboxes and browsers (SPEC
// §9.3, §9.1b): each container gets a network namespace of its own with a
// veth on one host bridge, an address from host-local IPAM, a default
// route via the bridge and NAT out. Made by Debian's standard CNI plugins
// (bridge, host-local) driven through libcni; the walls are the kernel's:
//
//   - The host's loopback: the container has its own network namespace,
//     so 127.0.0.1 is its own loopback. Nothing to filter.
//   - The host's own addresses (the bridge's gateway address, every other
//     interface's, so every port the gateway or anything else binds on the
//     host): iptables INPUT, for whatever arrives on the bridge, accepts
//     only replies (conntrack ESTABLISHED,RELATED, so the gateway can still
//     connect into a container) and rejects the rest with
//     admin-prohibited, so a page fails at once (EHOSTUNREACH) instead of
//     hanging. ip6tables does the same for the bridge's IPv6 link-local
//     address (EACCES), letting only neighbour discovery through.
//   - The other containers: every bridge port is isolated (the kernel's
//     bridge port flag IFLA_BRPORT_ISOLATED, `bridge link set … isolated
//     on`: an isolated port forwards to no other isolated port, not even
//     ARP), so container↔container frames never leave the bridge, with or
//     without br_netfilter and whatever net.bridge.bridge-nf-call-iptables
//     says (we neither need nor change that host-wide sysctl). Packets a
//     container routes to another one through the gateway address (in and
//     out on the bridge) are dropped in FORWARD; the same rule also drops
//     bridged frames where br_netfilter hands them to iptables. A port is
//     isolated right after the plugin adds it, before Attach returns and
//     so before anything runs in the container.
//   - Other hosts: FORWARD accepts what leaves the bridge for elsewhere
//     (from the subnet only, no spoofed sources), and replies back; nothing
//     unsolicited reaches a container. POSTROUTING masquerades the subnet.
//
// Why not a ptp network (a veth per container, no bridge): equally sound,
// but then containers talk to each other through the host's routing, and
// the isolation is a FORWARD rule alone; with a bridge and isolated ports
// it is the switch itself. Why not the firewall plugin: it puts its
// CNI-FORWARD chain first in FORWARD with a per-container `-s <ip> -j
// ACCEPT`, which would accept container→container packets before our drop.
// Why not the bridge plugin's ipMasq: the Debian build (1.1.1) removes its
// per-container NAT chain on DEL only if the container's namespace and
// interface still exist, so a gateway that died leaks chains; our single
// MASQUERADE rule cannot leak. Portmap: no container takes inbound ports.
//
// The rules live in chains of their own, named after the bridge
// (NIMBUS-IN-<bridge>, NIMBUS-FWD-<bridge> in filter, NIMBUS-NAT-<bridge> in
// nat), each reached by one jump first in INPUT, FORWARD or POSTROUTING;
// NewEgress rebuilds them (idempotent across restarts), Close removes them.
// They are plain iptables/ip6tables commands, so they land in whichever
// backend (nft or legacy) the host's iptables uses, the same one the CNI
// plugins use. A drop in our chains holds whatever other tables say; the
// egress ACCEPT does not override a DROP in another base chain (firewalld's
// nftables tables, say), which then decides.
//
// Host-wide state touched: the bridge plugin turns on
// net.ipv4.ip_forward (routing needs it), which is left on; with a
// FORWARD policy of ACCEPT the host then routes for its LAN neighbours
// too, so hosts that mind set that policy to DROP (our chain accepts what
// the containers need either way).
//
// DNS: see ResolvConf. All methods may be called concurrently, except
// Attach and Detach of the same id.
type Egress struct {
	// Static after construction.
	cfg      EgressConfig
	log      *zap.Logger
	subnet   netip.Prefix
	cni      *libcni.CNIConfig
	list     *libcni.NetworkConfigList
	netnsDir string // StateDir/netns: a bind-mounted nsfs file per container
	ipamDir  string // StateDir/ipam: host-local's reservations
	rules    []ruleChain

	// Guarded by mu.
	mu     sync.Mutex
	live   map[string]struct{} // ids attached (or attaching) by this Egress
	closed bool
}

// EgressConfig configures an Egress. One Egress per bridge per host: two
// gateways sharing a bridge would hand out the same addresses.
type EgressConfig struct {
	// PluginDirs are searched for the CNI plugins (bridge, host-local);
	// nil means /usr/lib/cni (Debian's containernetworking-plugins) and
	// /opt/cni/bin (the upstream tarball's).
	PluginDirs []string
	// StateDir holds what lives only as long as the containers: the
	// network namespace files (netns/<id>), libcni's cache (cni/) and
	// host-local's reservations (ipam/). Required; the gateway passes
	// <runtime state dir>/net. Sweep treats everything in it as a
	// leftover, so it must be this Egress's alone.
	StateDir string
	// Bridge is the host bridge; "" means "nimbus0". At most 15
	// characters (a Linux interface name).
	Bridge string
	// Subnet is the containers' IPv4 subnet, the bridge holding its first
	// address; "" means "10.89.0.0/16". It must not overlap a network the
	// host reaches.
	Subnet string
	// MTU of the bridge and the containers' interfaces; 0 means the MTU of
	// the interface of the host's IPv4 default route (1500 without one),
	// so a container does not send what the uplink must fragment.
	MTU int
}

// Defaults of EgressConfig.
const (
	defaultEgressBridge = "nimbus0"
	defaultEgressSubnet = "10.89.0.0/16"
	// egressNetwork is the CNI network name, part of libcni's cache file
	// names and host-local's directory.
	egressNetwork = "nimbus-egress"
	// egressIfName is the container side of the veth.
	egressIfName = "eth0"
)

var defaultPluginDirs = []string{"/usr/lib/cni", "/opt/cni/bin"}

// errEgressClosed is returned by Attach after Close.
var errEgressClosed = errors.New("egress network closed")

// NewEgress checks that the plugins and iptables exist, prepares StateDir
// and installs the host rules (replacing those a previous gateway on the
// same bridge left). It does not touch leftover containers: call Sweep
// before the first Attach. The bridge itself is made by the first Attach.
func NewEgress(cfg EgressConfig, log *zap.Logger) (_ *Egress, err error) {
	defer func() {
		if err != nil {
			err = fmt.Errorf("egress network: %w", err)
		}
	}()
	if log == nil {
		log = zap.NewNop()
	}
	if cfg.PluginDirs == nil {
		cfg.PluginDirs = defaultPluginDirs
	}
	if cfg.Bridge == "" {
		cfg.Bridge = defaultEgressBridge
	}
	if cfg.Subnet == "" {
		cfg.Subnet = defaultEgressSubnet
	}
	if cfg.StateDir == "" {
		return nil, errors.New("no state directory")
	}
	if len(cfg.Bridge) > 15 || strings.ContainsAny(cfg.Bridge, "/ \t\n:") {
		return nil, fmt.Errorf("bad bridge name %q", cfg.Bridge)
	}
	subnet, err := netip.ParsePrefix(cfg.Subnet)
	if err != nil || !subnet.Addr().Is4() || subnet.Bits() > 30 || subnet != subnet.Masked() {
		return nil, fmt.Errorf("bad subnet %q: want an IPv4 network of at least 4 addresses, like 10.89.0.0/16", cfg.Subnet)
	}
	if cfg.MTU == 0 {
		cfg.MTU = defaultRouteMTU()
	}
	for _, p := range []string{"bridge", "host-local"} {
		if _, err := invoke.FindInPath(p, cfg.PluginDirs); err != nil {
			return nil, fmt.Errorf("CNI plugin %s not found in %v (Debian: apt install containernetworking-plugins)", p, cfg.PluginDirs)
		}
	}
	e := &Egress{
		cfg:      cfg,
		log:      log,
		subnet:   subnet,
		netnsDir: filepath.Join(cfg.StateDir, "netns"),
		ipamDir:  filepath.Join(cfg.StateDir, "ipam"),
		live:     map[string]struct{}{},
	}
	// An exec of our own: libcni makes its default lazily, unguarded,
	// which races when two Attach run at once (the race detector saw it).
	exec := &invoke.DefaultExec{RawExec: &invoke.RawExec{Stderr: os.Stderr}, PluginDecoder: version.PluginDecoder{}}
	e.cni = libcni.NewCNIConfigWithCacheDir(cfg.PluginDirs, filepath.Join(cfg.StateDir, "cni"), exec)
	if e.list, err = e.networkList(); err != nil {
		return nil, err
	}
	if e.rules, err = egressRules(cfg.Bridge, subnet); err != nil {
		return nil, err
	}
	if err := ensureSharedDir(e.netnsDir); err != nil {
		return nil, fmt.Errorf("%s: %w", e.netnsDir, err)
	}
	ctx := context.Background()
	for _, r := range e.rules {
		if err := r.install(ctx); err != nil {
			return nil, err
		}
	}
	log.Info("egress network ready", zap.String("bridge", cfg.Bridge), zap.Stringer("subnet", subnet),
		zap.Int("mtu", cfg.MTU), zap.String("stateDir", cfg.StateDir))
	return e, nil
}

// Attach makes id's network namespace, a bind-mounted nsfs file at the
// returned path (StateDir/netns/<id>) with loopback up, and connects it
// to the bridge (CNI ADD), its bridge port isolated. The path goes into
// the OCI spec as {"type":"network","path":…}. id must be a CNI container
// id ([A-Za-z0-9][A-Za-z0-9_.-]*) not attached already. On failure nothing
// is left. Attach may be called concurrently, for different ids.
func (e *Egress) Attach(ctx context.Context, id string) (netnsPath string, err error) {
	defer func() {
		if err != nil {
			err = fmt.Errorf("egress network for %s: %w", id, err)
		}
	}()
	if verr := utils.ValidateContainerID(id); verr != nil {
		return "", verr
	}
	if err := e.claim(id); err != nil {
		return "", err
	}
	path := filepath.Join(e.netnsDir, id)
	defer func() {
		if err != nil {
			// CNI asks a runtime to DEL after a failed ADD: the
			// plugins may have done half of it.
			if derr := e.detach(context.WithoutCancel(ctx), id); derr != nil {
				e.log.Warn("cannot undo a failed egress attach", zap.String("id", id), zap.Error(derr))
			}
			e.release(id)
		}
	}()
	if err := newNetns(path); err != nil {
		return "", fmt.Errorf("network namespace: %w", err)
	}
	res, err := e.cni.AddNetworkList(ctx, e.list, e.runtimeConf(id, path))
	if err != nil {
		return "", err
	}
	if err := e.isolate(res, path); err != nil {
		return "", err
	}
	e.log.Debug("egress network attached", zap.String("id", id), zap.String("netns", path))
	return path, nil
}

// Detach disconnects id (CNI DEL) and removes its namespace. It is
// idempotent: an id never attached, or detached already, is no error.
// When the plugins fail, the namespace is removed anyway (so the veth goes
// with it) and the error returned; libcni's cache entry stays, so Sweep
// retries the DEL that releases the address.
func (e *Egress) Detach(ctx context.Context, id string) error {
	if verr := utils.ValidateContainerID(id); verr != nil {
		return fmt.Errorf("egress network for %s: %w", id, verr)
	}
	defer e.release(id)
	if err := e.detach(ctx, id); err != nil {
		return fmt.Errorf("egress network for %s: %w", id, err)
	}
	return nil
}

// Sweep detaches everything a previous gateway left in StateDir (one that
// died left namespaces, cache entries and address reservations), sparing
// the ids this Egress attached. Call it at start, before the first Attach.
func (e *Egress) Sweep(ctx context.Context) error {
	ids := map[string]struct{}{}
	atts, err := e.cni.GetCachedAttachments("")
	if err != nil {
		return fmt.Errorf("egress network sweep: %w", err)
	}
	for _, a := range atts {
		if a.Network == e.list.Name {
			ids[a.ContainerID] = struct{}{}
		}
	}
	entries, err := os.ReadDir(e.netnsDir)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("egress network sweep: %w", err)
	}
	for _, ent := range entries {
		ids[ent.Name()] = struct{}{}
	}
	var errs []error
	swept := 0
	for id := range ids {
		if e.isLive(id) {
			continue
		}
		if utils.ValidateContainerID(id) != nil { // no id of ours: no CNI state either
			if err := removeNetns(filepath.Join(e.netnsDir, id)); err != nil {
				errs = append(errs, err)
			}
			continue
		}
		if err := e.detach(ctx, id); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", id, err))
			continue
		}
		swept++
	}
	// host-local reservations of an ADD that died before libcni's cache
	// entry was written name no namespace we could find: with nothing
	// attached, none of them is in use.
	if len(errs) == 0 && e.liveCount() == 0 {
		if err := os.RemoveAll(filepath.Join(e.ipamDir, e.list.Name)); err != nil {
			errs = append(errs, err)
		}
	}
	if swept > 0 {
		e.log.Info("egress networks of a previous gateway removed", zap.Int("count", swept))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("egress network sweep: %w", err)
	}
	return nil
}

// Close stops Attach and, when nothing is attached any more (no namespace
// left in StateDir), removes the host rules, the bridge and StateDir's
// mounts. With attachments left (containers still running, or a Detach
// that failed), it leaves all of that in place, since the rules are what
// isolates those containers, and says so in the log; the next gateway's
// Sweep and Close remove them. Close may be called more than once.
func (e *Egress) Close() error {
	e.mu.Lock()
	e.closed = true
	n := len(e.live)
	e.mu.Unlock()
	entries, _ := os.ReadDir(e.netnsDir)
	if n > 0 || len(entries) > 0 {
		e.log.Warn("egress network left in place: containers are still attached",
			zap.Int("attached", max(n, len(entries))), zap.String("bridge", e.cfg.Bridge))
		return nil
	}
	ctx := context.Background()
	var errs []error
	for _, r := range e.rules {
		if err := r.remove(ctx); err != nil {
			errs = append(errs, err)
		}
	}
	if err := deleteLinkByName(e.cfg.Bridge); err != nil {
		errs = append(errs, fmt.Errorf("bridge %s: %w", e.cfg.Bridge, err))
	}
	if err := unmountDir(e.netnsDir); err != nil {
		errs = append(errs, fmt.Errorf("%s: %w", e.netnsDir, err))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("egress network close: %w", err)
	}
	return nil
}

// detach is Detach's work: DEL with the configuration the ADD used (from
// libcni's cache, as it may have been another gateway's), then the
// namespace.
func (e *Egress) detach(ctx context.Context, id string) error {
	path := filepath.Join(e.netnsDir, id)
	nsArg := path
	if !isNetns(path) {
		// Gone, or a file a crash left before its bind mount: DEL
		// without a namespace still releases the address.
		nsArg = ""
	}
	rt := e.runtimeConf(id, nsArg)
	list := e.list
	if cached, _, err := e.cni.GetNetworkListCachedConfig(e.list, rt); err == nil && cached != nil {
		if l, err := libcni.NetworkConfFromBytes(cached); err == nil {
			list = l
		}
	}
	delErr := e.cni.DelNetworkList(ctx, list, rt)
	if err := removeNetns(path); err != nil {
		return errors.Join(delErr, err)
	}
	return delErr
}

// isolate sets the isolated flag on the host side of the container's
// veth, the port the bridge plugin just made.
func (e *Egress) isolate(res types.Result, netnsPath string) error {
	r, err := types100.GetResult(res)
	if err != nil {
		return err
	}
	for _, itf := range r.Interfaces {
		if itf.Sandbox != "" || itf.Name == e.cfg.Bridge {
			continue
		}
		link, err := net.InterfaceByName(itf.Name)
		if err != nil {
			return fmt.Errorf("host veth %s: %w", itf.Name, err)
		}
		if err := setPortIsolated(link.Index); err != nil {
			return fmt.Errorf("isolating bridge port %s: %w", itf.Name, err)
		}
		return nil
	}
	return fmt.Errorf("CNI result names no host veth for %s", netnsPath)
}

func (e *Egress) runtimeConf(id, netnsPath string) *libcni.RuntimeConf {
	return &libcni.RuntimeConf{ContainerID: id, NetNS: netnsPath, IfName: egressIfName}
}

// networkList is the CNI configuration: the bridge plugin with host-local
// IPAM, the bridge address as every container's default route.
// portIsolation is what newer bridge plugins (≥ 1.4) do themselves;
// Debian's ignores it, and isolate sets the flag either way.
func (e *Egress) networkList() (*libcni.NetworkConfigList, error) {
	conf := map[string]any{
		"cniVersion": "1.0.0",
		"name":       egressNetwork,
		"plugins": []any{map[string]any{
			"type":             "bridge",
			"bridge":           e.cfg.Bridge,
			"isDefaultGateway": true,
			"ipMasq":           false, // our own MASQUERADE rule, see Egress
			"hairpinMode":      false,
			"portIsolation":    true,
			"mtu":              e.cfg.MTU,
			"ipam": map[string]any{
				"type":    "host-local",
				"ranges":  [][]map[string]string{{{"subnet": e.subnet.String()}}},
				"dataDir": e.ipamDir,
			},
		}},
	}
	b, err := json.Marshal(conf)
	if err != nil {
		return nil, err
	}
	return libcni.NetworkConfFromBytes(b)
}

func (e *Egress) claim(id string) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.closed {
		return errEgressClosed
	}
	if _, ok := e.live[id]; ok {
		return fmt.Errorf("already attached")
	}
	e.live[id] = struct{}{}
	return nil
}

func (e *Egress) release(id string) {
	e.mu.Lock()
	delete(e.live, id)
	e.mu.Unlock()
}

func (e *Egress) isLive(id string) bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	_, ok := e.live[id]
	return ok
}

func (e *Egress) liveCount() int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return len(e.live)
}

// defaultRouteMTU is the MTU of the interface of the host's IPv4 default
// route, else 1500.
func defaultRouteMTU() int {
	// thread-self, not /proc/net (self, the main thread's): the main
	// thread may be in a container's namespace for a moment.
	fs, err := procfs.NewFS("/proc/thread-self")
	if err != nil {
		return 1500
	}
	routes, err := fs.NetRoute()
	if err != nil {
		return 1500
	}
	for _, r := range routes {
		if r.Destination == 0 && r.Mask == 0 {
			if itf, err := net.InterfaceByName(r.Iface); err == nil && itf.MTU >= 576 {
				return itf.MTU
			}
		}
	}
	return 1500
}
