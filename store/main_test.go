package store_test

import (
	"testing"

	"go.uber.org/goleak"
)

// The writer goroutine must be gone once Close returns.
func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }
