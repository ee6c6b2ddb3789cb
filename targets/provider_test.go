package targets

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

const helperEnv = "NIMBUS_TARGETS_TEST_HELPER"

// runHelper is a stand-in gateway: it starts a workload, prints its pid,
// then retires OS threads (a goroutine that exits while locked to its
// thread takes the thread with it), prints "churned" and waits to be
// killed.
func runHelper() {
	w, err := startWorkload(Sandbox{Command: []string{"sleep", "1000"}, Root: os.TempDir()}, workloadConfig{})
	if err != nil {
		fmt.Println("error", err)
		os.Exit(1)
	}
	fmt.Println(w.PID())
	for range 200 {
		done := make(chan struct{})
		go func() {
			runtime.LockOSThread()
			close(done) // exits locked: the runtime terminates the thread
		}()
		<-done
	}
	fmt.Println("churned")
	select {}
}

// alive reports whether pid is a live (non-zombie) process.
func alive(pid int) bool { return processAlive(pid) }

func waitGone(t *testing.T, pid int) {
	t.Helper()
	if !exitsWithin(pid, 5*time.Second) {
		t.Fatalf("process %d still alive", pid)
	}
}

// exitsWithin waits up to d for pid to exit and reports whether it did (a
// zombie has exited; so has a pid no longer there). It waits on a pidfd,
// which the kernel makes readable when the process exits, rather than
// polling /proc.
func exitsWithin(pid int, d time.Duration) bool {
	fd, err := unix.PidfdOpen(pid, 0)
	if errors.Is(err, unix.ESRCH) {
		return true // already reaped
	}
	if err != nil {
		panic(fmt.Sprintf("pidfd_open(%d): %v", pid, err))
	}
	defer unix.Close(fd)
	deadline := time.Now().Add(d)
	for {
		ms := max(0, int(time.Until(deadline).Milliseconds()))
		n, err := unix.Poll([]unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}, ms)
		switch {
		case errors.Is(err, unix.EINTR):
			continue
		case err != nil:
			panic(fmt.Sprintf("poll on the pidfd of %d: %v", pid, err))
		}
		return n > 0
	}
}

// TestParentDeathKillsWorkload: a workload survives the runtime retiring
// threads (Go issue 27505) and dies with its gateway, even a SIGKILLed one.
func TestParentDeathKillsWorkload(t *testing.T) {
	t.Parallel()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), helperEnv+"=1")
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	sc := bufio.NewScanner(out)
	if !sc.Scan() {
		t.Fatal("helper printed nothing")
	}
	pid, err := strconv.Atoi(sc.Text())
	if err != nil {
		t.Fatalf("helper: %q", sc.Text())
	}
	if !sc.Scan() || sc.Text() != "churned" {
		t.Fatalf("helper: %q", sc.Text())
	}
	// The threads' exits reach the kernel shortly after "churned"; a
	// parent-death signal tied to one of them would kill the workload
	// within this window.
	if exitsWithin(pid, 50*time.Millisecond) {
		t.Fatal("workload died while the gateway retired threads")
	}
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_ = cmd.Wait()
	waitGone(t, pid)
}

// The exit sweep: what the workload leaves in its group (pipes) or
// session (PTY, where `set -m` gives each job a group of its own) is
// killed, and output ends without waiting for the drain deadline.
func TestWorkloadExitSweepsLeftovers(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		tty  bool
		argv []string
	}{
		{"pipes", false, []string{"sh", "-c", "sleep 1000 & echo pid=$!"}},
		{"pty job control", true, []string{"sh", "-c", "set -m; sleep 1000 & echo pid=$!; sleep 0.2"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			w := startT(t, tc.tty, tc.argv...)
			s := w.Subscribe(SubscribeOptions{})
			defer s.Close()
			start := time.Now()
			out, _, err := drain(t, s)
			if err == nil {
				t.Fatal("no end")
			}
			_, after, ok := strings.Cut(string(out), "pid=")
			if !ok {
				t.Fatalf("output %q", out)
			}
			pid, _ := strconv.Atoi(strings.TrimSpace(after))
			waitGone(t, pid)
			if d := time.Since(start); d > defaultDrain {
				t.Errorf("output ended after %v: the sweep did not release it", d)
			}
		})
	}
}

func TestStopPTYShell(t *testing.T) {
	t.Parallel()
	// An interactive shell ignores SIGTERM; Stop's SIGHUP ends it quickly.
	w := startT(t, true, "/bin/sh")
	s := w.Subscribe(SubscribeOptions{})
	defer s.Close()
	if _, err := w.Write([]byte("echo hi-$((1+1))\n")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, s, "hi-2")
	start := time.Now()
	w.Stop(5 * time.Second)
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("Stop took %v", d)
	}
	if alive(w.PID()) {
		t.Fatal("shell alive")
	}
	if err := w.Signal(syscall.SIGINT); !errors.Is(err, os.ErrProcessDone) {
		t.Fatalf("Signal after stop = %v", err)
	}
}
