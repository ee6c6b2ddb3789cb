package main

import (
	"os"
	"os/signal"
	"runtime"
	"runtime/debug"
	"syscall"
	"testing"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	if os.Getenv(childEnv) == "1" {
		// A child gateway for a benchmark: serve until killed. SIGUSR1
		// runs a garbage collection and returns freed memory to the OS —
		// what the runtime's periodic GC (every two minutes) does to an
		// idle gateway — so a benchmark can read steady-state RSS.
		usr1 := make(chan os.Signal, 1)
		signal.Notify(usr1, syscall.SIGUSR1)
		go func() {
			for range usr1 {
				runtime.GC()
				debug.FreeOSMemory()
			}
		}()
		os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
	}
	goleak.VerifyTestMain(m)
}
