package proxy_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/nimbus/gateway/client"
	"github.com/nimbus/gateway/proxy"
)

// sandbox creates a sandbox through the admin API and returns a token
// with reach to it.
func (e *env) sandbox(id string, tty bool, command ...string) string {
	e.t.Helper()
	r := e.do(http.MethodPost, "/v1/tenants/demo/sandboxes", e.admin(), map[string]any{"id": id, "command": command, "tty": tty})
	if r.Status != 201 || field(r.JSON(e.t), "state") != "ready" {
		e.t.Fatalf("sandbox %s: %d %s", id, r.Status, r.Body)
	}
	return e.token("demo", "alice", nil, []string{id}, false)
}

// openURL opens a session on sandbox id and returns its id and connect URLs.
func (e *env) openURL(tok, id string, ttlMs int, channels ...string) (string, map[string]string) {
	e.t.Helper()
	b := sbx(id, channels...)
	if ttlMs > 0 {
		b["requestedTtlMs"] = ttlMs
	}
	m := e.mustOpen(tok, b)
	urls := map[string]string{}
	for k, v := range field(m, "status", "connect").(map[string]any) {
		urls[k] = v.(string)
	}
	return sessionID(m), urls
}

func dial(t testing.TB, u string) *client.Stdio {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := client.DialStdio(ctx, u)
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

// drain reads a stdio connection to its end and returns stdout, stderr.
func drain(t testing.TB, s *client.Stdio, timeout time.Duration) (stdout, stderr []byte, err error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	for {
		stream, data, err := s.Next(ctx)
		if err != nil {
			return stdout, stderr, err
		}
		if stream == 1 {
			stdout = append(stdout, data...)
		} else {
			stderr = append(stderr, data...)
		}
	}
}

// TestConnectRefusals: every pre-upgrade check answers problem+json with
// no upgrade.
func TestConnectRefusals(t *testing.T) {
	e := newEnv(t, envOptions{mutate: func(o *proxy.Options) { o.MaxConnsPerSession = 1 }})
	tok := e.sandbox("sbx-cat", false, "/bin/cat")
	sidA, urlsA := e.openURL(tok, "sbx-cat", 0, "stdio", "files")
	sidB, urlsB := e.openURL(tok, "sbx-cat", 0, "stdio")
	closedSid, closedURLs := e.openURL(tok, "sbx-cat", 0, "stdio")
	e.do(http.MethodPost, "/v1/tenants/demo/sessions/"+closedSid+"/close", tok, nil)
	_, shortURLs := e.openURL(tok, "sbx-cat", 1000, "stdio")

	tokenOf := func(u string) string { pu, _ := url.Parse(u); return pu.Query().Get("token") }
	path := func(sid, ch, token string) string {
		return "/v1/connect/" + sid + "/" + ch + "?token=" + url.QueryEscape(token)
	}
	tampered := []byte(tokenOf(urlsA["stdio"]))
	tampered[len(tampered)/2] ^= 1

	first := dial(t, urlsB["stdio"]) // holds B's only connection slot
	_ = first
	// The short session is over: on the server's clock, which decides
	// whether a session is open, not on a sleep that a loaded machine
	// can stretch or the Expirer can race.
	e.clock.Advance(1100 * time.Millisecond)

	cases := []struct {
		name   string
		path   string
		status int
		code   string
		hdr    map[string]string // set over the upgrade headers; "" deletes
		want   map[string]string // response headers
	}{
		{"no token", "/v1/connect/" + sidA + "/stdio", 401, "unauthenticated", nil, nil},
		{"garbage token", path(sidA, "stdio", "x.y.z"), 401, "unauthenticated", nil, nil},
		{"tampered token", path(sidA, "stdio", string(tampered)), 401, "unauthenticated", nil, nil},
		{"tenant token", path(sidA, "stdio", tok), 401, "unauthenticated", nil, nil},
		{"wrong channel", path(sidA, "stdio", tokenOf(urlsA["files"])), 403, "permission_denied", nil, nil},
		{"wrong session", path(sidB, "stdio", tokenOf(urlsA["stdio"])), 403, "permission_denied", nil, nil},
		{"closed session", path(closedSid, "stdio", tokenOf(closedURLs["stdio"])), 409, "session_not_open", nil, nil},
		{"expired session", strings.TrimPrefix(shortURLs["stdio"], "ws://"+strings.TrimPrefix(e.URL, "http://")), 409, "session_not_open", nil, nil},
		{"connection limit", path(sidB, "stdio", tokenOf(urlsB["stdio"])), 429, "resource_exhausted", nil, nil},
		// A connect URL pasted into a browser: no handshake at all.
		{"no handshake", path(sidA, "stdio", tokenOf(urlsA["stdio"])), 426, "upgrade_required",
			map[string]string{"Connection": "", "Upgrade": "", "Sec-WebSocket-Version": "", "Sec-WebSocket-Key": ""},
			map[string]string{"Upgrade": "websocket"}},
		// Without a handshake the session's own answer still comes first:
		// a browser's WebSocket hides the refusal, so clients GET the URL
		// to learn why.
		{"no handshake, closed session", path(closedSid, "stdio", tokenOf(closedURLs["stdio"])), 409, "session_not_open",
			map[string]string{"Connection": "", "Upgrade": "", "Sec-WebSocket-Version": "", "Sec-WebSocket-Key": ""}, nil},
		{"websocket version 8", path(sidA, "stdio", tokenOf(urlsA["stdio"])), 426, "upgrade_required",
			map[string]string{"Sec-WebSocket-Version": "8"}, map[string]string{"Sec-WebSocket-Version": "13"}},
		{"no websocket key", path(sidA, "stdio", tokenOf(urlsA["stdio"])), 400, "invalid_argument",
			map[string]string{"Sec-WebSocket-Key": ""}, nil},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			req, _ := http.NewRequest(http.MethodGet, e.URL+c.path, nil)
			// A real upgrade request, so that a wrongly accepted one would
			// switch protocols.
			req.Header.Set("Connection", "Upgrade")
			req.Header.Set("Upgrade", "websocket")
			req.Header.Set("Sec-WebSocket-Version", "13")
			req.Header.Set("Sec-WebSocket-Key", base64.StdEncoding.EncodeToString([]byte("0123456789abcdef")))
			for k, v := range c.hdr {
				if v == "" {
					req.Header.Del(k)
				} else {
					req.Header.Set(k, v)
				}
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			r := response{Status: resp.StatusCode, Header: resp.Header, Body: body}
			if r.Status != c.status || r.Code(t) != c.code {
				t.Fatalf("got %d %s, want %d %s: %s", r.Status, r.Code(t), c.status, c.code, body)
			}
			for k, v := range c.want {
				if got := resp.Header.Get(k); got != v {
					t.Errorf("header %s = %q, want %q", k, got, v)
				}
			}
		})
	}
	// The client gets the same problem through client.DialStdio.
	_, err := client.DialStdio(context.Background(), closedURLs["stdio"])
	if ce, ok := err.(*client.Error); !ok || ce.Code != "session_not_open" {
		t.Fatalf("DialStdio on a closed session: %v", err)
	}
}

