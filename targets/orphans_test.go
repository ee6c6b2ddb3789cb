package targets

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"
)

// TestKillOrphans: a process under the sandboxes root whose gateway mark
// names a dead gateway is killed; one of a live gateway (this one) and one
// outside the root are not.
func TestKillOrphans(t *testing.T) {
	root := t.TempDir()
	dir := filepath.Join(root, "demo", "sbx")
	if err := os.MkdirAll(dir, 0o750); err != nil {
		t.Fatal(err)
	}
	spawn := func(cwd, mark string) *exec.Cmd {
		cmd := exec.Command("sleep", "60")
		cmd.Dir = cwd
		cmd.Env = []string{"PATH=" + defaultPath, gatewayEnv + "=" + mark}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
		return cmd
	}
	orphan := spawn(dir, "999999999:12345")          // a gateway pid that cannot exist
	reused := spawn(dir, "1:0")                      // pid 1 is alive, but started at another time
	mine := spawn(dir, selfMark)                     // this (live) gateway's
	outside := spawn(t.TempDir(), "999999999:12345") // not under the root
	// Until a child has exec'd, /proc shows the test's environment, not
	// the child's mark.
	for _, c := range []*exec.Cmd{orphan, reused, mine, outside} {
		deadline := time.Now().Add(5 * time.Second)
		for {
			env, _ := os.ReadFile("/proc/" + strconv.Itoa(c.Process.Pid) + "/environ")
			if bytes.Contains(env, []byte(gatewayEnv+"=")) {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("process %d has not exec'd after 5 s", c.Process.Pid)
			}
			time.Sleep(time.Millisecond)
		}
	}
	if n := killOrphans(root); n != 2 {
		t.Fatalf("killed %d processes, want 2", n)
	}
	for _, c := range []*exec.Cmd{orphan, reused} {
		if err := c.Wait(); err == nil {
			t.Errorf("orphan %d survived", c.Process.Pid)
		}
	}
	for _, c := range []*exec.Cmd{mine, outside} {
		if err := c.Process.Signal(syscall.Signal(0)); err != nil {
			t.Errorf("process %d was killed: %v", c.Process.Pid, err)
		}
	}
}
