package channels_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/nimbus/gateway/channels"
	"github.com/nimbus/gateway/problem"
	"github.com/nimbus/gateway/targets"
)

// fakeUpstream stands for a browser connection (targets.CDPConn): what
// the relay writes arrives on in, what handle sends on out reaches the
// client; close is the browser going away.
type fakeUpstream struct {
	in, out   chan []byte
	gone      chan struct{} // closed by handle's end: the browser side is gone
	closed    chan struct{} // closed by Close: the relay let go
	closeOnce sync.Once
}

func newFakeUpstream(t testing.TB, handle func(u *fakeUpstream)) *fakeUpstream {
	u := &fakeUpstream{in: make(chan []byte), out: make(chan []byte), gone: make(chan struct{}), closed: make(chan struct{})}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); defer close(u.gone); handle(u) }()
	t.Cleanup(func() { _ = u.Close(); wg.Wait() })
	return u
}

func (u *fakeUpstream) Read(ctx context.Context) ([]byte, error) {
	select {
	case m := <-u.out:
		return m, nil
	case <-u.gone:
		return nil, errors.New("browser gone")
	case <-u.closed:
		return nil, errors.New("closed")
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

func (u *fakeUpstream) Write(ctx context.Context, msg []byte) error {
	select {
	case u.in <- msg:
		return nil
	case <-u.gone:
		return errors.New("browser gone")
	case <-u.closed:
		return errors.New("closed")
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (u *fakeUpstream) Close() error { u.closeOnce.Do(func() { close(u.closed) }); return nil }

// echo answers every message with itself.
func echo(u *fakeUpstream) {
	for {
		select {
		case m := <-u.in:
			select {
			case u.out <- m:
			case <-u.closed:
				return
			}
		case <-u.closed:
			return
		}
	}
}

// relay is a gateway stand-in: it accepts a client and runs RelayCDP to
// upstream under ctx, reporting its result.
type relay struct {
	url    string
	result chan error
	cancel chan context.CancelCauseFunc
	bytes  map[string]int // guarded by mu
	mu     sync.Mutex
}

func newRelay(t testing.TB, upstream *fakeUpstream) *relay {
	t.Helper()
	rl := &relay{result: make(chan error, 1), cancel: make(chan context.CancelCauseFunc, 1), bytes: map[string]int{}}
	var wg sync.WaitGroup
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		wg.Add(1)
		defer wg.Done()
		ctx, cancel := context.WithCancelCause(context.Background())
		defer cancel(nil)
		c, err := websocket.Accept(w, r, nil)
		if err != nil {
			return
		}
		rl.cancel <- cancel
		rl.result <- channels.RelayCDP(ctx, c, upstream, channels.CDPOptions{OnBytes: func(dir string, n int) {
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

// TestCDPRelayMessages: messages keep their bytes both ways, large ones
// included; what the browser sends reaches the client as text (CDP is
// JSON), whatever type the client used.
func TestCDPRelayMessages(t *testing.T) {
	t.Parallel()
	rl := newRelay(t, newFakeUpstream(t, echo))
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
		if typ != websocket.MessageText || !bytes.Equal(got, m.data) {
			t.Fatalf("sent %v %d bytes, got %v %d bytes", m.typ, len(m.data), typ, len(got))
		}
		total += len(m.data)
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
		rl := newRelay(t, newFakeUpstream(t, func(u *fakeUpstream) { <-u.in }))
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
		// Gone while the client is idle: no message in flight.
		rl := newRelay(t, newFakeUpstream(t, func(u *fakeUpstream) {}))
		c := dialRelay(t, rl)
		_, _, err := c.Read(context.Background())
		if websocket.CloseStatus(err) != channels.StatusTargetUnavailable {
			t.Fatalf("client read: %v, want 4502", err)
		}
		relayResult(t, rl)
	})
	t.Run("context ends", func(t *testing.T) {
		t.Parallel()
		rl := newRelay(t, newFakeUpstream(t, echo))
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
	t.Run("context ends with the client not reading", func(t *testing.T) {
		t.Parallel()
		// The browser sends big messages the client does not read: the
		// client still gets its close frame, within the linger.
		big := bytes.Repeat([]byte("a"), 8<<20)
		rl := newRelay(t, newFakeUpstream(t, func(u *fakeUpstream) {
			for {
				select {
				case u.out <- big:
				case <-u.closed:
					return
				}
			}
		}))
		c := dialRelay(t, rl)
		cancel := <-rl.cancel
		time.Sleep(200 * time.Millisecond) // the relay's write blocks on the unread socket
		start := time.Now()
		cancel(channels.Close(channels.StatusExpired, "session expired"))
		var err error
		for err == nil {
			_, _, err = c.Read(context.Background())
		}
		if st := websocket.CloseStatus(err); st != channels.StatusExpired && st != -1 {
			t.Fatalf("client read: %v, want 4408 or a cut connection", err)
		}
		if d := time.Since(start); d > 2500*time.Millisecond {
			t.Fatalf("close took %v", d)
		}
		relayResult(t, rl)
	})
	t.Run("client vanishes", func(t *testing.T) {
		t.Parallel()
		u := newFakeUpstream(t, echo)
		rl := newRelay(t, u)
		c := dialRelay(t, rl)
		_ = c.CloseNow()
		if err := relayResult(t, rl); err != nil {
			t.Fatalf("RelayCDP = %v, want nil", err)
		}
		select {
		case <-u.closed:
		case <-time.After(2 * time.Second):
			t.Fatal("the browser connection outlived the client")
		}
	})
}

func asWSClose(err error, ce *websocket.CloseError) bool { return errors.As(err, ce) }

// fakeSource stands for a browser's discovery answers.
type fakeSource struct{ err error }

func (f fakeSource) Version(context.Context) (targets.BrowserVersion, error) {
	return targets.BrowserVersion{Product: "Chrome/156.0", ProtocolVersion: "1.3", Revision: "@abc",
		UserAgent: "Mozilla/5.0 AppleWebKit/537.36 (KHTML, like Gecko) HeadlessChrome/156.0", JSVersion: "15.6"}, f.err
}

func (f fakeSource) Targets(context.Context) ([]targets.TargetInfo, error) {
	return []targets.TargetInfo{{TargetID: "P1", Type: "page", Title: "t", URL: "about:blank"},
		{TargetID: "B", Type: "browser"}, {TargetID: "W", Type: "service_worker"}}, f.err
}

// TestCDPDiscovery: every discovery path is answered by the gateway
// itself, each webSocketDebuggerUrl pointing back at it; the browser
// target is not listed; /json/protocol is 404 (the pipe does not carry
// it), as is any other path; a browser that does not answer is 502.
func TestCDPDiscovery(t *testing.T) {
	t.Parallel()
	wsURL := func(id string) string { return "ws://gw/x/" + id + "?token=t" }
	get := func(src channels.DiscoverySource, path string) (int, string) {
		r := httptest.NewRequest(http.MethodGet, "/v1/connect/ses_1/cdp"+path, nil)
		w := httptest.NewRecorder()
		if err := channels.CDPDiscovery(w, r, src, wsURL); err != nil {
			return problem.CodeOf(err).Status(), err.Error()
		}
		return w.Code, w.Body.String()
	}
	for _, p := range []string{"/json/version", "/json/version/"} {
		code, body := get(fakeSource{}, p)
		var v map[string]any
		if code != 200 || json.Unmarshal([]byte(body), &v) != nil ||
			v["webSocketDebuggerUrl"] != "ws://gw/x/?token=t" || v["Browser"] != "Chrome/156.0" ||
			v["Protocol-Version"] != "1.3" || v["WebKit-Version"] != "537.36 (@abc)" {
			t.Fatalf("%s: %d %s", p, code, body)
		}
	}
	for _, p := range []string{"/json/list", "/json", "/json/", "/json/list/"} {
		code, body := get(fakeSource{}, p)
		var v []map[string]any
		if code != 200 || json.Unmarshal([]byte(body), &v) != nil || len(v) != 2 ||
			v[0]["webSocketDebuggerUrl"] != "ws://gw/x/P1?token=t" || v[0]["id"] != "P1" || v[1]["type"] != "service_worker" {
			t.Fatalf("%s: %d %s", p, code, body)
		}
	}
	for _, p := range []string{"/json/protocol", "/json/new"} {
		if code, _ := get(fakeSource{}, p); code != 404 {
			t.Fatalf("%s: %d, want 404", p, code)
		}
	}
	if code, _ := get(fakeSource{err: errors.New("dead")}, "/json/version"); code != 502 {
		t.Fatalf("dead browser: %d, want 502", code)
	}
}

// TestCDPDiscoveryPaths: the one list of discovery paths, which the proxy
// routes and cuts from a glued token, holds every path CDPDiscovery knows,
// longest first.
func TestCDPDiscoveryPaths(t *testing.T) {
	t.Parallel()
	got := channels.CDPDiscoveryPaths()
	want := []string{"/json/protocol/", "/json/protocol", "/json/version/", "/json/version",
		"/json/list/", "/json/list", "/json/", "/json"}
	if !slices.Equal(got, want) {
		t.Fatalf("CDPDiscoveryPaths() = %q, want %q", got, want)
	}
}
