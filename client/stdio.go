package client

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"

	"github.com/coder/websocket"
)

// StdioProtocol is the subprotocol of the stdio channel (SPEC §5.1).
const StdioProtocol = "nimbus.stdio.v1"

// Stream bytes of the stdio channel.
const (
	StreamStdin   byte = 0
	StreamStdout  byte = 1
	StreamStderr  byte = 2
	StreamControl byte = 3
)

// stdinChunk bounds one stdin message (the server accepts up to 1 MiB).
const stdinChunk = 32 << 10

// Stdio is an attached stdio connection. Write, Resize, Signal, CloseStdin
// and Close may be called concurrently with each other and with Next;
// Next must not be called concurrently with itself.
type Stdio struct {
	// Static after DialStdio.
	conn     *websocket.Conn
	tty      bool
	replayed int

	wmu sync.Mutex // serialises the use of wbuf
	// Guarded by wmu.
	wbuf []byte

	// Owned by Next.
	rbuf []byte

	mu sync.Mutex
	// Guarded by mu.
	exit        *exitInfo
	done        bool // the connection ended; closeCode and closeReason are valid
	closeCode   websocket.StatusCode
	closeReason string
}

type exitInfo struct {
	Code   int     `json:"code"`
	Signal *string `json:"signal"`
	Reason string  `json:"reason"`
}

// DialStdio attaches to the stdio channel at connectURL (a session's
// status.connect["stdio"]) and reads the server's hello. A refusal before
// the upgrade comes back as *Error with the problem+json fields.
func DialStdio(ctx context.Context, connectURL string) (*Stdio, error) {
	conn, resp, err := websocket.Dial(ctx, connectURL, &websocket.DialOptions{Subprotocols: []string{StdioProtocol}})
	if err != nil {
		if resp != nil && resp.StatusCode != http.StatusSwitchingProtocols {
			return nil, problemOf(resp)
		}
		return nil, redactURLError(err)
	}
	if conn.Subprotocol() != StdioProtocol {
		conn.Close(websocket.StatusProtocolError, "expected subprotocol "+StdioProtocol)
		return nil, fmt.Errorf("stdio: server chose subprotocol %q", conn.Subprotocol())
	}
	conn.SetReadLimit(-1) // the server bounds its chunks; output is streamed to the caller
	s := &Stdio{conn: conn}
	typ, b, err := conn.Read(ctx)
	if err == nil && (typ != websocket.MessageBinary || len(b) == 0 || b[0] != StreamControl) {
		err = errors.New("stdio: the server did not start with hello")
	}
	var hello struct {
		Type     string `json:"type"`
		TTY      bool   `json:"tty"`
		Replayed int    `json:"replayed"`
	}
	if err == nil {
		if err = json.Unmarshal(b[1:], &hello); err == nil && hello.Type != "hello" {
			err = fmt.Errorf("stdio: first control message is %q, not hello", hello.Type)
		}
	}
	if err != nil {
		conn.CloseNow()
		return nil, err
	}
	s.tty, s.replayed = hello.TTY, hello.Replayed
	return s, nil
}

// problemOf decodes the problem+json answer of a refused upgrade
// (coder/websocket keeps the first KiB of the body).
func problemOf(resp *http.Response) *Error {
	e := &Error{Status: resp.StatusCode, RetryAfter: resp.Header.Get("Retry-After")}
	var b []byte
	if resp.Body != nil {
		b, _ = io.ReadAll(resp.Body)
	}
	if json.Unmarshal(b, e) != nil || e.Code == "" {
		e.Code, e.Detail = "unknown", strings.TrimSpace(string(b))
	}
	if e.RequestID == "" {
		e.RequestID = resp.Header.Get("X-Request-Id")
	}
	return e
}

// Hello reports what the server's hello said: whether the workload runs
// on a terminal, and how many bytes of recent output are replayed first.
func (s *Stdio) Hello() (tty bool, replayed int) { return s.tty, s.replayed }

// Write sends p to the workload's stdin, in messages of at most 32 KiB.
func (s *Stdio) Write(p []byte) (int, error) {
	n := 0
	for len(p) > 0 {
		k := min(len(p), stdinChunk)
		if err := s.send(StreamStdin, p[:k]); err != nil {
			return n, err
		}
		n += k
		p = p[k:]
	}
	return n, nil
}

// Resize sets the terminal size (ignored by the server for a workload on
// pipes).
func (s *Stdio) Resize(cols, rows int) error {
	return s.control(map[string]any{"type": "resize", "cols": cols, "rows": rows})
}

