package channels_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/nimbus/gateway/channels"
	"github.com/nimbus/gateway/problem"
)

// fakeBrowser is a DevTools WebSocket endpoint on a real socket: it
// records the handshake and hands each connection to handle.
type fakeBrowser struct {
	url    string
	mu     sync.Mutex
	host   string // guarded by mu
	origin string // guarded by mu
	wg     sync.WaitGroup
}

func newFakeBrowser(t testing.TB, handle func(ctx context.Context, c *websocket.Conn)) *fakeBrowser {
	t.Helper()
	f := &fakeBrowser{}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// Add before the upgrade: srv.Close waits for handlers that have
		// not hijacked their connection yet, so this Add happens before
		// the cleanup's Wait (after the upgrade it would race with it).
		f.wg.Add(1)
		defer f.wg.Done()
		f.mu.Lock()
		f.host, f.origin = r.Host, r.Header.Get("Origin")
		f.mu.Unlock()
		c, err := websocket.Accept(w, r, nil)
		if err != nil {
			return
		}
		c.SetReadLimit(channels.MaxCDPMessage)
		handle(r.Context(), c)
		_ = c.CloseNow()
	}))
	t.Cleanup(func() { srv.Close(); f.wg.Wait() })
	f.url = "ws" + strings.TrimPrefix(srv.URL, "http") + "/devtools/browser/x"
	return f
}

// echo answers every message with itself, keeping its type.
func echo(ctx context.Context, c *websocket.Conn) {
	for {
		typ, b, err := c.Read(ctx)
		if err != nil {
			return
		}
		if err := c.Write(ctx, typ, b); err != nil {
			return
		}
	}
}

// relay is a gateway stand-in: it accepts a client, dials upstream with
// DialCDP and runs RelayCDP under ctx, reporting its result.
type relay struct {
	url    string
	result chan error
	cancel chan context.CancelCauseFunc
	bytes  map[string]int // guarded by mu
	mu     sync.Mutex
}

func newRelay(t testing.TB, upstream string) *relay {
	t.Helper()
	rl := &relay{result: make(chan error, 1), cancel: make(chan context.CancelCauseFunc, 1), bytes: map[string]int{}}
	var wg sync.WaitGroup
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		wg.Add(1)
		defer wg.Done()
		ctx, cancel := context.WithCancelCause(context.Background())
		defer cancel(nil)
		up, err := channels.DialCDP(ctx, upstream)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadGateway)
			return
		}
		c, err := websocket.Accept(w, r, nil)
		if err != nil {
			_ = up.CloseNow()
			return
		}
		rl.cancel <- cancel
		rl.result <- channels.RelayCDP(ctx, c, up, channels.CDPOptions{OnBytes: func(dir string, n int) {
			rl.mu.Lock()
			rl.bytes[dir] += n
			rl.mu.Unlock()
		}})
	}))
	t.Cleanup(func() { srv.Close(); wg.Wait() })
	rl.url = "ws" + strings.TrimPrefix(srv.URL, "http")
	return rl
}

func dialRelay(t *testing.T, rl *relay) *websocket.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, _, err := websocket.Dial(ctx, rl.url, nil)
	if err != nil {
		t.Fatal(err)
	}
	c.SetReadLimit(channels.MaxCDPMessage)
	t.Cleanup(func() { _ = c.CloseNow() })
	return c
}

func relayResult(t *testing.T, rl *relay) error {
	t.Helper()
	select {
	case err := <-rl.result:
		return err
	case <-time.After(5 * time.Second):
		t.Fatal("RelayCDP did not return")
		return nil
	}
}

// TestCDPRelayMessages: text and binary messages keep their type and
// bytes both ways, large ones included; the upstream handshake carries
// Host: localhost and no Origin.
func TestCDPRelayMessages(t *testing.T) {
	t.Parallel()
	fb := newFakeBrowser(t, echo)
	rl := newRelay(t, fb.url)
	c := dialRelay(t, rl)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()

	big := make([]byte, 20<<20)
	_, _ = rand.Read(big)
	msgs := []struct {
		typ  websocket.MessageType
		data []byte
	}{
		{websocket.MessageText, []byte(`{"id":1,"method":"Runtime.evaluate","params":{"expression":"1+1"}}`)},
		{websocket.MessageBinary, []byte{0, 1, 2, 255}},
		{websocket.MessageText, []byte{}},
		{websocket.MessageBinary, big},
	}
	total := 0
	for _, m := range msgs {
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
		total += len(m.data)
	}
	fb.mu.Lock()
	host, origin := fb.host, fb.origin
	fb.mu.Unlock()
	if host != "localhost" || origin != "" {
		t.Fatalf("upstream handshake: Host %q, Origin %q", host, origin)
	}
	if err := c.Close(websocket.StatusNormalClosure, ""); err != nil {
		t.Fatal(err)
	}
	if err := relayResult(t, rl); err != nil {
		t.Fatalf("client closed: RelayCDP = %v, want nil", err)
	}
	rl.mu.Lock()
	defer rl.mu.Unlock()
	if rl.bytes["in"] != total || rl.bytes["out"] != total {
		t.Fatalf("OnBytes counted %v, want %d each way", rl.bytes, total)
	}
}

