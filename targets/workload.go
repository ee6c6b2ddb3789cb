package targets

import (
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/creack/pty"
	"go.uber.org/zap"
	"golang.org/x/sys/unix"
)

// Workload is a sandbox's running process: the attach point of the stdio
// channel (SPEC §5.1). Any number of clients may write its stdin and
// Subscribe to its output at once; output is read continuously, whether or
// not anyone is attached, so the process never blocks on a slow or absent
// client. All methods are safe for concurrent use.
type Workload struct {
	// Static after start.
	pid   int
	tty   bool
	stdin *os.File   // pipe write end, or the PTY master
	outs  []*os.File // stdout and stderr pipe read ends, or the PTY master
	drain time.Duration
	log   *zap.Logger
	done  chan struct{}
	ctr   *container // the workload's container under runc; nil for a child process

	hub     hub            // the output fan-out; has its own lock
	readers sync.WaitGroup // the output reader goroutines
	bytesIn atomic.Uint64

	mu sync.Mutex
	// Guarded by mu.
	exited      bool // the process has exited; its pid must not be signalled any more
	stdinClosed bool
	exit        ExitStatus
}

// ExitStatus is how a workload's process ended.
type ExitStatus struct {
	// Code is the exit code; for a process killed by a signal it is 128
	// plus the signal number, as a shell (and Kubernetes) reports it.
	Code int `json:"code"`
	// Signal names the signal that killed the process ("SIGKILL"), or is
	// "" when it exited by itself.
	Signal string `json:"signal,omitempty"`
	// Reason is exited or signaled, or oom when the kernel killed it for
	// its memory limit (only a container has one).
	Reason ExitReason `json:"reason"`
}

// WorkloadStats are a workload's counters, for the lead's Prometheus
// export.
type WorkloadStats struct {
	// BytesOut counts every byte read from the workload's output.
	BytesOut uint64
	// BytesIn counts every byte written to its stdin.
	BytesIn uint64
	// DroppedSlowConsumers counts subscribers dropped with
	// ErrSlowConsumer.
	DroppedSlowConsumers uint64
	// Subscribers is the number currently attached.
	Subscribers int
}

// TTY reports whether the workload runs on a pseudo-terminal (its stdout
// and stderr are then one stream, reported as stdout).
func (w *Workload) TTY() bool { return w.tty }

// PID is the process id of the workload's main process, in the gateway's
// pid namespace; for a container, of its init (the workload's parent).
// After Done it may belong to another process.
func (w *Workload) PID() int { return w.pid }

// Write writes p to the workload's stdin. Concurrent writes are not
// interleaved with each other (each call is written whole, in some order).
// It blocks while the process does not read (backpressure to the writer),
// and fails once stdin was closed or the process exited.
func (w *Workload) Write(p []byte) (int, error) {
	n, err := w.stdin.Write(p)
	w.bytesIn.Add(uint64(n))
	return n, err
}

// CloseStdin signals end of input. On pipes it closes stdin (idempotent).
// On a PTY closing the master would hang the terminal up, so it writes the
// terminal's EOF character (VEOF, normally ^D) instead; like a typed ^D it
// ends input only at the start of a line and only in canonical mode, and
// the terminal stays writable.
func (w *Workload) CloseStdin() error {
	if w.tty {
		eof := byte(4) // ^D, the default VEOF
		if rc, err := w.stdin.SyscallConn(); err == nil {
			_ = rc.Control(func(fd uintptr) {
				if t, err := unix.IoctlGetTermios(int(fd), unix.TCGETS); err == nil && t.Cc[unix.VEOF] != 0 {
					eof = t.Cc[unix.VEOF]
				}
			})
		}
		_, err := w.Write([]byte{eof})
		return err
	}
	return w.closeStdin()
}

func (w *Workload) closeStdin() error {
	w.mu.Lock()
	if w.stdinClosed {
		w.mu.Unlock()
		return nil
	}
	w.stdinClosed = true
	w.mu.Unlock()
	return w.stdin.Close()
}

