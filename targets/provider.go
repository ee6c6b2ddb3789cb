package targets

import (
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"time"

	"github.com/creack/pty"
	"github.com/prometheus/procfs"
	"go.uber.org/zap"
	"golang.org/x/sys/unix"
)

// The local provider runs a sandbox's workload as a child process of the
// gateway, in the sandbox root.
const (
	// readSize bounds one read of an output stream: large reads keep the
	// per-chunk cost (a syscall, a fan-out) small next to the bytes moved.
	readSize = 256 << 10
	// slabSize is the largest allocation output is read into; chunks are
	// slices of it. The ring may pin one slab per stream of a workload.
	slabSize = 1 << 20
	// minSlab is the first slab of a stream; slabs grow from it.
	minSlab = 16 << 10
	// pipeSize is the kernel buffer asked for on output pipes.
	pipeSize = 1 << 20
	// defaultDrain bounds how long the readers keep draining after the
	// process was reaped. Output normally ends at once (the exit sweep
	// kills whatever else held the pipes or the PTY); a process that
	// escaped into a session of its own could hold them open forever.
	defaultDrain = time.Second
	// defaultPath is the workload's PATH unless its env sets one.
	defaultPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
)

// defaultWinsize is a new PTY's size until the first Resize.
var defaultWinsize = pty.Winsize{Cols: 80, Rows: 24}

// workloadConfig tunes startWorkload; zero fields take the defaults.
type workloadConfig struct {
	ringSize int           // replay ring, default 64 KiB
	drain    time.Duration // default defaultDrain
	log      *zap.Logger   // nil = nop
	runAs    *Credential   // nil = the gateway's user
	nproc    uint64        // RLIMIT_NPROC (Options.NProc), 0 = none
	runs     *runRecord    // where the workload's session is recorded; nil = nowhere
}

// withDefaults fills cfg's zero fields.
func (cfg workloadConfig) withDefaults() workloadConfig {
	if cfg.ringSize == 0 {
		cfg.ringSize = defaultRingSize
	}
	if cfg.drain <= 0 {
		cfg.drain = defaultDrain
	}
	if cfg.log == nil {
		cfg.log = zap.NewNop()
	}
	return cfg
}

// startWorkload starts sb.Command in sb.Root and returns once the process
// runs (or failed to start: command not found, not executable, root
// missing). The process gets a minimal environment (PATH, HOME = the root,
// LANG, TERM for a PTY) plus sb.Env, later entries winning; its own
// session (and process group), with the PTY as controlling terminal for
// tty; SIGKILL as parent-death signal, so it dies with the gateway, even
// one that is SIGKILLed; and cfg.nproc as RLIMIT_NPROC.
func startWorkload(sb Sandbox, cfg workloadConfig) (*Workload, error) {
	if len(sb.Command) == 0 || sb.Command[0] == "" {
		return nil, errors.New("no command")
	}
	cfg = cfg.withDefaults()
	env := workloadEnv(sb)
	path, err := lookPath(sb.Command[0], env, sb.Root)
	if err != nil {
		return nil, err
	}
	attr := &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Credential: cfg.runAs.sysProcCredential()}
	// os/exec cannot set a child's rlimits, and prlimit after Start would
	// race the workload's first forks, whose children would keep no limit
	// for good: the child stops at its exec instead, until run has set the
	// limit (limitAtExec).
	attr.Ptrace = cfg.nproc > 0
	cmd := &exec.Cmd{
		Path:        path,
		Args:        sb.Command,
		Env:         env,
		Dir:         sb.Root,
		SysProcAttr: attr,
	}
	w := &Workload{tty: sb.TTY, drain: cfg.drain, log: cfg.log, done: make(chan struct{})}
	w.hub.ring.size = cfg.ringSize
	started := make(chan error, 1)
	go w.run(cmd, cfg, started)
	if err := <-started; err != nil {
		return nil, err
	}
	return w, nil
}

