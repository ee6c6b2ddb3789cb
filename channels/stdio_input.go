package channels

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"strings"
	"syscall"

	"github.com/coder/websocket"
)

// input is the socket's reader: stdin to the workload, control messages
// applied. It returns the close for a misbehaving client, or errClientGone
// when the client closed or vanished, or once its reads were cut.
func (s *stdio) input(ctx context.Context) error {
	var buf []byte
	for {
		typ, r, err := s.conn.Reader(ctx)
		if err != nil {
			return readErr(err)
		}
		if typ != websocket.MessageBinary {
			return Close(websocket.StatusUnsupportedData, "stdio takes binary messages")
		}
		buf, err = readMessage(r, buf[:0])
		if err != nil {
			return readErr(err)
		}
		if len(buf) == 0 {
			return Close(websocket.StatusPolicyViolation, "empty message")
		}
		if s.stopped.Load() {
			return errClientGone // the connection is ending: deliver nothing more
		}
		switch stream, p := buf[0], buf[1:]; stream {
		case streamStdin:
			if len(p) == 0 {
				break
			}
			// A failed write (stdin closed with eof, the process exited)
			// is not the client's fault; the exit message will follow.
			n, _ := s.w.Write(p)
			if s.opt.OnBytes != nil && n > 0 {
				s.opt.OnBytes("in", n)
			}
		case streamControl:
			if err := s.control(p); err != nil {
				return err
			}
		default:
			return Close(websocket.StatusPolicyViolation, "unknown stream byte")
		}
		if cap(buf) > 64<<10 {
			buf = nil // do not keep a 1 MiB buffer for a rare paste
		}
	}
}

// readMessage appends the rest of the message to buf.
func readMessage(r io.Reader, buf []byte) ([]byte, error) {
	b := bytes.NewBuffer(buf)
	_, err := b.ReadFrom(r)
	return b.Bytes(), err
}

// readErr maps a read failure: a message over the read limit (the library
// has already closed with 1009); anything else means the client closed,
// vanished, or its reads were cut.
func readErr(err error) error {
	if errors.Is(err, websocket.ErrMessageTooBig) {
		return Close(websocket.StatusMessageTooBig, "message too big")
	}
	return errClientGone
}

// clientControl is a control message from the client (SPEC §5.1).
type clientControl struct {
	Type   string `json:"type"`
	Cols   int    `json:"cols"`
	Rows   int    `json:"rows"`
	Signal string `json:"signal"`
}

// control applies one control message. A malformed one closes the
// connection with 1008; the workload is never harmed by it.
func (s *stdio) control(p []byte) error {
	var m clientControl
	if err := json.Unmarshal(p, &m); err != nil {
		return Close(websocket.StatusPolicyViolation, "malformed control message")
	}
	switch m.Type {
	case "resize":
		if m.Cols < 1 || m.Rows < 1 || m.Cols > maxTermSize || m.Rows > maxTermSize {
			return Close(websocket.StatusPolicyViolation, "bad resize: cols and rows must be 1..10000")
		}
		// On pipes there is no terminal to resize: ignored, because
		// terminal front ends (xterm.js fit addon) send resize regardless.
		if s.w.TTY() {
			_ = s.w.Resize(uint16(m.Cols), uint16(m.Rows))
		}
	case "signal":
		sig, ok := signalByName(m.Signal)
		if !ok {
			return Close(websocket.StatusPolicyViolation, "unknown signal")
		}
		_ = s.w.Signal(sig) // os.ErrProcessDone once exited: the exit message follows
	case "eof":
		_ = s.w.CloseStdin()
	default:
		return Close(websocket.StatusPolicyViolation, "unknown control type")
	}
	return nil
}

// signals a client may send: the ones a terminal user or a supervisor
// sends. Others (SIGSEGV, SIGPIPE…) would only fake a crash.
var signals = map[string]syscall.Signal{
	"SIGINT":   syscall.SIGINT,
	"SIGTERM":  syscall.SIGTERM,
	"SIGHUP":   syscall.SIGHUP,
	"SIGQUIT":  syscall.SIGQUIT,
	"SIGKILL":  syscall.SIGKILL,
	"SIGUSR1":  syscall.SIGUSR1,
	"SIGUSR2":  syscall.SIGUSR2,
	"SIGWINCH": syscall.SIGWINCH,
	"SIGCONT":  syscall.SIGCONT,
	"SIGSTOP":  syscall.SIGSTOP,
	"SIGTSTP":  syscall.SIGTSTP,
}

// signalByName accepts "SIGINT" or "INT" (any case).
func signalByName(name string) (syscall.Signal, bool) {
	name = strings.ToUpper(name)
	if !strings.HasPrefix(name, "SIG") {
		name = "SIG" + name
	}
	sig, ok := signals[name]
	return sig, ok
}
