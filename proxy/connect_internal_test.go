package proxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"syscall"
	"testing"

	"github.com/coder/websocket"
)

// TestIsPeerGone: the client's departure is recognised by the error's
// chain, however coder/websocket and net wrap it; other failures are not.
func TestIsPeerGone(t *testing.T) {
	t.Parallel()
	opErr := func(op string, errno syscall.Errno) error {
		return &net.OpError{Op: op, Net: "tcp", Err: os.NewSyscallError(op, errno)}
	}
	for _, tc := range []struct {
		name string
		err  error
		want bool
	}{
		{"close frame", fmt.Errorf("failed to get reader: %w", websocket.CloseError{Code: websocket.StatusNormalClosure}), true},
		{"cancelled", fmt.Errorf("failed to read: %w", context.Canceled), true},
		{"EOF", fmt.Errorf("failed to get reader: failed to read frame header: %w", io.EOF), true},
		{"unexpected EOF", fmt.Errorf("failed to read frame payload: %w", io.ErrUnexpectedEOF), true},
		{"connection reset", fmt.Errorf("failed to read: %w", opErr("read", syscall.ECONNRESET)), true},
		{"broken pipe", fmt.Errorf("failed to write frame: %w", opErr("write", syscall.EPIPE)), true},
		{"internal failure", errors.New("boom"), false},
		{"deadline", fmt.Errorf("failed to write: %w", context.DeadlineExceeded), false},
		{"closed locally", fmt.Errorf("failed to read: %w", net.ErrClosed), false},
	} {
		if got := isPeerGone(tc.err); got != tc.want {
			t.Errorf("%s: isPeerGone(%v) = %v, want %v", tc.name, tc.err, got, tc.want)
		}
	}
}