// TestStdioSeq: every line of `seq 1 1000000` arrives in order through
// the gateway, then exit code 3, then close 1000.
func TestStdioSeq(t *testing.T) {
	e := newEnv(t, envOptions{})
	tok := e.sandbox("sbx-seq", false, "/bin/sh", "-c", "read go; seq 1 1000000; exit 3")
	_, urls := e.openURL(tok, "sbx-seq", 0, "stdio")
	s := dial(t, urls["stdio"])
	if _, err := s.Write([]byte("go\n")); err != nil {
		t.Fatal(err)
	}
	out, _, err := drain(t, s, 60*time.Second)
	if err != io.EOF {
		t.Fatalf("stream ended with %v", err)
	}
	checkSeq(t, out, 1000000)
	if code, _, ok := s.Exit(); !ok || code != 3 {
		t.Fatalf("exit %d %v", code, ok)
	}
	if code, _ := s.CloseStatus(); code != websocket.StatusNormalClosure {
		t.Fatalf("close code %d", code)
	}
}

func checkSeq(t testing.TB, out []byte, n int) {
	t.Helper()
	sc := bufio.NewScanner(bytes.NewReader(out))
	want := 1
	for sc.Scan() {
		line := strings.TrimSuffix(sc.Text(), "\r")
		if line != strconv.Itoa(want) {
			t.Fatalf("line %d is %q", want, line)
		}
		want++
	}
	if want-1 != n {
		t.Fatalf("got %d lines, want %d", want-1, n)
	}
}

