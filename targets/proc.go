package targets

import "github.com/prometheus/procfs"

// The package reads /proc one way, through github.com/prometheus/procfs
// and these helpers: the orphan sweep, the sandbox and browser user ids,
// a workload's session and a browser's profile all walk the same list.

// walkProcs calls fn with every process of the machine, this one included,
// and its stat; zombies (state Z, or X while it goes: exited, not reaped
// yet) only if zombies is set. A process gone before its stat was read is
// skipped.
func walkProcs(zombies bool, fn func(p procfs.Proc, st procfs.ProcStat)) {
	procs, err := procfs.AllProcs()
	if err != nil {
		return
	}
	for _, p := range procs {
		st, err := p.Stat()
		if err != nil || (!zombies && zombie(st)) {
			continue
		}
		fn(p, st)
	}
}

// procStat is /proc/<pid>/stat; false when the process does not exist.
func procStat(pid int) (procfs.ProcStat, bool) {
	p, err := procfs.NewProc(pid)
	if err != nil {
		return procfs.ProcStat{}, false
	}
	st, err := p.Stat()
	return st, err == nil
}

// zombie reports whether st is a process that has exited and is not reaped
// yet: it runs nothing and cannot be killed, but keeps its pid (and counts
// against its user's RLIMIT_NPROC).
func zombie(st procfs.ProcStat) bool { return st.State == "Z" || st.State == "X" }