// Resize sets the terminal size; the kernel sends SIGWINCH to the
// terminal's foreground process group. It fails for a workload on pipes.
func (w *Workload) Resize(cols, rows uint16) error {
	if !w.tty {
		return errNoTTY
	}
	return pty.Setsize(w.stdin, &pty.Winsize{Cols: cols, Rows: rows})
}

// Signal sends sig to the workload's process group. After the process
// exited it returns os.ErrProcessDone: the pid may be reused, so it is
// never signalled again.
func (w *Workload) Signal(sig syscall.Signal) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.exited {
		return os.ErrProcessDone
	}
	return w.signalLocked(sig)
}

func (w *Workload) signalLocked(sig syscall.Signal) error {
	if w.ctr != nil {
		return w.ctr.signal(sig)
	}
	return syscall.Kill(-w.pid, sig)
}

// Usage is what the workload's container uses now, nil for a child
// process (no cgroup of its own) or once it is gone.
func (w *Workload) Usage() *Usage {
	if w.ctr == nil {
		return nil
	}
	w.mu.Lock()
	exited := w.exited
	w.mu.Unlock()
	if exited {
		return nil
	}
	return w.ctr.usage()
}

// Done is closed once the process has exited and been reaped, and all its
// output has been read into the hub (so a subscriber reaching io.EOF has
// seen every byte).
func (w *Workload) Done() <-chan struct{} { return w.done }

// Exit is how the process ended; valid after Done (zero before).
func (w *Workload) Exit() ExitStatus {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.exit
}

// Subscribe attaches a new reader of the output. It first receives the
// replay ring's content (Subscription.Replayed bytes), then live output.
// Subscribing after Done still yields the ring's content, then io.EOF.
// The caller must Close the subscription when done with it.
func (w *Workload) Subscribe(opt SubscribeOptions) *Subscription {
	return w.hub.subscribe(opt)
}

// Stop ends the workload and waits for Done: SIGTERM to its process group
// (and SIGHUP for a PTY, which interactive shells honour while they ignore
// SIGTERM), then SIGKILL after grace. Whatever the process left in its
// group (and, on a PTY, its session) is killed when it exits. Safe to call
// after the process exited, and concurrently.
func (w *Workload) Stop(grace time.Duration) {
	w.mu.Lock()
	if !w.exited {
		if w.tty {
			_ = w.signalLocked(syscall.SIGHUP)
		}
		_ = w.signalLocked(syscall.SIGTERM)
	}
	w.mu.Unlock()
	t := time.NewTimer(grace)
	defer t.Stop()
	select {
	case <-w.done:
		return
	case <-t.C:
	}
	w.mu.Lock()
	if !w.exited {
		w.killAllLocked(syscall.SIGKILL)
	}
	w.mu.Unlock()
	<-w.done
}

// Stats returns the workload's counters.
func (w *Workload) Stats() WorkloadStats {
	h := &w.hub
	h.mu.Lock()
	defer h.mu.Unlock()
	return WorkloadStats{
		BytesOut:             h.bytesOut,
		BytesIn:              w.bytesIn.Load(),
		DroppedSlowConsumers: h.dropped,
		Subscribers:          len(h.subs),
	}
}

// killAllLocked sends sig to the workload's process group and to every
// other member of its session (an interactive shell puts each job in a
// group of its own, and any child may call setpgid). Only while the main
// process is not reaped: its pid, hence the group and session ids, cannot
// be reused until then.
func (w *Workload) killAllLocked(sig syscall.Signal) {
	if w.ctr != nil {
		w.ctr.kill() // the namespace's init: the kernel ends the rest
		return
	}
	_ = syscall.Kill(-w.pid, sig)
	for _, pid := range sessionMembers(w.pid) {
		_ = syscall.Kill(pid, sig)
	}
}