// TestCloseDisconnects: a close through the API sends 4410 with the
// reason to every connection of the session, at once.
func TestCloseDisconnects(t *testing.T) {
	e := newEnv(t, envOptions{})
	tok := e.sandbox("sbx-cat", false, "/bin/cat")
	sid, urls := e.openURL(tok, "sbx-cat", 0, "stdio")
	a, b := dial(t, urls["stdio"]), dial(t, urls["stdio"])
	start := time.Now()
	e.do(http.MethodPost, "/v1/tenants/demo/sessions/"+sid+"/close", tok, map[string]string{"reason": "done"})
	for _, s := range []*client.Stdio{a, b} {
		if _, _, err := drain(t, s, 5*time.Second); err == nil {
			t.Fatal("no end")
		}
		code, reason := s.CloseStatus()
		if code != 4410 || reason != "session closed: done" {
			t.Fatalf("close %d %q", code, reason)
		}
	}
	t.Logf("close → both clients disconnected in %v", time.Since(start))
	if d := time.Since(start); d > time.Second {
		t.Fatalf("disconnect took %v", d)
	}
}

// TestExpiryDisconnects200: 200 sessions whose connections all expire at
// the same instant each get 4408; the lag after expiresAt is measured.
func TestExpiryDisconnects200(t *testing.T) {
	e := newEnv(t, envOptions{})
	tok := e.sandbox("sbx-cat", false, "/bin/cat")
	const n = 200
	// Freeze the server's clock so that all 200 sessions share createdAt
	// and so expiresAt; connections run on the real clock.
	e.clock.Advance(0)
	ttl := 15000 // setup (200 opens and dials) takes seconds on a loaded 2-core machine under -race
	expiresAt := e.clock.Now().Add(time.Duration(ttl) * time.Millisecond)
	conns := make([]*client.Stdio, n)
	for i := range conns {
		_, urls := e.openURL(tok, "sbx-cat", ttl, "stdio")
		conns[i] = dial(t, urls["stdio"])
	}
	if time.Now().After(expiresAt.Add(-time.Second)) {
		t.Fatalf("setup took too long; connections were not all live before expiry")
	}
	lags := make([]time.Duration, n)
	var wg sync.WaitGroup
	for i, s := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, _, _ = drain(t, s, time.Until(expiresAt)+5*time.Second)
			lags[i] = time.Since(expiresAt)
			if code, reason := s.CloseStatus(); code != 4408 || reason != "session expired" {
				t.Errorf("conn %d: close %d %q", i, code, reason)
			}
		}()
	}
	wg.Wait()
	slices.Sort(lags)
	p50, p99, max := lags[n/2], lags[n*99/100], lags[n-1]
	t.Logf("expiry of %d connections: lag p50 %v, p99 %v, max %v", n, p50, p99, max)
	if lags[0] < 0 {
		t.Fatalf("a connection was cut %v before expiresAt", -lags[0])
	}
	if max > time.Second {
		t.Fatalf("max lag %v: every connection must be gone within 1 s of expiresAt", max)
	}
}

