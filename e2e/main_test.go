package e2e

import (
	"flag"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/procfs"
	"go.uber.org/goleak"

	"github.com/nimbus/gateway/store/pgtest"
)

// soakFor is how long TestSoak churns. The default keeps `make test` at a
// one-minute soak; `go test ./e2e -run Soak -soak=5m` runs a longer one.
var soakFor = flag.Duration("soak", time.Minute, "duration of TestSoak's churn")

// binDir holds the gateway binary built once by TestMain; gatewayBin is it.
// tmpRoot is the parent of every data dir the tests use, so a sweep of
// /proc can find every process the tests started (its cwd is under it).
var (
	binDir     string
	gatewayBin string
	tmpRoot    string
)

// TestMain builds the gateway, runs the tests, then fails the run if any
// goroutine of this process, or any gateway or workload process, is left.
func TestMain(m *testing.M) {
	flag.Parse()
	var err error
	if binDir, err = os.MkdirTemp("", "nimbus-e2e-bin-"); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	if tmpRoot, err = os.MkdirTemp("", "nimbus-e2e-data-"); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	gatewayBin = filepath.Join(binDir, "gateway")
	build := exec.Command("go", "build", "-o", gatewayBin, "github.com/nimbus/gateway/cmd/gateway")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "building the gateway:", err)
		os.Exit(2)
	}
	goleak.VerifyTestMain(sweepingM{m}, goleak.Cleanup(func(code int) {
		_ = os.RemoveAll(binDir)
		_ = os.RemoveAll(tmpRoot)
		os.Exit(code)
	}))
}

// sweepingM runs the tests, then drops idle HTTP connections (their
// goroutines are not leaks) and checks that no process of ours survives.
type sweepingM struct{ m *testing.M }

func (s sweepingM) Run() int {
	code := s.m.Run()
	httpClient.CloseIdleConnections()
	http.DefaultClient.CloseIdleConnections()
	pgtest.Stop()
	if left := leftoverProcs(); len(left) > 0 {
		fmt.Fprintf(os.Stderr, "e2e: processes left behind by the tests (killed now): %v\n", left)
		for _, p := range left {
			_ = syscall.Kill(p.pid, syscall.SIGKILL)
		}
		if code == 0 {
			code = 1
		}
	}
	return code
}

// proc is one process found in /proc.
type proc struct {
	pid, ppid int
	uid       uint64 // real uid
	cmd, cwd  string
}

func (p proc) String() string { return fmt.Sprintf("%d(%s cwd=%s)", p.pid, p.cmd, p.cwd) }

// procs lists the live (non-zombie) processes of the machine.
func procs() []proc {
	all, err := procfs.AllProcs()
	if err != nil {
		return nil
	}
	var out []proc
	for _, p := range all {
		st, err := p.Stat()
		if err != nil || zombie(st) {
			continue // gone meanwhile, or exited
		}
		cwd, _ := p.Cwd()
		args, _ := p.CmdLine()
		var uid uint64
		if ps, err := p.NewStatus(); err == nil {
			uid = ps.UIDs[0]
		}
		out = append(out, proc{pid: p.PID, ppid: st.PPID, cwd: cwd, uid: uid,
			cmd: strings.TrimSpace(strings.Join(args, " "))})
	}
	return out
}

// alive reports whether pid is a live (non-zombie) process.
func alive(pid int) bool {
	p, err := procfs.NewProc(pid)
	if err != nil {
		return false
	}
	st, err := p.Stat()
	return err == nil && !zombie(st)
}

// zombie reports whether st is a process that has exited and is not
// reaped yet (state Z, or X while it goes).
func zombie(st procfs.ProcStat) bool { return st.State == "Z" || st.State == "X" }

// procsOf lists the processes whose real uid is in [first, last]: a
// container's, whose working directory is its own /workspace.
func procsOf(first, last uint64) []proc {
	var out []proc
	for _, p := range procs() {
		if p.uid >= first && p.uid <= last {
			out = append(out, p)
		}
	}
	return out
}

// procsIn lists the processes whose working directory is under dir: a
// gateway started on a data dir there (it runs in its data dir), and every
// sandbox workload (it runs in its sandbox root), even one orphaned by its
// gateway's death.
func procsIn(dir string) []proc {
	var out []proc
	for _, p := range procs() {
		if p.cwd == dir || strings.HasPrefix(p.cwd, dir+"/") {
			out = append(out, p)
		}
	}
	return out
}

func leftoverProcs() []proc {
	var out []proc
	for _, p := range procs() {
		if strings.HasPrefix(p.cmd, gatewayBin) || strings.HasPrefix(p.cwd, tmpRoot+"/") || p.uid >= harnessBlocks {
			out = append(out, p)
		}
	}
	return out
}

// childrenOf lists the live children of pid.
func childrenOf(pid int) []proc {
	var out []proc
	for _, p := range procs() {
		if p.ppid == pid {
			out = append(out, p)
		}
	}
	return out
}