// run starts cmd, then waits for it, on a goroutine locked to its OS thread
// for the child's whole life. Pdeathsig fires when the *thread* that forked
// the child exits, not the process (Go issue 27505): started from an
// ordinary goroutine, the child would be SIGKILLed whenever the runtime
// retires that thread, e.g. after some other goroutine exits while locked
// to it. A locked thread runs nothing else, so it lives exactly as long as
// this goroutine, which ends only after the child was reaped. The cost is
// one OS thread per workload, which the blocking wait would take anyway.
// The same thread is the tracer that limitAtExec must detach from.
func (w *Workload) run(cmd *exec.Cmd, cfg workloadConfig, started chan<- error) {
	runtime.LockOSThread()
	unlock := runtime.UnlockOSThread
	if err := w.start(cmd); err != nil {
		unlock()
		if cmd.SysProcAttr.Ptrace && errors.Is(err, syscall.EPERM) {
			err = fmt.Errorf("%w (to set RLIMIT_NPROC the workload is stopped at its exec with ptrace, which this host may forbid)", err)
		}
		started <- err
		return
	}
	// Recorded before the workload runs (with a limit to set, it waits at
	// its exec), so a gateway dying from here on leaves the next one a
	// record of its session (orphans.go).
	uid := uint32(os.Getuid())
	if cfg.runAs != nil {
		uid = cfg.runAs.UID
	}
	unrecord, err := cfg.runs.add(w.pid, uid)
	if err != nil {
		w.log.Warn("cannot record the workload's session for the orphan sweep", zap.Int("pid", w.pid), zap.Error(err))
	}
	if cmd.SysProcAttr.Ptrace {
		threadOK, err := limitAtExec(w.pid, cfg.nproc, cfg.runAs)
		if !threadOK {
			// Never handed back: the goroutine ends locked, and the
			// runtime ends the thread with it.
			unlock = func() {}
		}
		if err != nil {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
			unlock()
			unrecord()
			_ = w.stdin.Close() // on a PTY also the only output
			if !w.tty {
				closeAll(w.outs)
			}
			started <- fmt.Errorf("set the workload's RLIMIT_NPROC: %w", err)
			return
		}
	}
	w.readers.Add(len(w.outs))
	for i, f := range w.outs {
		go w.read(f, Stdout+byte(i))
	}
	started <- nil

	// Learn of the exit without reaping (WNOWAIT): while the zombie holds
	// the pid, its process group and session ids cannot be reused, so the
	// sweep below cannot hit a stranger.
	if err := waitExited(w.pid); err != nil {
		w.log.Warn("waitid failed", zap.Int("pid", w.pid), zap.Error(err))
	}
	w.mu.Lock()
	w.exited = true
	// Sweep what the process left behind: background children would
	// otherwise outlive the sandbox and hold its output open (a PTY's
	// reader sees EIO only once every holder of the slave is gone).
	w.killAllLocked(syscall.SIGKILL)
	w.mu.Unlock()
	waitErr := cmd.Wait()
	unlock()   // reaped: the parent-death signal is moot
	unrecord() // its session swept
	st := exitStatus(cmd.ProcessState)
	if cmd.ProcessState == nil {
		w.log.Warn("wait failed", zap.Int("pid", w.pid), zap.Error(waitErr))
	}

	w.finish(st)
}

// finish ends a workload whose process (or container) has ended: stdin
// closed, the output drained for at most w.drain, the exit recorded, the
// hub finished and Done closed. Both runtimes end this way.
func (w *Workload) finish(st ExitStatus) {
	if !w.tty {
		_ = w.closeStdin() // writers get an error now, not a blocked pipe
	}
	deadline := time.Now().Add(w.drain)
	for _, f := range w.outs {
		_ = f.SetReadDeadline(deadline)
	}
	w.readers.Wait()
	for _, f := range w.outs {
		_ = f.Close() // for a PTY this is also stdin
	}
	w.mu.Lock()
	w.exit = st
	w.mu.Unlock()
	w.hub.finish()
	close(w.done)
}

