package targets

import (
	"bufio"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"
)

// TestKillOrphans: the workload processes of a gateway that died are
// killed, although that gateway is still a zombie with its pid and start
// time (a restart within that window used to spare them all), and
// whichever mark a process dropped: a child that ran `cd /` (the sweep
// used to look only under the sandboxes directory), one without the
// environment mark (found by its session), one that left the session
// with setsid (found by the mark). A live gateway's workload, a process
// of no recorded session, and the records of another boot are left alone
// (the last are removed).
func TestKillOrphans(t *testing.T) {
	t.Parallel()
	dataDir := t.TempDir()
	spawn := func(stdout io.Writer, env []string, argv ...string) *exec.Cmd {
		t.Helper()
		cmd := exec.Command(argv[0], argv[1:]...)
		cmd.Env = append([]string{"PATH=" + defaultPath}, env...)
		cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
		cmd.Dir, cmd.Stdout = t.TempDir(), stdout
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
		return cmd
	}
	record := func(gateway, leader int) {
		t.Helper()
		dir := filepath.Join(dataDir, runsDir, bootID, strconv.Itoa(gateway)+"-"+startTime(gateway))
		if err := os.MkdirAll(dir, 0o700); err != nil {
			t.Fatal(err)
		}
		name := strconv.Itoa(leader) + "-" + startTime(leader) + "-" + strconv.Itoa(os.Getuid())
		if err := os.WriteFile(filepath.Join(dir, name), nil, 0o600); err != nil {
			t.Fatal(err)
		}
	}

	// The dead gateway: SIGKILLed, not reaped, so a zombie.
	gw := spawn(nil, nil, "sleep", "60")
	mark := gatewayEnv + "=" + strconv.Itoa(gw.Process.Pid) + ":" + startTime(gw.Process.Pid)
	if err := gw.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	if !exitsWithin(gw.Process.Pid, 10*time.Second) {
		t.Fatal("the stand-in gateway did not die")
	}
	// Its workload, leader of its session, left three children.
	pr, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	leader := spawn(pw, []string{mark}, "/bin/sh", "-c",
		`(cd / && exec sleep 60) >/dev/null & echo $!; `+
			`env -u `+gatewayEnv+` sleep 60 >/dev/null & echo $!; `+
			`setsid sleep 60 >/dev/null & echo $!; exec sleep 60 >/dev/null`)
	pw.Close()
	record(gw.Process.Pid, leader.Process.Pid)
	var kids []int
	sc := bufio.NewScanner(pr)
	for len(kids) < 3 && sc.Scan() {
		pid, err := strconv.Atoi(sc.Text())
		if err != nil {
			t.Fatalf("workload printed %q", sc.Text())
		}
		kids = append(kids, pid)
	}
	pr.Close()
	if len(kids) != 3 {
		t.Fatalf("children of the workload: %v", kids)
	}
	t.Cleanup(func() {
		for _, pid := range kids {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	})
	// Its leader died with the gateway (Pdeathsig).
	if err := leader.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	_ = leader.Wait()

	// A live gateway's workload (this process's own run) and a process no
	// gateway recorded.
	mine := spawn(nil, []string{gatewayEnv + "=" + selfMark}, "sleep", "60")
	record(os.Getpid(), mine.Process.Pid)
	stranger := spawn(nil, nil, "sleep", "60")
	otherBoot := filepath.Join(dataDir, runsDir, "another-boot", "1-1")
	if err := os.MkdirAll(otherBoot, 0o700); err != nil {
		t.Fatal(err)
	}

	if n := killOrphans(dataDir); n < 3 {
		t.Errorf("killed %d processes, want at least the 3 orphans", n)
	}
	for i, pid := range kids {
		if !exitsWithin(pid, 2*time.Second) {
			t.Errorf("orphan %d (%d) survived the sweep", i, pid)
		}
	}
	for _, c := range []*exec.Cmd{mine, stranger} {
		if !alive(c.Process.Pid) {
			t.Errorf("process %d was killed", c.Process.Pid)
		}
	}
	if _, err := os.Stat(filepath.Join(dataDir, runsDir, bootID, strconv.Itoa(gw.Process.Pid)+"-"+startTime(gw.Process.Pid))); err == nil {
		t.Error("the dead gateway's record is still there")
	}
	if _, err := os.Stat(filepath.Join(dataDir, runsDir, bootID, strconv.Itoa(os.Getpid())+"-"+startTime(os.Getpid()))); err != nil {
		t.Errorf("the live gateway's record: %v", err)
	}
	if _, err := os.Stat(otherBoot); err == nil {
		t.Error("another boot's records were kept")
	}
}