// rawUpgrade performs a WebSocket handshake on a bare TCP connection and
// returns it, so a test can play a client that ignores the protocol.
func rawUpgrade(t *testing.T, wsURL string) net.Conn {
	t.Helper()
	u, _ := url.Parse(wsURL)
	c, err := net.Dial("tcp", u.Host)
	if err != nil {
		t.Fatal(err)
	}
	key := make([]byte, 16)
	_, _ = rand.Read(key)
	fmt.Fprintf(c, "GET %s HTTP/1.1\r\nHost: %s\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: %s\r\nSec-WebSocket-Protocol: nimbus.stdio.v1\r\n\r\n",
		u.RequestURI(), u.Host, base64.StdEncoding.EncodeToString(key))
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil || resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("upgrade: %v %v", resp, err)
	}
	t.Cleanup(func() { c.Close() })
	return &bufConn{Conn: c, r: br}
}

type bufConn struct {
	net.Conn
	r *bufio.Reader
}

func (b *bufConn) Read(p []byte) (int, error) { return b.r.Read(p) }

// TestIgnoredCloseHandshakeIsCut: a client that never answers the close
// frame has its TCP connection cut about one second after it was sent.
func TestIgnoredCloseHandshakeIsCut(t *testing.T) {
	e := newEnv(t, envOptions{})
	tok := e.sandbox("sbx-cat", false, "/bin/cat")
	sid, urls := e.openURL(tok, "sbx-cat", 0, "stdio")
	c := rawUpgrade(t, urls["stdio"])
	// The hello says the connection is being served.
	var hello []byte
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	for !bytes.Contains(hello, []byte(`"hello"`)) {
		b := make([]byte, 256)
		n, err := c.Read(b)
		if err != nil {
			t.Fatalf("no hello: %v (got %q)", err, hello)
		}
		hello = append(hello, b[:n]...)
	}
	start := time.Now()
	e.do(http.MethodPost, "/v1/tenants/demo/sessions/"+sid+"/close", tok, nil)
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	got, err := io.ReadAll(c) // reads hello and the close frame, never answers
	d := time.Since(start)
	if err != nil {
		t.Fatalf("connection was not cut: %v after %v", err, d)
	}
	if !bytes.Contains(got, []byte("session closed: closed")) {
		t.Fatalf("no close frame before the cut: %q", got)
	}
	t.Logf("cut %v after the close", d)
	if d < 900*time.Millisecond || d > 2500*time.Millisecond {
		t.Fatalf("cut after %v, want about 1 s", d)
	}
}

// TestPingDropsDeadPeer: a client that stops answering pings is dropped.
func TestPingDropsDeadPeer(t *testing.T) {
	e := newEnv(t, envOptions{mutate: func(o *proxy.Options) {
		o.PingInterval, o.PingTimeout = 100*time.Millisecond, 200*time.Millisecond
	}})
	tok := e.sandbox("sbx-cat", false, "/bin/cat")
	_, urls := e.openURL(tok, "sbx-cat", 0, "stdio")
	c := rawUpgrade(t, urls["stdio"]) // never reads, so never pongs
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	start := time.Now()
	got, err := io.ReadAll(c)
	if err != nil {
		t.Fatalf("a dead peer was not dropped: %v", err)
	}
	if !bytes.Contains(got, []byte("ping timeout")) {
		t.Fatalf("dropped without the ping-timeout close frame: %q", got)
	}
	t.Logf("dead peer dropped after %v", time.Since(start))
	// A live client on the same settings stays connected through pings:
	// it reads all the time, which is when coder/websocket answers them.
	// It counts the pings it answers, so the test waits for several ping
	// rounds rather than for a time in which they should have happened.
	const rounds = 5
	pinged := make(chan struct{}, rounds)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, _, err := websocket.Dial(ctx, urls["stdio"], &websocket.DialOptions{
		Subprotocols: []string{client.StdioProtocol},
		OnPingReceived: func(context.Context, []byte) bool {
			select {
			case pinged <- struct{}{}:
			default:
			}
			return true // answer it
		},
	})
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	defer conn.CloseNow()
	echoed := make(chan error, 1)
	go func() {
		var out []byte
		for !bytes.Contains(out, []byte("still here")) {
			_, data, err := conn.Read(ctx)
			if err != nil {
				echoed <- err
				return
			}
			if len(data) > 0 && data[0] == client.StreamStdout {
				out = append(out, data[1:]...)
			}
		}
		echoed <- nil
	}()
	for range rounds {
		select {
		case <-pinged:
		case err := <-echoed:
			t.Fatalf("live client lost between pings: %v", err)
		case <-ctx.Done():
			t.Fatal("the live client was not pinged")
		}
	}
	if err := conn.Write(ctx, websocket.MessageBinary, append([]byte{client.StreamStdin}, "still here\n"...)); err != nil {
		t.Fatal(err)
	}
	if err := <-echoed; err != nil {
		t.Fatalf("live client lost: %v", err)
	}
}