// start starts cmd on pipes or a PTY and sets pid, stdin and outs.
func (w *Workload) start(cmd *exec.Cmd) error {
	if w.tty {
		// StartWithSize adds Setsid and Setctty to our SysProcAttr.
		ws := defaultWinsize
		master, err := pty.StartWithSize(cmd, &ws)
		if err != nil {
			return err
		}
		w.pid, w.stdin, w.outs = cmd.Process.Pid, master, []*os.File{master}
		return nil
	}
	// A session of its own, not only a group: no terminal of the
	// gateway's to reach, and the session id, which its descendants keep
	// when they change groups, finds them at its exit and after the
	// gateway's death (orphans.go). Signals still go to the group.
	cmd.SysProcAttr.Setsid = true
	var files [6]*os.File // inR, inW, outR, outW, errR, errW
	for i := 0; i < len(files); i += 2 {
		r, wr, err := os.Pipe()
		if err != nil {
			closeAll(files[:i])
			return err
		}
		files[i], files[i+1] = r, wr
	}
	growPipe(files[2])
	growPipe(files[4])
	cmd.Stdin, cmd.Stdout, cmd.Stderr = files[0], files[3], files[5]
	err := cmd.Start()
	closeAll([]*os.File{files[0], files[3], files[5]}) // the child's ends
	if err != nil {
		closeAll([]*os.File{files[1], files[2], files[4]})
		return err
	}
	w.pid, w.stdin, w.outs = cmd.Process.Pid, files[1], []*os.File{files[2], files[4]}
	return nil
}

// limitAtExec sets the RLIMIT_NPROC of a child started with
// PTRACE_TRACEME, which the kernel stops with SIGTRAP once its execve has
// succeeded, before the new program runs an instruction; then it detaches
// and lets the child go on, the SIGTRAP suppressed. It must run on the
// locked thread that started the child (its tracer). The limit is set as
// soft and hard, so the workload cannot raise it. threadOK is false in
// the unlikely case that the thread could not take its own ids back
// (asRealIDs); it must then never run anything else.
func limitAtExec(pid int, nproc uint64, cred *Credential) (threadOK bool, err error) {
	var ws unix.WaitStatus
	for {
		_, err := unix.Wait4(pid, &ws, 0, nil)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return true, err
		}
		break
	}
	if !ws.Stopped() {
		return true, fmt.Errorf("the workload did not stop at its exec (wait status %#x)", uint32(ws))
	}
	threadOK, err = asRealIDs(cred, func() error {
		return unix.Prlimit(pid, unix.RLIMIT_NPROC, &unix.Rlimit{Cur: nproc, Max: nproc}, nil)
	})
	if derr := unix.PtraceDetach(pid); err == nil {
		err = derr
	}
	return threadOK, err
}

// asRealIDs runs fn on this (locked) thread with cred's uid and gid as its
// real ids. prlimit(2) on another user's process needs CAP_SYS_RESOURCE,
// which containers often lack (Docker's default set has none), or a
// caller whose real ids are the target's. Linux credentials are per
// thread, and the raw setresuid/setresgid calls (32-bit ids on 64-bit
// Linux), unlike syscall.Setresuid, change only this one; effective and
// saved ids stay root, so capabilities stay and the ids can be switched
// back. threadOK is false if they could not be.
func asRealIDs(cred *Credential, fn func() error) (threadOK bool, err error) {
	if cred == nil {
		return true, fn()
	}
	const keep = ^uintptr(0) // -1: leave that id as it is
	uid, gid := uintptr(unix.Getuid()), uintptr(unix.Getgid())
	if _, _, e := unix.RawSyscall(unix.SYS_SETRESGID, uintptr(cred.GID), keep, keep); e != 0 {
		return true, e
	}
	if _, _, e := unix.RawSyscall(unix.SYS_SETRESUID, uintptr(cred.UID), keep, keep); e != 0 {
		_, _, e2 := unix.RawSyscall(unix.SYS_SETRESGID, gid, keep, keep)
		return e2 == 0, e
	}
	err = fn()
	_, _, e1 := unix.RawSyscall(unix.SYS_SETRESUID, uid, keep, keep)
	_, _, e2 := unix.RawSyscall(unix.SYS_SETRESGID, gid, keep, keep)
	return e1 == 0 && e2 == 0, err
}

// growPipe asks for a pipeSize buffer on an output pipe: with the default
// 64 KiB a fast writer blocks, and both sides context-switch, every 64 KiB.
// Best effort: the limit is /proc/sys/fs/pipe-max-size.
func growPipe(f *os.File) {
	if rc, err := f.SyscallConn(); err == nil {
		_ = rc.Control(func(fd uintptr) { _, _ = unix.FcntlInt(fd, unix.F_SETPIPE_SZ, pipeSize) })
	}
}

