package channels_test

import (
	"testing"

	"go.uber.org/goleak"
)

// Every ServeStdio goroutine (output loop, reader, timers) must be gone
// once the tests' connections are closed.
func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }
