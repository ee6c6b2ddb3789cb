package targets

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"strings"
)

// ruleChain is one chain of ours in one table of iptables or ip6tables:
// install makes (or empties) and fills it and puts one jump to it first
// in a built-in chain; remove deletes both. See Egress for what the rules
// are for.
type ruleChain struct {
	bin   string // "iptables" or "ip6tables"
	table string
	chain string
	hook  string   // the built-in chain that jumps to it
	jump  []string // the jump's matches, before "-j chain"
	rules [][]string
}

// egressRules are the chains that confine the containers on bridge.
func egressRules(bridge string, subnet netip.Prefix) ([]ruleChain, error) {
	if _, err := exec.LookPath("iptables"); err != nil {
		return nil, errors.New("iptables not found (Debian: apt install iptables)")
	}
	in, fwd, nat := "NIMBUS-IN-"+bridge, "NIMBUS-FWD-"+bridge, "NIMBUS-NAT-"+bridge
	s := subnet.String()
	replies := []string{"-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED", "-j", "ACCEPT"}
	chains := []ruleChain{
		// Whatever a container sends to any address of the host (so to
		// any port of the gateway): only replies to the host's own
		// connections pass.
		{bin: "iptables", table: "filter", chain: in, hook: "INPUT", jump: []string{"-i", bridge}, rules: [][]string{
			replies,
			{"-j", "REJECT", "--reject-with", "icmp-admin-prohibited"},
		}},
		{bin: "iptables", table: "filter", chain: fwd, hook: "FORWARD", rules: [][]string{
			// Container to container, routed through the gateway
			// address, or bridged where br_netfilter shows bridged
			// frames to iptables (isolated ports stop them before).
			{"-i", bridge, "-o", bridge, "-j", "DROP"},
			{"-i", bridge, "!", "-s", s, "-j", "DROP"},
			{"-i", bridge, "-j", "ACCEPT"},
			append([]string{"-o", bridge}, replies...),
			{"-o", bridge, "-j", "DROP"},
		}},
		{bin: "iptables", table: "nat", chain: nat, hook: "POSTROUTING", rules: [][]string{
			{"-s", s, "!", "-o", bridge, "!", "-d", "224.0.0.0/4", "-j", "MASQUERADE"},
		}},
	}
	if _, err := os.Stat("/proc/net/if_inet6"); err == nil {
		// The containers get no IPv6 route, but the bridge has an IPv6
		// link-local address, and a gateway listening on [::] would
		// answer there.
		if _, err := exec.LookPath("ip6tables"); err != nil {
			return nil, errors.New("the host has IPv6 but no ip6tables: the bridge's IPv6 address would be open to containers")
		}
		chains = append(chains,
			ruleChain{bin: "ip6tables", table: "filter", chain: in, hook: "INPUT", jump: []string{"-i", bridge}, rules: [][]string{
				replies,
				// Neighbour discovery, IPv6's ARP (which iptables
				// never sees): without it a container cannot even
				// be told no, and waits for a timeout.
				{"-p", "ipv6-icmp", "--icmpv6-type", "neighbour-solicitation", "-j", "ACCEPT"},
				{"-p", "ipv6-icmp", "--icmpv6-type", "neighbour-advertisement", "-j", "ACCEPT"},
				{"-j", "REJECT", "--reject-with", "icmp6-adm-prohibited"},
			}},
			ruleChain{bin: "ip6tables", table: "filter", chain: fwd, hook: "FORWARD", rules: [][]string{
				{"-i", bridge, "-j", "DROP"},
				{"-o", bridge, "-j", "DROP"},
			}},
		)
	}
	return chains, nil
}

// install makes the chain hold exactly c.rules and the jump to it be the
// first rule of c.hook, once: what a previous gateway left is replaced,
// and a jump some other tool pushed down is moved back up.
func (c ruleChain) install(ctx context.Context) error {
	if !c.exists(ctx) {
		if err := c.run(ctx, "-N", c.chain); err != nil {
			return err
		}
	}
	if err := c.run(ctx, "-F", c.chain); err != nil {
		return err
	}
	for _, r := range c.rules {
		if err := c.run(ctx, append([]string{"-A", c.chain}, r...)...); err != nil {
			return err
		}
	}
	at, err := c.jumpPositions(ctx)
	if err != nil {
		return err
	}
	if len(at) == 1 && at[0] == 1 {
		return nil
	}
	if err := c.run(ctx, append([]string{"-I", c.hook, "1"}, c.jumpSpec()...)...); err != nil {
		return err
	}
	for i := len(at) - 1; i >= 0; i-- { // from the bottom, so numbers stay right
		if err := c.run(ctx, "-D", c.hook, fmt.Sprint(at[i]+1)); err != nil {
			return err
		}
	}
	return nil
}

// remove deletes every jump to the chain, then the chain; a chain that
// is not there is no error.
func (c ruleChain) remove(ctx context.Context) error {
	for range 100 { // a bound, not an expected count
		if c.run(ctx, append([]string{"-D", c.hook}, c.jumpSpec()...)...) != nil {
			break
		}
	}
	if !c.exists(ctx) {
		return nil
	}
	if err := c.run(ctx, "-F", c.chain); err != nil {
		return err
	}
	return c.run(ctx, "-X", c.chain)
}

// jumpPositions are the rule numbers of c.hook's jumps to the chain.
func (c ruleChain) jumpPositions(ctx context.Context) ([]int, error) {
	out, err := c.output(ctx, "-S", c.hook)
	if err != nil {
		return nil, err
	}
	want := strings.Join(append([]string{"-A", c.hook}, c.jumpSpec()...), " ")
	var at []int
	n := 0
	for _, line := range strings.Split(out, "\n") {
		if !strings.HasPrefix(line, "-A ") {
			continue
		}
		n++
		if strings.TrimSpace(line) == want {
			at = append(at, n)
		}
	}
	return at, nil
}

func (c ruleChain) jumpSpec() []string {
	return append(append([]string(nil), c.jump...), "-j", c.chain)
}

func (c ruleChain) exists(ctx context.Context) bool {
	_, err := c.output(ctx, "-S", c.chain)
	return err == nil
}

func (c ruleChain) run(ctx context.Context, args ...string) error {
	_, err := c.output(ctx, args...)
	return err
}

// output runs c.bin on c.table, waiting for the xtables lock (the CNI
// plugins and other tools take it too).
func (c ruleChain) output(ctx context.Context, args ...string) (string, error) {
	full := append([]string{"-w", "-t", c.table}, args...)
	out, err := exec.CommandContext(ctx, c.bin, full...).CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("%s %s: %w: %s", c.bin, strings.Join(full, " "), err, strings.TrimSpace(string(out)))
	}
	return string(out), nil
}