// read moves one output stream into the hub until EOF. It never waits for
// subscribers. The pipe is read straight into a slab, one byte after the
// stream byte it writes there, and each chunk is the slab's slice of that
// read (capped, so nobody can append into the next one), shared read-only
// by the ring and every subscriber: no copy, and a stdio writer can send
// the chunk as a wire message as it is (Chunk.Message). A new slab is
// taken when too little of the current one is left; released slabs are
// reused.
func (w *Workload) read(f *os.File, stream byte) {
	defer w.readers.Done()
	// Slabs start small and grow while reads fill their window, so an idle
	// or chatty-but-slow workload holds kilobytes, not a megabyte per
	// stream, and a bulk writer gets large reads.
	var cur *slab
	var free []byte // cur's unread part
	defer func() {
		if cur != nil {
			cur.release()
		}
	}()
	size, window := minSlab, minSlab/4
	for {
		// The last read of a slab may be a little short of the window (each
		// read takes a byte for its stream): a slab of 4 windows holds 4
		// reads, not 3 and an unused quarter.
		if len(free) <= window/2 {
			if cur != nil {
				cur.release()
			}
			cur = newSlab(size)
			free = cur.buf
		}
		free[0] = stream
		n, err := f.Read(free[1 : 1+min(window, len(free)-1)])
		if n > 0 {
			msg := free[: 1+n : 1+n]
			w.hub.publish(Chunk{Stream: stream, Data: msg[1:], msg: msg, slab: cur})
			free = free[1+n:]
			if n == window && window < readSize {
				window = min(window*4, readSize)
				size = min(size*4, slabSize)
			}
		}
		if err != nil {
			// EOF on a pipe; EIO on a PTY master once the slave side is
			// gone; the drain deadline when something still holds it.
			if !errors.Is(err, io.EOF) && !errors.Is(err, syscall.EIO) && !errors.Is(err, os.ErrDeadlineExceeded) {
				w.log.Warn("workload output read failed", zap.Int("pid", w.pid), zap.Error(err))
			}
			return
		}
	}
}

// waitExited blocks until process pid has exited, leaving it unreaped.
func waitExited(pid int) error {
	for {
		var info unix.Siginfo
		err := unix.Waitid(unix.P_PID, pid, &info, unix.WEXITED|unix.WNOWAIT, nil)
		if !errors.Is(err, unix.EINTR) {
			return err
		}
	}
}

func exitStatus(ps *os.ProcessState) ExitStatus {
	if ps == nil {
		return ExitStatus{Code: -1, Reason: ReasonExited}
	}
	if ws, ok := ps.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		return signaledStatus(ws.Signal())
	}
	return ExitStatus{Code: ps.ExitCode(), Reason: ReasonExited}
}

func signaledStatus(sig syscall.Signal) ExitStatus {
	return ExitStatus{Code: 128 + int(sig), Signal: unix.SignalName(sig), Reason: ReasonSignaled}
}

// workloadEnv is the minimal environment of sb's process: the gateway's own
// environment (credentials included) is never inherited.
func workloadEnv(sb Sandbox) []string {
	env := []string{"PATH=" + defaultPath, "HOME=" + sb.Root, "LANG=C.UTF-8", gatewayEnv + "=" + selfMark}
	if sb.TTY {
		env = append(env, "TERM=xterm-256color")
	}
	// exec.Cmd keeps the last of duplicate keys, so sb.Env overrides.
	return append(env, sb.Env...)
}

// lookPath resolves name against the PATH of env (the workload's, not the
// gateway's); relative PATH entries are relative to the root.
func lookPath(name string, env []string, root string) (string, error) {
	if strings.Contains(name, "/") {
		return name, nil // execve checks it, relative to Dir
	}
	path := ""
	for _, e := range env {
		if v, ok := strings.CutPrefix(e, "PATH="); ok {
			path = v
		}
	}
	for _, dir := range filepath.SplitList(path) {
		if dir == "" {
			dir = "."
		}
		if !filepath.IsAbs(dir) {
			dir = filepath.Join(root, dir)
		}
		p := filepath.Join(dir, name)
		if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	return "", fmt.Errorf("%s: %w", name, exec.ErrNotFound)
}

// sessionMembers lists the processes of session sid other than its leader.
func sessionMembers(sid int) []int {
	var pids []int
	walkProcs(true, func(p procfs.Proc, st procfs.ProcStat) {
		if p.PID != sid && st.Session == sid {
			pids = append(pids, p.PID)
		}
	})
	return pids
}

func closeAll(fs []*os.File) {
	for _, f := range fs {
		if f != nil {
			_ = f.Close()
		}
	}
}
