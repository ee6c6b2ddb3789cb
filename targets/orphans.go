package targets

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"

	"github.com/prometheus/procfs"
)

// Workload processes can outlive a gateway that dies: Pdeathsig kills
// only a workload's direct child, so a background job (`sleep 600 &`)
// keeps running. The next gateway on the data directory finds them by two
// marks set at start and kills them (killOrphans, before its first
// workload starts):
//
//   - the session: every workload leads a session of its own, which its
//     descendants stay in unless they call setsid. The gateway records
//     each session in DataDir/workloads/<boot id>/<gateway pid>-<start>/
//     as <session id>-<leader's start time>-<uid>. A session id cannot be
//     given to another process while any member lives (the kernel keeps a
//     pid number in use while a session or group is named after it); a
//     member must also run as the recorded user and have started after
//     the leader, and the records of an earlier boot, whose pids mean
//     nothing now, are dropped unread.
//   - gatewayEnv=<gateway pid>:<start time> in the environment, which
//     descendants inherit, setsid or not, unless they replace it.
//
// A process that both leaves its session and drops the variable escapes
// both; with a block of ids (Options.UIDs) claimUIDs kills whatever runs
// under the block, which no workload can change.
//
// Issue 12: the sweep used to go by the mark alone and only under the
// sandboxes directory (a child that ran `cd /` escaped it), and took a
// SIGKILLed gateway that was still a zombie — until its parent reaps it,
// with its pid and start time — for a live one, so a restart within that
// window spared every orphan.
const gatewayEnv = "NIMBUS_GATEWAY"

// runsDir, under the data directory, holds the gateways' records of their
// workload sessions.
const runsDir = "workloads"

// selfMark is this process's gatewayEnv value.
var selfMark = func() string {
	return strconv.Itoa(os.Getpid()) + ":" + startTime(os.Getpid())
}()

// startTime is field 22 of /proc/<pid>/stat (clock ticks since boot), or
// "" when the process does not exist.
func startTime(pid int) string {
	st, ok := procStat(pid)
	if !ok {
		return ""
	}
	return strconv.FormatUint(st.Starttime, 10)
}

// runRecord is this gateway's directory of workload sessions. Safe for
// concurrent use; a nil *runRecord records nothing.
type runRecord struct {
	dir string // DataDir/workloads/<pid>-<start>; static

	mu   sync.Mutex
	made bool // guarded by mu: dir exists
}

func newRunRecord(dataDir string) *runRecord {
	return &runRecord{dir: filepath.Join(dataDir, runsDir, bootID, strings.Replace(selfMark, ":", "-", 1))}
}

// bootID tells this boot of the machine from the others.
var bootID = func() string {
	if fs, err := procfs.NewDefaultFS(); err == nil {
		if f, err := fs.SysctlStrings("kernel.random.boot_id"); err == nil && len(f) == 1 && !strings.ContainsAny(f[0], "/.") {
			return f[0]
		}
	}
	return "unknown-boot"
}()

// add records the session of a workload that has just started: pid leads
// it and runs as uid. remove deletes the record; call it once the
// workload was reaped and its session swept.
func (r *runRecord) add(pid int, uid uint32) (remove func(), err error) {
	if r == nil {
		return func() {}, nil
	}
	start := startTime(pid) // a zombie's too: the workload is not reaped yet
	if start == "" {
		return func() {}, fmt.Errorf("no start time of process %d", pid)
	}
	r.mu.Lock()
	if !r.made {
		// 0700: the gateway's alone, like everything beside the roots.
		if err = os.MkdirAll(r.dir, 0o700); err == nil {
			err = os.Chmod(filepath.Dir(filepath.Dir(r.dir)), 0o700)
		}
		r.made = err == nil
	}
	r.mu.Unlock()
	if err != nil {
		return func() {}, err
	}
	name := filepath.Join(r.dir, fmt.Sprintf("%d-%s-%d", pid, start, uid))
	if err := os.WriteFile(name, nil, 0o600); err != nil {
		return func() {}, err
	}
	return func() { _ = os.Remove(name) }, nil
}

