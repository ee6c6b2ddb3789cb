package targets

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// A container's first process is not the workload but this init: the
// gateway's own executable, bind-mounted read-only at containerInitPath.
// A workload as pid 1 of its namespace would break three rules the
// process runtime keeps: the kernel delivers to a namespace's init only
// the signals it has a handler for (SIGTERM would not stop `sleep`),
// nobody would reap the orphans it leaves, and the gateway, which is not
// the container's parent once runc has detached, could not learn how it
// ended. The init starts the workload in a session of its own (with the
// terminal as its controlling one), forwards every signal it gets to the
// workload's process group, reaps every child, and reports on the status
// pipe (fd 3): "started" or "error <why>" once, then "exit code <n>" or
// "exit signal <n>". Then it exits, and the kernel kills whatever is left
// in the namespace.
//
// The gateway's own signals come on the control pipe (fd 4) as "signal
// <n>" lines rather than as signals: SIGSTOP sent to the init would stop
// the init. The pipe's end (the gateway is gone) ends the container, as
// the parent-death signal ends a child process.
const (
	containerInitPath = "/.nimbus/init"
	initStatusFD      = 3
	initControlFD     = 4
)

// The init's arguments: initPath <mode> <argv...>, mode tty or pipes.
const (
	initModeTTY   = "tty"
	initModePipes = "pipes"
)

func init() {
	// Runs before main in every binary that links this package (the
	// gateway and its test binaries), but only takes over as pid 1 of a
	// container started under the init's path.
	if len(os.Args) >= 3 && os.Args[0] == containerInitPath && os.Getpid() == 1 {
		os.Exit(containerInit(os.Args[1], os.Args[2:]))
	}
}

// containerInit runs the workload argv and reports on the status pipe; its
// own exit code only matters when the pipe is gone.
func containerInit(mode string, argv []string) int {
	status := os.NewFile(initStatusFD, "status")
	control := os.NewFile(initControlFD, "control")
	unix.CloseOnExec(initStatusFD) // the workload must not hold them open
	unix.CloseOnExec(initControlFD)
	report := func(format string, args ...any) {
		_, _ = fmt.Fprintf(status, format+"\n", args...)
	}
	tty := mode == initModeTTY
	if tty {
		// runc made the terminal the init's controlling one; give it up
		// so the workload's session can take it, as a shell started by
		// the process runtime has it. Giving it up sends the session
		// SIGHUP, which must not end the init.
		signal.Ignore(syscall.SIGHUP)
		_ = unix.IoctlSetInt(0, unix.TIOCNOTTY, 0)
		signal.Reset(syscall.SIGHUP)
	}
	sigs := make(chan os.Signal, 64)
	signal.Notify(sigs) // every signal, SIGCHLD among them, before the child exists
	path, err := exec.LookPath(argv[0])
	if err != nil {
		report("error %s", oneLine(err.Error()))
		return 1
	}
	cmd := &exec.Cmd{
		Path:        path,
		Args:        argv,
		Stdin:       os.Stdin,
		Stdout:      os.Stdout,
		Stderr:      os.Stderr,
		SysProcAttr: &syscall.SysProcAttr{Setsid: true, Setctty: tty},
	}
	if err := cmd.Start(); err != nil {
		report("error %s", oneLine(err.Error()))
		return 1
	}
	child := cmd.Process.Pid
	report("started")
	asked := make(chan syscall.Signal)
	go readControl(control, asked)
	for {
		var s syscall.Signal
		select {
		case sig := <-sigs:
			s, _ = sig.(syscall.Signal)
		case s = <-asked:
		}
		switch s {
		case syscall.SIGCHLD:
			if ws, done := reapAll(child); done {
				if ws.Signaled() {
					report("exit signal %d", ws.Signal())
				} else {
					report("exit code %d", ws.ExitStatus())
				}
				return 0
			}
		case syscall.SIGURG:
			// The Go runtime's own preemption signal, not the caller's.
		default:
			_ = syscall.Kill(-child, s)
		}
	}
}

// readControl passes on the gateway's signal requests; at the pipe's end
// it asks for SIGKILL: a container outlives no gateway.
func readControl(control *os.File, asked chan<- syscall.Signal) {
	sc := bufio.NewScanner(control)
	for sc.Scan() {
		if n, ok := strings.CutPrefix(sc.Text(), "signal "); ok {
			if v, err := strconv.Atoi(n); err == nil && v > 0 && v < 65 {
				asked <- syscall.Signal(v)
			}
		}
	}
	asked <- syscall.SIGKILL
}

// reapAll reaps every exited child; done once one of them was main.
func reapAll(main int) (ws syscall.WaitStatus, done bool) {
	for {
		var st syscall.WaitStatus
		pid, err := syscall.Wait4(-1, &st, syscall.WNOHANG, nil)
		if errors.Is(err, syscall.EINTR) {
			continue
		}
		if err != nil || pid <= 0 {
			return ws, done
		}
		if pid == main {
			ws, done = st, true
		}
	}
}

func oneLine(s string) string { return strings.ReplaceAll(s, "\n", " ") }

// parseInitExit reads the init's "exit …" line.
func parseInitExit(line string) (ExitStatus, bool) {
	kind, n, ok := strings.Cut(strings.TrimPrefix(line, "exit "), " ")
	if !ok || !strings.HasPrefix(line, "exit ") {
		return ExitStatus{}, false
	}
	v, err := strconv.Atoi(n)
	if err != nil {
		return ExitStatus{}, false
	}
	switch kind {
	case "code":
		return ExitStatus{Code: v, Reason: ReasonExited}, true
	case "signal":
		return signaledStatus(syscall.Signal(v)), true
	}
	return ExitStatus{}, false
}
