// Package testruntime lets the in-process test harnesses of other
// packages (proxy, channels) run their sandboxes under either runtime, so
// every stdio and files test runs against child processes and against
// runc containers: NIMBUS_TEST_SANDBOX_RUNTIME=runc or process (default:
// process). Only tests import it.
package testruntime

import (
	"context"
	"os"
	"os/exec"
	"sync/atomic"
	"testing"

	"github.com/nimbus/gateway/targets"
)

// Env names the variable that picks the runtime.
const Env = "NIMBUS_TEST_SANDBOX_RUNTIME"

var harnesses atomic.Uint32

// Apply sets o up for the runtime Env asks for. Under runc each call gets
// a state directory and a block of 8 sandbox user ids of its own (several
// test binaries run at once, and a catalog kills whatever runs under its
// block when it starts), and the test fails if a container or a process
// of the block outlives it.
func Apply(t testing.TB, o *targets.Options) {
	t.Helper()
	if os.Getenv(Env) != "runc" {
		return
	}
	if _, err := exec.LookPath("runc"); err != nil || os.Geteuid() != 0 {
		t.Fatalf("%s=runc needs root and runc: euid %d, %v", Env, os.Geteuid(), err)
	}
	first := uint32(3_000_000 + (os.Getpid()%20000)*1000 + int(harnesses.Add(1)%125)*8)
	block := targets.UIDRange{First: first, Last: first + 7}
	rt, err := targets.NewRunc(targets.RuncConfig{StateDir: t.TempDir()}, o.Logger)
	if err != nil {
		t.Fatal(err)
	}
	o.UIDs, o.RunAs, o.Runc = &block, nil, rt
	t.Cleanup(func() {
		if n, err := rt.Sweep(context.Background()); err != nil || n > 0 {
			t.Errorf("%d containers outlived the test (%v)", n, err)
		}
	})
}
