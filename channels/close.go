package channels

import (
	"errors"
	"fmt"
	"unicode/utf8"

	"github.com/coder/websocket"
)

// Close codes of SPEC §5 that the gateway sends.
const (
	// StatusExpired: the session reached its expiresAt.
	StatusExpired websocket.StatusCode = 4408
	// StatusClosed: the session was closed through the API.
	StatusClosed websocket.StatusCode = 4410
	// StatusSlowConsumer: a stdio client could not keep up.
	StatusSlowConsumer websocket.StatusCode = 4429
	// StatusTargetUnavailable: the target (workload, browser) died.
	StatusTargetUnavailable websocket.StatusCode = 4502
)

// CloseError says how a connection must be closed: the code and reason of
// the close frame. Adapters return it; the proxy sends it. It is the
// only way a connection ends, so no socket is ever dropped silently.
type CloseError struct {
	Code   websocket.StatusCode
	Reason string
}

// Error implements error.
func (e *CloseError) Error() string { return fmt.Sprintf("close %d: %s", int(e.Code), e.Reason) }

// maxCloseReason is the most a close frame's reason may hold: 125 bytes
// of payload less the 2-byte code.
const maxCloseReason = 123

// Close returns a *CloseError. Reason is cut to the 123 bytes a close
// frame can carry, at a character boundary.
func Close(code websocket.StatusCode, reason string) *CloseError {
	if len(reason) > maxCloseReason {
		// Cut at a character boundary: a close frame's reason is UTF-8
		// (RFC 6455 §5.5.1), and a client may fail the frame otherwise.
		cut := maxCloseReason
		for cut > 0 && !utf8.RuneStart(reason[cut]) {
			cut--
		}
		reason = reason[:cut]
	}
	return &CloseError{Code: code, Reason: reason}
}

// AsClose returns the *CloseError in err's chain, if any.
func AsClose(err error) (*CloseError, bool) {
	var ce *CloseError
	ok := errors.As(err, &ce)
	return ce, ok
}
