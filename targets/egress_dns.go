package targets

import (
	"bytes"
	"errors"
	"net"
	"net/netip"
	"os"
	"strings"
)

// resolvConfSources are read in turn until one names a usable nameserver:
// the host's, then systemd-resolved's list of its upstream servers (the
// host's own names only its stub at 127.0.0.53), as Docker does.
var resolvConfSources = []string{"/etc/resolv.conf", "/run/systemd/resolve/resolv.conf"}

// ResolvConf is the /etc/resolv.conf an egress container should get: the
// host's search, domain and options lines with the nameservers a
// container can reach, at most three (glibc reads no more). Not
// reachable, so dropped: IPv6 ones (containers have no IPv6 route), the
// host's loopback (it is the container's own there) and every other
// address of the host (the rules reject what a container sends to the
// host; a resolver on the host's LAN address is such a one), and the
// containers' subnet. When the host's file has none left, as with a
// local stub resolver, the servers systemd-resolved forwards to are used.
// An error means none is reachable: the container would have no DNS.
// It reads the files and the host's addresses at each call, so a changed
// resolver reaches the next container.
func (e *Egress) ResolvConf() ([]byte, error) {
	local := map[netip.Addr]bool{}
	if addrs, err := net.InterfaceAddrs(); err == nil {
		for _, a := range addrs {
			if p, err := netip.ParsePrefix(a.String()); err == nil {
				local[p.Addr().Unmap()] = true
			}
		}
	}
	usable := func(a netip.Addr) bool {
		a = a.Unmap()
		return a.Is4() && !a.IsLoopback() && !a.IsUnspecified() && !a.IsMulticast() &&
			!local[a] && !e.subnet.Contains(a)
	}
	for _, p := range resolvConfSources {
		b, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		if out, n := filterResolvConf(b, usable); n > 0 {
			return out, nil
		}
	}
	return nil, errors.New("egress network: no nameserver of the host's resolv.conf is reachable from a container")
}

// filterResolvConf keeps src's search, domain, options and sortlist lines
// and its first three usable nameservers; n counts those.
func filterResolvConf(src []byte, usable func(netip.Addr) bool) (out []byte, n int) {
	var b bytes.Buffer
	b.WriteString("# the host's resolv.conf, with the nameservers a container reaches (Nimbus gateway)\n")
	for _, line := range strings.Split(string(src), "\n") {
		f := strings.Fields(line)
		if len(f) == 0 {
			continue
		}
		switch f[0] {
		case "nameserver":
			if len(f) < 2 || n == 3 {
				continue
			}
			a, err := netip.ParseAddr(f[1])
			if err != nil || !usable(a) {
				continue
			}
			b.WriteString("nameserver " + a.String() + "\n")
			n++
		case "search", "domain", "options", "sortlist":
			b.WriteString(strings.Join(f, " ") + "\n")
		}
	}
	return b.Bytes(), n
}
