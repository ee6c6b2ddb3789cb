package channels_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/nimbus/gateway/channels"
)

// wsPipe is a replica relay stand-in over real sockets: a client dials
// the pipe server, which dials the far server and runs Pipe between the
// two with a WebSocketFar. far serves the far side's connection.
type wsPipe struct {
	url    string
	result chan error
	cancel chan context.CancelCauseFunc
}

func newWSPipe(t testing.TB, far func(c *websocket.Conn)) *wsPipe {
	t.Helper()
	var wg sync.WaitGroup
	farSrv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		wg.Add(1)
		defer wg.Done()
		c, err := websocket.Accept(w, r, nil)
		if err != nil {
			return
		}
		defer c.CloseNow()
		c.SetReadLimit(-1)
		far(c)
	}))
	p := &wsPipe{result: make(chan error, 1), cancel: make(chan context.CancelCauseFunc, 1)}
	pipeSrv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		wg.Add(1)
		defer wg.Done()
		up, _, err := websocket.Dial(r.Context(), "ws"+strings.TrimPrefix(farSrv.URL, "http"), nil)
		if err != nil {
			t.Error(err)
			return
		}
		up.SetReadLimit(-1)
		c, err := websocket.Accept(w, r, nil)
		if err != nil {
			_ = up.CloseNow()
			return
		}
		c.SetReadLimit(-1)
		ctx, cancel := context.WithCancelCause(context.Background())
		defer cancel(nil)
		p.cancel <- cancel
		p.result <- channels.Pipe(ctx, c, channels.WebSocketFar(up), channels.PipeOptions{})
	}))
	t.Cleanup(func() { pipeSrv.Close(); farSrv.Close(); wg.Wait() })
	p.url = "ws" + strings.TrimPrefix(pipeSrv.URL, "http")
	return p
}

func (p *wsPipe) dial(t testing.TB) *websocket.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, _, err := websocket.Dial(ctx, p.url, nil)
	if err != nil {
		t.Fatal(err)
	}
	c.SetReadLimit(-1)
	t.Cleanup(func() { _ = c.CloseNow() })
	return c
}

func (p *wsPipe) wait(t testing.TB) error {
	t.Helper()
	select {
	case err := <-p.result:
		return err
	case <-time.After(5 * time.Second):
		t.Fatal("Pipe did not return")
		return nil
	}
}

// echoWS answers every message with itself, streamed through one buffer.
func echoWS(c *websocket.Conn) {
	buf := make([]byte, 32<<10)
	ctx := context.Background()
	for {
		typ, r, err := c.Reader(ctx)
		if err != nil {
			return
		}
		w, err := c.Writer(ctx, typ)
		if err != nil {
			return
		}
		if _, err := io.CopyBuffer(w, r, buf); err != nil {
			return
		}
		if w.Close() != nil {
			return
		}
	}
}