// TestShutdownCloses1001: a draining gateway closes connections with 1001.
func TestShutdownCloses1001(t *testing.T) {
	e := newEnv(t, envOptions{})
	tok := e.sandbox("sbx-cat", false, "/bin/cat")
	_, urls := e.openURL(tok, "sbx-cat", 0, "stdio")
	s := dial(t, urls["stdio"])
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := e.srv.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	_, _, _ = drain(t, s, 5*time.Second)
	if code, _ := s.CloseStatus(); code != websocket.StatusGoingAway {
		t.Fatalf("close %d", code)
	}
	if _, err := client.DialStdio(ctx, urls["stdio"]); err == nil {
		t.Fatal("a draining gateway accepted a connection")
	}
}

// TestConnectAudit: connects and disconnects are audit events.
func TestConnectAudit(t *testing.T) {
	e := newEnv(t, envOptions{})
	tok := e.sandbox("sbx-cat", false, "/bin/cat")
	sid, urls := e.openURL(tok, "sbx-cat", 0, "stdio")
	s := dial(t, urls["stdio"])
	e.do(http.MethodPost, "/v1/tenants/demo/sessions/"+sid+"/close", tok, nil)
	_, _, _ = drain(t, s, 5*time.Second)
	// The disconnect is recorded after the close frame went out; Shutdown
	// returns once every connection has finished, its record included.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := e.srv.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	if c := e.auditFor(sid, "session.connect"); len(c) != 1 || c[0]["principal"] != "alice" {
		t.Fatalf("connect events %v", c)
	}
	if d := e.auditFor(sid, "session.disconnect"); len(d) != 1 || d[0]["code"] != "ws_4410" {
		t.Fatalf("disconnect events %v", d)
	}
}

// TestEarlyBytesAfterUpgrade: a client that sends its first frame in the
// same TCP write as the upgrade request loses nothing — net/http has
// already buffered it when the connection is hijacked.
func TestEarlyBytesAfterUpgrade(t *testing.T) {
	e := newEnv(t, envOptions{})
	tok := e.sandbox("sbx-cat", false, "/bin/cat")
	_, urls := e.openURL(tok, "sbx-cat", 0, "stdio")
	u, _ := url.Parse(urls["stdio"])
	c, err := net.Dial("tcp", u.Host)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	key := make([]byte, 16)
	_, _ = rand.Read(key)
	// A masked binary frame: stdin "early\n".
	payload := append([]byte{0}, "early\n"...)
	mask := []byte{1, 2, 3, 4}
	frame := []byte{0x82, 0x80 | byte(len(payload))}
	frame = append(frame, mask...)
	for i, b := range payload {
		frame = append(frame, b^mask[i%4])
	}
	req := fmt.Sprintf("GET %s HTTP/1.1\r\nHost: %s\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: %s\r\nSec-WebSocket-Protocol: nimbus.stdio.v1\r\n\r\n",
		u.RequestURI(), u.Host, base64.StdEncoding.EncodeToString(key))
	if _, err := c.Write(append([]byte(req), frame...)); err != nil {
		t.Fatal(err)
	}
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil || resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("upgrade: %v %v", resp, err)
	}
	var got []byte
	buf := make([]byte, 4096)
	for !bytes.Contains(got, []byte("\x01early\n")) {
		n, err := br.Read(buf)
		if err != nil {
			t.Fatalf("the early stdin frame was lost: read %q, %v", got, err)
		}
		got = append(got, buf[:n]...)
	}
}
