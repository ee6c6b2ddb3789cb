package targets

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	if os.Getenv(helperEnv) != "" {
		runHelper() // a child gateway for TestParentDeathKillsWorkload
		return
	}
	goleak.VerifyTestMain(&childCheck{m})
}

// childCheck runs the tests, then fails the run if any child process of
// the test binary is left (a workload that was not stopped and reaped).
type childCheck struct{ m *testing.M }

func (c *childCheck) Run() int {
	code := c.m.Run()
	if kids := children(); len(kids) > 0 {
		fmt.Fprintf(os.Stderr, "FAIL: child processes left behind: %v\n", kids)
		if code == 0 {
			code = 1
		}
	}
	return code
}

// children lists the test process's live children (zombies included).
func children() []string {
	files, _ := filepath.Glob("/proc/self/task/*/children")
	var kids []string
	for _, f := range files {
		b, _ := os.ReadFile(f)
		kids = append(kids, strings.Fields(string(b))...)
	}
	return kids
}
