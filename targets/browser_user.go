package targets

import (
	"fmt"
	"strconv"
	"strings"
	"sync"

	"github.com/prometheus/procfs"
)

// browserUIDs hands out the ids of BrowserOptions.UIDs, one per live
// browser. An id is handed out only while no process runs as it: a
// Chromium process that escaped its group (none is known to) must not
// share its user with the next browser. Safe for concurrent use.
type browserUIDs struct {
	r    UIDRange
	mu   sync.Mutex
	used map[uint32]bool // guarded by mu
	next uint32          // guarded by mu: offset of the next id to try
}

// take returns a free id of the block.
func (a *browserUIDs) take() (uint32, error) {
	busy := uidsWithProcesses()
	a.mu.Lock()
	defer a.mu.Unlock()
	n := uint64(a.r.Last) - uint64(a.r.First) + 1
	for i := uint64(0); i < n; i++ {
		uid := a.r.First + uint32((uint64(a.next)+i)%n)
		if !a.used[uid] && !busy[uid] {
			a.used[uid] = true
			a.next = uint32((uint64(uid-a.r.First) + 1) % n)
			return uid, nil
		}
	}
	return 0, fmt.Errorf("no free user id in %d-%d for another browser", a.r.First, a.r.Last)
}

func (a *browserUIDs) give(uid uint32) {
	a.mu.Lock()
	delete(a.used, uid)
	a.mu.Unlock()
}

// giveUID returns b's id to the block once b's processes are gone.
func (p *BrowserPool) giveUID(b *Browser) {
	if p.uids != nil && b.UID != 0 {
		p.uids.give(b.UID)
	}
}

// uidsWithProcesses is the set of real user ids of the live processes. A
// zombie runs nothing (and one reparented to an init that does not reap
// may stay for long).
func uidsWithProcesses() map[uint32]bool {
	out := map[uint32]bool{}
	walkProcs(false, func(pr procfs.Proc, _ procfs.ProcStat) {
		if st, err := pr.NewStatus(); err == nil {
			out[uint32(st.UIDs[0])] = true
		}
	})
	return out
}

// ListeningTCPPorts lists the TCP ports pid listens on (IPv4 and IPv6),
// from its sockets' inodes and /proc/net/tcp{,6}. Tests use it to check
// that no browser has a DevTools port (issue 12).
func ListeningTCPPorts(pid int) []int {
	fs, err := procfs.NewFS("/proc")
	if err != nil {
		return nil
	}
	pr, err := fs.Proc(pid)
	if err != nil {
		return nil
	}
	fds, err := pr.FileDescriptorTargets()
	if err != nil {
		return nil
	}
	mine := map[uint64]bool{}
	for _, tg := range fds {
		if ino, ok := strings.CutPrefix(tg, "socket:["); ok {
			n, _ := strconv.ParseUint(strings.TrimSuffix(ino, "]"), 10, 64)
			mine[n] = true
		}
	}
	var ports []int
	for _, read := range []func() (procfs.NetTCP, error){fs.NetTCP, fs.NetTCP6} {
		lines, err := read()
		if err != nil {
			continue
		}
		for _, l := range lines {
			if l.St == tcpListen && mine[l.Inode] {
				ports = append(ports, int(l.LocalPort))
			}
		}
	}
	return ports
}

// tcpListen is TCP_LISTEN in /proc/net/tcp's st column.
const tcpListen = 10