// TestPipeWebSocketMessages: messages keep their type and bytes both ways
// through a WebSocketFar, a large one (many frames) included.
func TestPipeWebSocketMessages(t *testing.T) {
	t.Parallel()
	p := newWSPipe(t, echoWS)
	c := p.dial(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	big := make([]byte, 5<<20)
	_, _ = rand.Read(big)
	for _, m := range []struct {
		typ  websocket.MessageType
		data []byte
	}{
		{websocket.MessageText, []byte(`{"id":1}`)},
		{websocket.MessageBinary, []byte{0, 1, 2, 255}},
		{websocket.MessageText, []byte{}},
		{websocket.MessageBinary, big},
	} {
		if err := c.Write(ctx, m.typ, m.data); err != nil {
			t.Fatal(err)
		}
		typ, got, err := c.Read(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if typ != m.typ || !bytes.Equal(got, m.data) {
			t.Fatalf("sent %v %d bytes, got %v %d bytes", m.typ, len(m.data), typ, len(got))
		}
	}
	if err := c.Close(websocket.StatusNormalClosure, ""); err != nil {
		t.Fatal(err)
	}
	if err := p.wait(t); err != nil {
		t.Fatalf("client closed: Pipe = %v, want nil", err)
	}
}

// TestPipeWebSocketEnds: the end rule with a WebSocket far side.
func TestPipeWebSocketEnds(t *testing.T) {
	t.Parallel()
	t.Run("far side closes", func(t *testing.T) {
		t.Parallel()
		// The far side's code and reason reach the client as they were.
		p := newWSPipe(t, func(c *websocket.Conn) { _ = c.Close(4410, "session closed: done") })
		c := p.dial(t)
		_, _, err := c.Read(context.Background())
		var ce websocket.CloseError
		if !errors.As(err, &ce) || ce.Code != 4410 || ce.Reason != "session closed: done" {
			t.Fatalf("client read: %v, want 4410 session closed: done", err)
		}
		if ce, ok := channels.AsClose(p.wait(t)); !ok || ce.Code != 4410 {
			t.Fatalf("Pipe = %v", ce)
		}
	})
	t.Run("far side vanishes", func(t *testing.T) {
		t.Parallel()
		p := newWSPipe(t, func(c *websocket.Conn) { _ = c.CloseNow() })
		c := p.dial(t)
		_, _, err := c.Read(context.Background())
		if websocket.CloseStatus(err) != channels.StatusTargetUnavailable {
			t.Fatalf("client read: %v, want 4502", err)
		}
		if ce, ok := channels.AsClose(p.wait(t)); !ok || ce.Code != channels.StatusTargetUnavailable {
			t.Fatalf("Pipe = %v", ce)
		}
	})
	t.Run("context ends", func(t *testing.T) {
		t.Parallel()
		p := newWSPipe(t, echoWS)
		c := p.dial(t)
		(<-p.cancel)(channels.Close(channels.StatusExpired, "session expired"))
		_, _, err := c.Read(context.Background())
		if websocket.CloseStatus(err) != channels.StatusExpired {
			t.Fatalf("client read: %v, want 4408", err)
		}
		if ce, ok := channels.AsClose(p.wait(t)); !ok || ce.Code != channels.StatusExpired {
			t.Fatalf("Pipe = %v", ce)
		}
	})
	t.Run("context ends without a close code", func(t *testing.T) {
		t.Parallel()
		p := newWSPipe(t, echoWS)
		c := p.dial(t)
		(<-p.cancel)(nil)
		_, _, err := c.Read(context.Background())
		if websocket.CloseStatus(err) != websocket.StatusGoingAway {
			t.Fatalf("client read: %v, want 1001", err)
		}
		p.wait(t)
	})
	t.Run("client closes", func(t *testing.T) {
		t.Parallel()
		farGone := make(chan error, 1)
		p := newWSPipe(t, func(c *websocket.Conn) { _, _, err := c.Read(context.Background()); farGone <- err })
		c := p.dial(t)
		_ = c.Close(websocket.StatusNormalClosure, "")
		if err := p.wait(t); err != nil {
			t.Fatalf("Pipe = %v, want nil", err)
		}
		select {
		case <-farGone:
		case <-time.After(2 * time.Second):
			t.Fatal("the far connection outlived the client")
		}
	})
}

// TestPipeIgnoredCloseIsCut: a client that never answers the close frame
// is cut about one second after the pipe ended, though the copiers' reads
// have no context to cancel.
func TestPipeIgnoredCloseIsCut(t *testing.T) {
	t.Parallel()
	p := newWSPipe(t, echoWS)
	u, _ := url.Parse(p.url)
	c, err := net.Dial("tcp", u.Host)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	key := make([]byte, 16)
	_, _ = rand.Read(key)
	fmt.Fprintf(c, "GET / HTTP/1.1\r\nHost: %s\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: %s\r\n\r\n",
		u.Host, base64.StdEncoding.EncodeToString(key))
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil || resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("upgrade: %v %v", resp, err)
	}
	cancel := <-p.cancel
	start := time.Now()
	cancel(channels.Close(channels.StatusClosed, "session closed: closed"))
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	got, err := io.ReadAll(br) // the close frame, never answered
	d := time.Since(start)
	if err != nil {
		t.Fatalf("connection was not cut: %v after %v", err, d)
	}
	if !bytes.Contains(got, []byte("session closed: closed")) {
		t.Fatalf("no close frame before the cut: %q", got)
	}
	if d < 900*time.Millisecond || d > 2500*time.Millisecond {
		t.Fatalf("cut after %v, want about 1 s", d)
	}
	p.wait(t)
}

// roundTripper sends msg through the pipe and reads it back, over and
// over; the client writes from a goroutine of its own, as a relayed
// message streams back while it is still being sent.
func roundTripper(tb testing.TB, c *websocket.Conn, msg []byte) (roundTrip func(), stop func()) {
	ctx := context.Background()
	got := make([]byte, len(msg)+1)
	send, sent := make(chan struct{}), make(chan error)
	go func() {
		for range send {
			sent <- c.Write(ctx, websocket.MessageBinary, msg)
		}
		close(sent)
	}()
	roundTrip = func() {
		send <- struct{}{}
		_, r, err := c.Reader(ctx)
		if err != nil {
			tb.Fatal(err)
		}
		n, err := io.ReadFull(r, got)
		if err != io.ErrUnexpectedEOF || n != len(msg) {
			tb.Fatalf("read %d bytes: %v", n, err)
		}
		if err := <-sent; err != nil {
			tb.Fatal(err)
		}
	}
	return roundTrip, func() { close(send); <-sent }
}

// TestPipeWebSocketAllocs: a message relayed both ways through a
// WebSocketFar allocates nothing — client, pipe and far side together.
// (The relay it replaces allocated 32 KiB a message each way: io.Copy.)
func TestPipeWebSocketAllocs(t *testing.T) {
	if raceEnabled {
		t.Skip("under the race detector sync.Pool drops a quarter of what it is given back")
	}
	p := newWSPipe(t, echoWS)
	roundTrip, stop := roundTripper(t, p.dial(t), bytes.Repeat([]byte("x"), 100<<10)) // four frames each way
	defer stop()
	roundTrip() // warm the pools
	if n := testing.AllocsPerRun(200, roundTrip); n >= 1 {
		t.Fatalf("%.1f allocations a relayed message, want none", n)
	}
}

// BenchmarkPipeWebSocket relays 100 KiB messages both ways through a
// WebSocketFar (run with -benchmem).
func BenchmarkPipeWebSocket(b *testing.B) {
	p := newWSPipe(b, echoWS)
	const size = 100 << 10
	roundTrip, stop := roundTripper(b, p.dial(b), bytes.Repeat([]byte("x"), size))
	defer stop()
	b.SetBytes(2 * size)
	b.ReportAllocs()
	for b.Loop() {
		roundTrip()
	}
}