// Signal sends a signal ("SIGINT" or "INT") to the workload.
func (s *Stdio) Signal(name string) error {
	return s.control(map[string]any{"type": "signal", "signal": name})
}

// CloseStdin ends the workload's input (on a terminal: the EOF character).
func (s *Stdio) CloseStdin() error {
	return s.control(map[string]any{"type": "eof"})
}

func (s *Stdio) control(v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return s.send(StreamControl, b)
}

func (s *Stdio) send(stream byte, p []byte) error {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	s.wbuf = append(append(s.wbuf[:0], stream), p...)
	return s.conn.Write(context.Background(), websocket.MessageBinary, s.wbuf)
}

// Next returns the next piece of output: its stream (StreamStdout or
// StreamStderr) and data, valid until the next call. After the workload's
// exit message and the server's normal close it returns io.EOF (Exit is
// then valid). If the connection ends otherwise it returns an error;
// CloseStatus then says how (4408 expired, 4410 closed, 4429 slow
// consumer, 4502 target unavailable…).
func (s *Stdio) Next(ctx context.Context) (stream byte, data []byte, err error) {
	for {
		typ, r, err := s.conn.Reader(ctx)
		if err != nil {
			return 0, nil, s.ended(err)
		}
		b := bytes.NewBuffer(s.rbuf[:0])
		_, err = b.ReadFrom(r)
		s.rbuf = b.Bytes()
		if err != nil {
			return 0, nil, s.ended(err)
		}
		if typ != websocket.MessageBinary || len(s.rbuf) == 0 {
			return 0, nil, errors.New("stdio: unexpected message from the server")
		}
		switch s.rbuf[0] {
		case StreamStdout, StreamStderr:
			return s.rbuf[0], s.rbuf[1:], nil
		case StreamControl:
			var m struct {
				Type string `json:"type"`
				exitInfo
			}
			if err := json.Unmarshal(s.rbuf[1:], &m); err != nil {
				return 0, nil, fmt.Errorf("stdio: bad control message: %w", err)
			}
			if m.Type == "exit" {
				s.mu.Lock()
				s.exit = &m.exitInfo
				s.mu.Unlock()
			}
			// Other control messages are for future versions: skipped.
		default:
			// Unknown streams are for future versions: skipped.
		}
	}
}

// ended records how the connection ended and returns Next's error.
func (s *Stdio) ended(err error) error {
	code := websocket.CloseStatus(err)
	var ce websocket.CloseError
	reason := ""
	if errors.As(err, &ce) {
		reason = ce.Reason
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.done {
		s.done, s.closeCode, s.closeReason = true, code, reason
	}
	if s.exit != nil && s.closeCode == websocket.StatusNormalClosure {
		return io.EOF
	}
	if s.closeCode != -1 {
		return &CloseError{Code: int(s.closeCode), Reason: s.closeReason}
	}
	return err
}

// CloseError is how the server ended a stdio connection other than by a
// workload exit.
type CloseError struct {
	Code   int
	Reason string
}

// Error implements error.
func (e *CloseError) Error() string { return fmt.Sprintf("connection closed: %d %s", e.Code, e.Reason) }

// Exit is how the workload ended, valid once Next returned io.EOF: its exit
// code, and the signal that killed it ("" when it exited by itself).
func (s *Stdio) Exit() (code int, signal string, ok bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.exit == nil {
		return 0, "", false
	}
	if s.exit.Signal != nil {
		signal = *s.exit.Signal
	}
	return s.exit.Code, signal, true
}

// ExitReason is how the workload ended, valid once Next returned io.EOF:
// "exited", "signaled", or "oom" when the kernel killed it for going over
// its memory limit (a runc sandbox); "" before.
func (s *Stdio) ExitReason() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.exit == nil {
		return ""
	}
	return s.exit.Reason
}

// CloseStatus is the close code and reason the server sent, once Next
// returned an error; -1 if the connection ended without a close frame, or
// has not ended.
func (s *Stdio) CloseStatus() (websocket.StatusCode, string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.done {
		return -1, ""
	}
	return s.closeCode, s.closeReason
}

// Close leaves with a normal close; a connection the server already
// closed is not an error.
func (s *Stdio) Close() error {
	err := s.conn.Close(websocket.StatusNormalClosure, "")
	if errors.Is(err, net.ErrClosed) {
		return nil
	}
	return err
}