// TestCDPRelayEnds: how each way a relay can end closes the client.
func TestCDPRelayEnds(t *testing.T) {
	t.Parallel()
	t.Run("browser closes", func(t *testing.T) {
		t.Parallel()
		fb := newFakeBrowser(t, func(ctx context.Context, c *websocket.Conn) {
			_, _, _ = c.Read(ctx)
			_ = c.Close(websocket.StatusNormalClosure, "")
		})
		rl := newRelay(t, fb.url)
		c := dialRelay(t, rl)
		_ = c.Write(context.Background(), websocket.MessageText, []byte("{}"))
		_, _, err := c.Read(context.Background())
		if websocket.CloseStatus(err) != channels.StatusTargetUnavailable {
			t.Fatalf("client read: %v, want 4502", err)
		}
		if ce, ok := channels.AsClose(relayResult(t, rl)); !ok || ce.Code != channels.StatusTargetUnavailable {
			t.Fatalf("RelayCDP = %v", ce)
		}
	})
	t.Run("browser vanishes", func(t *testing.T) {
		t.Parallel()
		fb := newFakeBrowser(t, func(ctx context.Context, c *websocket.Conn) {
			_, _, _ = c.Read(ctx)
			_ = c.CloseNow() // no close frame: a crash
		})
		rl := newRelay(t, fb.url)
		c := dialRelay(t, rl)
		_ = c.Write(context.Background(), websocket.MessageText, []byte("{}"))
		_, _, err := c.Read(context.Background())
		if websocket.CloseStatus(err) != channels.StatusTargetUnavailable {
			t.Fatalf("client read: %v, want 4502", err)
		}
		relayResult(t, rl)
	})
	t.Run("context ends", func(t *testing.T) {
		t.Parallel()
		fb := newFakeBrowser(t, echo)
		rl := newRelay(t, fb.url)
		c := dialRelay(t, rl)
		cancel := <-rl.cancel
		cancel(channels.Close(channels.StatusExpired, "session expired"))
		_, _, err := c.Read(context.Background())
		var ce websocket.CloseError
		if websocket.CloseStatus(err) != channels.StatusExpired || !asWSClose(err, &ce) || ce.Reason != "session expired" {
			t.Fatalf("client read: %v, want 4408 session expired", err)
		}
		if ce, ok := channels.AsClose(relayResult(t, rl)); !ok || ce.Code != channels.StatusExpired {
			t.Fatalf("RelayCDP = %v", ce)
		}
	})
	t.Run("context ends mid-message", func(t *testing.T) {
		t.Parallel()
		// The browser streams an endless message: the client still gets
		// its close frame, within the linger.
		fb := newFakeBrowser(t, func(ctx context.Context, c *websocket.Conn) {
			w, err := c.Writer(ctx, websocket.MessageText)
			if err != nil {
				return
			}
			chunk := bytes.Repeat([]byte("a"), 32<<10)
			for {
				if _, err := w.Write(chunk); err != nil {
					return
				}
			}
		})
		rl := newRelay(t, fb.url)
		c := dialRelay(t, rl)
		cancel := <-rl.cancel
		_, r, err := c.Reader(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(r, make([]byte, 1<<20)); err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		cancel(channels.Close(channels.StatusExpired, "session expired"))
		_, err = io.Copy(io.Discard, r)
		if websocket.CloseStatus(err) != channels.StatusExpired {
			t.Fatalf("client read: %v, want 4408", err)
		}
		if d := time.Since(start); d > 1500*time.Millisecond {
			t.Fatalf("close took %v", d)
		}
		relayResult(t, rl)
	})
	t.Run("client vanishes", func(t *testing.T) {
		t.Parallel()
		closed := make(chan struct{})
		fb := newFakeBrowser(t, func(ctx context.Context, c *websocket.Conn) {
			defer close(closed)
			_, _, _ = c.Read(ctx)
		})
		rl := newRelay(t, fb.url)
		c := dialRelay(t, rl)
		_ = c.CloseNow()
		if err := relayResult(t, rl); err != nil {
			t.Fatalf("RelayCDP = %v, want nil", err)
		}
		select {
		case <-closed:
		case <-time.After(2 * time.Second):
			t.Fatal("the browser connection outlived the client")
		}
	})
}

func asWSClose(err error, ce *websocket.CloseError) bool { return errors.As(err, ce) }

// TestCDPDialRefused: a dead browser fails the dial (the proxy's 502).
func TestCDPDialRefused(t *testing.T) {
	t.Parallel()
	srv := httptest.NewServer(http.NotFoundHandler())
	u := "ws" + strings.TrimPrefix(srv.URL, "http") + "/devtools/page/X"
	srv.Close()
	if c, err := channels.DialCDP(context.Background(), u); err == nil {
		_ = c.CloseNow()
		t.Fatal("dial of a closed port succeeded")
	}
}

// TestCDPDiscovery: every discovery path is answered from the browser's,
// webSocketDebuggerUrl rewritten, frontend URLs dropped.
func TestCDPDiscovery(t *testing.T) {
	t.Parallel()
	var hosts sync.Map
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hosts.Store(r.Host, true)
		switch r.URL.Path {
		case "/json/version":
			_, _ = io.WriteString(w, `{"Browser":"Chrome/1","webSocketDebuggerUrl":"ws://localhost/devtools/browser/B"}`)
		case "/json/list":
			_, _ = io.WriteString(w, `[{"id":"P1","type":"page","webSocketDebuggerUrl":"ws://localhost/devtools/page/P1",`+
				`"devtoolsFrontendUrl":"/devtools/inspector.html?ws=localhost/devtools/page/P1"},{"id":"W","type":"worker"}]`)
		case "/json/protocol":
			_, _ = io.WriteString(w, `{"version":{"major":"1","minor":"3"}}`)
		default:
			http.NotFound(w, r)
		}
	}))
	defer up.Close()
	rewrite := func(u string) (string, error) { return "ws://gw/x?u=" + u + "&token=t", nil }
	get := func(path string) (int, string) {
		r := httptest.NewRequest(http.MethodGet, "/v1/connect/ses_1/cdp"+path, nil)
		w := httptest.NewRecorder()
		if err := channels.CDPDiscovery(w, r, up.URL, rewrite); err != nil {
			return problem.CodeOf(err).Status(), err.Error()
		}
		return w.Code, w.Body.String()
	}
	for _, p := range []string{"/json/version", "/json/version/"} {
		code, body := get(p)
		var v map[string]any
		if code != 200 || json.Unmarshal([]byte(body), &v) != nil ||
			v["webSocketDebuggerUrl"] != "ws://gw/x?u=ws://localhost/devtools/browser/B&token=t" || v["Browser"] != "Chrome/1" {
			t.Fatalf("%s: %d %s", p, code, body)
		}
	}
	for _, p := range []string{"/json/list", "/json", "/json/", "/json/list/"} {
		code, body := get(p)
		var v []map[string]any
		if code != 200 || json.Unmarshal([]byte(body), &v) != nil || len(v) != 2 ||
			v[0]["webSocketDebuggerUrl"] != "ws://gw/x?u=ws://localhost/devtools/page/P1&token=t" || v[0]["devtoolsFrontendUrl"] != nil {
			t.Fatalf("%s: %d %s", p, code, body)
		}
	}
	if code, body := get("/json/protocol"); code != 200 || !strings.Contains(body, `"major":"1"`) {
		t.Fatalf("protocol: %d %s", code, body)
	}
	if code, _ := get("/json/new"); code != 404 {
		t.Fatalf("/json/new: %d", code)
	}
	if _, ok := hosts.Load("localhost"); !ok {
		t.Fatal("discovery did not ask with Host: localhost")
	}
	up.Close()
	if code, _ := get("/json/version"); code != 502 {
		t.Fatalf("dead browser: %d, want 502", code)
	}
}