// killOrphans SIGKILLs the workload processes of every gateway recorded
// under dataDir that no longer runs, and returns how many. The workloads
// of live gateways — another replica sharing the data directory — are
// left alone.
func killOrphans(dataDir string) int {
	boots, err := os.ReadDir(filepath.Join(dataDir, runsDir))
	if err != nil {
		return 0
	}
	for _, b := range boots {
		if b.Name() != bootID {
			_ = os.RemoveAll(filepath.Join(dataDir, runsDir, b.Name())) // no process survives a reboot
		}
	}
	base := filepath.Join(dataDir, runsDir, bootID)
	ents, err := os.ReadDir(base)
	if err != nil {
		return 0
	}
	self := strings.Replace(selfMark, ":", "-", 1)
	n := 0
	for _, e := range ents {
		gpid, gstart, ok := parseRun(e.Name())
		if !ok || e.Name() == self || gatewayRuns(gpid, gstart) {
			continue
		}
		dir := filepath.Join(base, e.Name())
		sessions := readSessions(dir)
		mark := gatewayEnv + "=" + strconv.Itoa(gpid) + ":" + gstart
		n += killUntilGone(func() []int { return orphans(mark, sessions) })
		_ = os.RemoveAll(dir)
	}
	return n
}

// session is one recorded workload session.
type session struct {
	start uint64 // the leader's start time
	uid   uint32
}

// orphans lists the live processes that are members of one of sessions,
// as the recorded user, or carry mark in their environment.
func orphans(mark string, sessions map[int]session) []int {
	// A recorded session whose id now names a process started at another
	// time is long gone (its id was free to reuse): another's session.
	current := map[int]bool{}
	for sid, s := range sessions {
		leader, ok := procStat(sid)
		current[sid] = !ok || leader.Starttime == s.start
	}
	self := os.Getpid()
	var pids []int
	walkProcs(false, func(p procfs.Proc, st procfs.ProcStat) {
		if p.PID == self {
			return
		}
		if s, ok := sessions[st.Session]; ok && current[st.Session] && st.Starttime >= s.start {
			if status, err := p.NewStatus(); err == nil && status.UIDs[0] == uint64(s.uid) {
				pids = append(pids, p.PID)
				return
			}
		}
		if env, err := p.Environ(); err == nil && slices.Contains(env, mark) {
			pids = append(pids, p.PID)
		}
	})
	return pids
}

// gatewayRuns reports whether process pid runs and started at start. A
// zombie does not run: a SIGKILLed gateway stays one, with its pid and
// start time, until its parent reaps it.
func gatewayRuns(pid int, start string) bool {
	st, ok := procStat(pid)
	return ok && strconv.FormatUint(st.Starttime, 10) == start && !zombie(st)
}

// parseRun reads a record directory's name, "<pid>-<start>".
func parseRun(name string) (pid int, start string, ok bool) {
	p, start, ok := strings.Cut(name, "-")
	pid, err := strconv.Atoi(p)
	if !ok || err != nil || pid <= 0 || start == "" {
		return 0, "", false
	}
	return pid, start, true
}

// readSessions reads a record directory: one "<sid>-<start>-<uid>" file
// per workload session.
func readSessions(dir string) map[int]session {
	out := map[int]session{}
	ents, err := os.ReadDir(dir)
	if err != nil {
		return out
	}
	for _, e := range ents {
		f := strings.Split(e.Name(), "-")
		if len(f) != 3 {
			continue
		}
		sid, err1 := strconv.Atoi(f[0])
		start, err2 := strconv.ParseUint(f[1], 10, 64)
		uid, err3 := strconv.ParseUint(f[2], 10, 32)
		if err1 != nil || err2 != nil || err3 != nil || sid <= 1 {
			continue
		}
		out[sid] = session{start: start, uid: uint32(uid)}
	}
	return out
}