// BenchmarkRelayCDP: 4 MiB messages to a loopback echo standing for the
// browser and back, direct and through the relay, so the relay's own
// cost shows.
func BenchmarkRelayCDP(b *testing.B) {
	fb := newFakeBrowser(b, echo)
	rl := newRelay(b, fb.url)
	msg := make([]byte, 4<<20)
	_, _ = rand.Read(msg)
	for _, tc := range []struct{ name, url string }{{"direct", fb.url}, {"relay", rl.url}} {
		b.Run(tc.name, func(b *testing.B) {
			c, _, err := websocket.Dial(context.Background(), tc.url, nil)
			if err != nil {
				b.Fatal(err)
			}
			defer c.CloseNow()
			c.SetReadLimit(channels.MaxCDPMessage)
			ctx := context.Background()
			b.SetBytes(int64(2 * len(msg)))
			for b.Loop() {
				if err := c.Write(ctx, websocket.MessageBinary, msg); err != nil {
					b.Fatal(err)
				}
				if _, r, err := c.Reader(ctx); err != nil {
					b.Fatal(err)
				} else if n, _ := io.Copy(io.Discard, r); n != int64(len(msg)) {
					b.Fatalf("echoed %d bytes", n)
				}
			}
			_ = c.Close(websocket.StatusNormalClosure, "")
		})
	}
}
