package channels_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/nimbus/gateway/channels"
	"github.com/nimbus/gateway/client"
	"github.com/nimbus/gateway/internal/testruntime"
	"github.com/nimbus/gateway/store"
	"github.com/nimbus/gateway/targets"
)

// served is how one ServeStdio call ended.
type served struct {
	err error
	at  time.Time
}

// harness serves one real workload's stdio channel on a real socket, as
// the proxy does: Accept, ServeStdio, then close with the returned code.
type harness struct {
	t       testing.TB
	w       *targets.Workload
	url     string
	opt     channels.StdioOptions
	results chan served
	wg      sync.WaitGroup

	mu      sync.Mutex
	cancels []context.CancelCauseFunc // guarded by mu
}

// newHarness starts the sandbox workload argv (on a PTY if tty) behind an
// httptest server. Output written before a client attaches is only in the
// replay ring, so commands that must be seen whole start with `read x`
// and are released with release.
func newHarness(t testing.TB, tty bool, opt channels.StdioOptions, argv ...string) *harness {
	t.Helper()
	st, err := store.OpenSQLite(filepath.Join(t.TempDir(), "db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	copts := targets.Options{DataDir: t.TempDir(), StopGrace: time.Second}
	testruntime.Apply(t, &copts)
	cat := targets.NewCatalog(st, copts)
	h := &harness{t: t, opt: opt, results: make(chan served, 64)}
	srv := httptest.NewServer(http.HandlerFunc(h.serve))
	t.Cleanup(srv.Close)
	t.Cleanup(func() {
		// The catalog's Close ends the workload: every ServeStdio sends
		// exit and returns.
		cat.Close()
		done := make(chan struct{})
		go func() { h.wg.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Error("ServeStdio still running 10 s after the workload was stopped")
		}
	})
	if _, err := cat.CreateSandbox(context.Background(), "t1", targets.SandboxSpec{ID: "sb", Command: argv, TTY: tty}); err != nil {
		t.Fatal(err)
	}
	w, ok := cat.Workload("t1", "sb")
	if !ok {
		t.Fatal("no workload")
	}
	h.w = w
	h.url = "ws" + strings.TrimPrefix(srv.URL, "http")
	return h
}

func (h *harness) serve(rw http.ResponseWriter, r *http.Request) {
	h.wg.Add(1)
	defer h.wg.Done()
	conn, err := websocket.Accept(rw, r, &websocket.AcceptOptions{Subprotocols: []string{channels.StdioProtocol}})
	if err != nil {
		return
	}
	ctx, cancel := context.WithCancelCause(context.Background())
	defer cancel(nil)
	h.mu.Lock()
	h.cancels = append(h.cancels, cancel)
	h.mu.Unlock()
	err = channels.ServeStdio(ctx, conn, h.w, h.opt)
	h.results <- served{err, time.Now()}
	if ce, ok := channels.AsClose(err); ok {
		conn.Close(ce.Code, ce.Reason)
	} else {
		conn.CloseNow()
	}
}

// cancelAll ends every connection's context with cause, as a session
// close or expiry does.
func (h *harness) cancelAll(cause error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, c := range h.cancels {
		c(cause)
	}
}

func (h *harness) dial() *client.Stdio {
	h.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := client.DialStdio(ctx, h.url)
	if err != nil {
		h.t.Fatal(err)
	}
	h.t.Cleanup(func() { s.Close() })
	return s
}

// release answers the workload's leading `read x`.
func release(t testing.TB, s *client.Stdio) {
	t.Helper()
	if _, err := s.Write([]byte("go\n")); err != nil {
		t.Fatal(err)
	}
}

// result waits for the next ServeStdio to return.
func (h *harness) result() served {
	h.t.Helper()
	select {
	case r := <-h.results:
		return r
	case <-time.After(15 * time.Second):
		h.t.Fatal("ServeStdio did not return")
		return served{}
	}
}

// readAll reads s to its end and returns each stream and Next's final
// error (io.EOF after a workload exit).
func readAll(t testing.TB, s *client.Stdio) (stdout, stderr []byte, err error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	for {
		stream, data, err := s.Next(ctx)
		if err != nil {
			return stdout, stderr, err
		}
		switch stream {
		case client.StreamStdout:
			stdout = append(stdout, data...)
		case client.StreamStderr:
			stderr = append(stderr, data...)
		}
	}
}

// readUntil reads s until its output contains want.
func readUntil(t testing.TB, s *client.Stdio, want string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	var out []byte
	for !bytes.Contains(out, []byte(want)) {
		_, data, err := s.Next(ctx)
		if err != nil {
			t.Fatalf("waiting for %q: %v; got %q", want, err, out)
		}
		out = append(out, data...)
	}
	return string(out)
}

func wantExit(t testing.TB, s *client.Stdio, err error, code int) {
	t.Helper()
	if err != io.EOF {
		c, r := s.CloseStatus()
		t.Fatalf("Next: %v (close %d %q), want io.EOF", err, c, r)
	}
	got, _, ok := s.Exit()
	if !ok || got != code {
		t.Fatalf("exit = %d, %v; want %d", got, ok, code)
	}
	if c, _ := s.CloseStatus(); c != websocket.StatusNormalClosure {
		t.Fatalf("close code %d, want 1000", c)
	}
}

func wantClose(t testing.TB, r served, code websocket.StatusCode) {
	t.Helper()
	ce, ok := channels.AsClose(r.err)
	if !ok || ce.Code != code {
		t.Fatalf("ServeStdio = %v, want close %d", r.err, code)
	}
}

// checkLines checks that out is "1\n2\n…n\n" (sep between lines).
func checkLines(t testing.TB, out []byte, prefix string, n int, sep string) {
	t.Helper()
	lines := strings.Split(strings.TrimSuffix(string(out), sep), sep)
	if len(lines) != n {
		t.Fatalf("%d lines, want %d; tail %q", len(lines), n, lines[max(0, len(lines)-3):])
	}
	for i, l := range lines {
		if l != prefix+strconv.Itoa(i+1) {
			t.Fatalf("line %d = %q, want %q", i+1, l, prefix+strconv.Itoa(i+1))
		}
	}
}

func TestStdioOutputThenExit(t *testing.T) {
	t.Parallel()
	h := newHarness(t, false, channels.StdioOptions{}, "/bin/sh", "-c", "read x; seq 1 1000000; exit 3")
	s := h.dial()
	if tty, replayed := s.Hello(); tty || replayed != 0 {
		t.Fatalf("hello tty=%v replayed=%d", tty, replayed)
	}
	release(t, s)
	stdout, stderr, err := readAll(t, s)
	wantExit(t, s, err, 3)
	checkLines(t, stdout, "", 1000000, "\n")
	if len(stderr) != 0 {
		t.Fatalf("stderr %q", stderr)
	}
	wantClose(t, h.result(), websocket.StatusNormalClosure)
}

func TestStdioStdoutAndStderr(t *testing.T) {
	t.Parallel()
	h := newHarness(t, false, channels.StdioOptions{}, "/bin/sh", "-c",
		"read x; for i in $(seq 1 20000); do echo out$i; echo err$i >&2; done")
	s := h.dial()
	release(t, s)
	stdout, stderr, err := readAll(t, s)
	wantExit(t, s, err, 0)
	checkLines(t, stdout, "out", 20000, "\n")
	checkLines(t, stderr, "err", 20000, "\n")
}

// TestStdioBulkAndSmallOutput: small writes on both streams (coalesced
// into messages) and then megabyte writes (dd writes each block at once,
// so the reads fill their windows and grow to 256 KiB: sent as their own
// messages straight from the slab), to two clients at once — both get
// every byte, in order, on the right stream.
func TestStdioBulkAndSmallOutput(t *testing.T) {
	t.Parallel()
	var sizes sync.Map // message sizes seen, for the two paths
	// A backlog bound over the whole output: this test is about every
	// byte arriving, and a -race client on a loaded machine may read
	// slower than the slow-consumer rule allows.
	opt := channels.StdioOptions{MaxBacklog: 16 << 20, OnBytes: func(dir string, n int) {
		if dir == "out" {
			sizes.Store(n > 32<<10, true)
		}
	}}
	h := newHarness(t, false, opt, "/bin/sh", "-c",
		"read x; for i in $(seq 1 300); do echo out$i; echo err$i >&2; done; seq 1 1000000 | dd bs=1M iflag=fullblock 2>/dev/null; echo end >&2")
	a, b := h.dial(), h.dial()
	release(t, a)
	var wantOut, wantErr bytes.Buffer
	for i := 1; i <= 300; i++ {
		fmt.Fprintf(&wantOut, "out%d\n", i)
		fmt.Fprintf(&wantErr, "err%d\n", i)
	}
	for i := 1; i <= 1000000; i++ {
		fmt.Fprintf(&wantOut, "%d\n", i)
	}
	wantErr.WriteString("end\n")
	type result struct {
		out, err []byte
		e        error
	}
	rc := make(chan result, 1)
	go func() {
		o, e, err := readAll(t, b)
		rc <- result{o, e, err}
	}()
	stdout, stderr, err := readAll(t, a)
	wantExit(t, a, err, 0)
	r := <-rc
	wantExit(t, b, r.e, 0)
	for i, got := range [][2][]byte{{stdout, stderr}, {r.out, r.err}} {
		if !bytes.Equal(got[0], wantOut.Bytes()) || !bytes.Equal(got[1], wantErr.Bytes()) {
			t.Fatalf("client %d: stdout %d bytes (want %d), stderr %d (want %d)", i, len(got[0]), wantOut.Len(), len(got[1]), wantErr.Len())
		}
	}
	_, small := sizes.Load(false)
	_, large := sizes.Load(true)
	if !small || !large {
		t.Fatalf("messages of up to 32 KiB: %v, larger: %v; both paths must be taken", small, large)
	}
}

func TestStdioTTY(t *testing.T) {
	t.Parallel()
	h := newHarness(t, true, channels.StdioOptions{}, "/bin/sh", "-c", "read x; seq 1 20000; exit 4")
	s := h.dial()
	if tty, _ := s.Hello(); !tty {
		t.Fatal("hello says no tty")
	}
	release(t, s)
	stdout, stderr, err := readAll(t, s)
	wantExit(t, s, err, 4)
	if len(stderr) != 0 {
		t.Fatalf("stderr on a tty: %q", stderr)
	}
	// The terminal echoes "go" and turns \n into \r\n.
	out := strings.ReplaceAll(string(stdout), "\r\n", "\n")
	out = strings.TrimPrefix(out, "go\n")
	checkLines(t, []byte(out), "", 20000, "\n")
}

func TestStdioStdinRoundTrip(t *testing.T) {
	t.Parallel()
	h := newHarness(t, false, channels.StdioOptions{}, "cat")
	s := h.dial()
	var want bytes.Buffer
	for i := range 2000 {
		fmt.Fprintf(&want, "line %d of stdin\n", i)
	}
	// Larger than the client's 32 KiB messages and the pipe's buffer.
	big := bytes.Repeat([]byte("0123456789abcdef"), 1<<16) // 1 MiB
	want.Write(big)
	go func() {
		s.Write(want.Bytes()[:want.Len()-len(big)])
		s.Write(big)
		s.CloseStdin()
	}()
	stdout, _, err := readAll(t, s)
	wantExit(t, s, err, 0)
	if !bytes.Equal(stdout, want.Bytes()) {
		t.Fatalf("echoed %d bytes, want %d", len(stdout), want.Len())
	}
}

func TestStdioSignal(t *testing.T) {
	t.Parallel()
	h := newHarness(t, false, channels.StdioOptions{}, "/bin/sh", "-c",
		"trap 'echo got-int; exit 7' INT; echo ready; while :; do sleep 0.05; done")
	s := h.dial()
	readUntil(t, s, "ready")
	if err := s.Signal("INT"); err != nil {
		t.Fatal(err)
	}
	stdout, _, err := readAll(t, s)
	wantExit(t, s, err, 7)
	if !strings.Contains(string(stdout), "got-int") {
		t.Fatalf("stdout %q", stdout)
	}
}

func TestStdioSignalKilled(t *testing.T) {
	t.Parallel()
	h := newHarness(t, false, channels.StdioOptions{}, "/bin/sh", "-c", "echo ready; exec sleep 60")
	s := h.dial()
	readUntil(t, s, "ready")
	if err := s.Signal("SIGKILL"); err != nil {
		t.Fatal(err)
	}
	_, _, err := readAll(t, s)
	wantExit(t, s, err, 128+9)
	if _, sig, _ := s.Exit(); sig != "SIGKILL" {
		t.Fatalf("signal %q", sig)
	}
}

func TestStdioResize(t *testing.T) {
	t.Parallel()
	h := newHarness(t, true, channels.StdioOptions{}, "/bin/sh", "-c",
		`trap 'echo size=$(stty size)' WINCH; echo ready; while :; do sleep 0.05; done`)
	s := h.dial()
	readUntil(t, s, "ready")
	if err := s.Resize(132, 43); err != nil {
		t.Fatal(err)
	}
	readUntil(t, s, "size=43 132")
}

func TestStdioResizeOnPipesIgnored(t *testing.T) {
	t.Parallel()
	h := newHarness(t, false, channels.StdioOptions{}, "cat")
	s := h.dial()
	if err := s.Resize(80, 24); err != nil {
		t.Fatal(err)
	}
	s.Write([]byte("still here\n"))
	readUntil(t, s, "still here")
}

func TestStdioFanOutAndReplay(t *testing.T) {
	t.Parallel()
	h := newHarness(t, false, channels.StdioOptions{}, "/bin/sh", "-c", "read x; seq 1 5000; read y; echo bye")
	a, b := h.dial(), h.dial()
	release(t, a)
	seq := readUntil(t, a, "\n5000\n")
	if got := readUntil(t, b, "\n5000\n"); got != seq {
		t.Fatalf("second client got %d bytes, first %d", len(got), len(seq))
	}
	// A late client first gets the recent output, counted in hello.
	c := h.dial()
	if _, replayed := c.Hello(); replayed != len(seq) {
		t.Fatalf("replayed %d, want %d", replayed, len(seq))
	}
	if got := readUntil(t, c, "\n5000\n"); got != seq {
		t.Fatalf("replay %q…", got[:min(len(got), 40)])
	}
	// Any client may write.
	c.Write([]byte("y\n"))
	for _, s := range []*client.Stdio{a, b, c} {
		stdout, _, err := readAll(t, s)
		wantExit(t, s, err, 0)
		if string(stdout) != "bye\n" {
			t.Fatalf("stdout %q", stdout)
		}
	}
}

func TestStdioAttachAfterExit(t *testing.T) {
	t.Parallel()
	h := newHarness(t, false, channels.StdioOptions{}, "/bin/sh", "-c", "echo last words; exit 5")
	<-h.w.Done()
	s := h.dial()
	if _, replayed := s.Hello(); replayed != len("last words\n") {
		t.Fatalf("replayed %d", replayed)
	}
	stdout, _, err := readAll(t, s)
	wantExit(t, s, err, 5)
	if string(stdout) != "last words\n" {
		t.Fatalf("stdout %q", stdout)
	}
}

func TestStdioContextCause(t *testing.T) {
	t.Parallel()
	h := newHarness(t, false, channels.StdioOptions{}, "/bin/sh", "-c", "echo ready; while :; do echo tick; sleep 0.01; done")
	s := h.dial()
	readUntil(t, s, "ready")
	read := make(chan error, 1)
	go func() { _, _, err := readAll(t, s); read <- err }()
	start := time.Now()
	h.cancelAll(channels.Close(channels.StatusClosed, "session closed: test"))
	r := h.result()
	wantClose(t, r, channels.StatusClosed)
	if d := r.at.Sub(start); d > 500*time.Millisecond {
		t.Fatalf("ServeStdio returned %v after the cancel", d)
	}
	err := <-read
	var ce *client.CloseError
	if !errors.As(err, &ce) || ce.Code != 4410 || ce.Reason != "session closed: test" {
		t.Fatalf("Next: %v", err)
	}
	if c, reason := s.CloseStatus(); c != 4410 || reason != "session closed: test" {
		t.Fatalf("CloseStatus %d %q", c, reason)
	}
}

func TestStdioClientLeaves(t *testing.T) {
	t.Parallel()
	h := newHarness(t, false, channels.StdioOptions{}, "cat")
	s := h.dial()
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if r := h.result(); r.err != nil {
		t.Fatalf("ServeStdio = %v, want nil", r.err)
	}
}

// TestStdioBadClient: a misbehaving client is closed with 1003/1008 and
// the workload keeps serving the others.
func TestStdioBadClient(t *testing.T) {
	t.Parallel()
	h := newHarness(t, false, channels.StdioOptions{}, "cat")
	bin := func(b ...byte) []byte { return b }
	ctl := func(s string) []byte { return append([]byte{3}, s...) }
	for _, tc := range []struct {
		name string
		typ  websocket.MessageType
		msg  []byte
		code websocket.StatusCode
	}{
		{"text", websocket.MessageText, []byte(`{"type":"eof"}`), websocket.StatusUnsupportedData},
		{"empty", websocket.MessageBinary, nil, websocket.StatusPolicyViolation},
		{"stream 9", websocket.MessageBinary, bin(9, 'x'), websocket.StatusPolicyViolation},
		{"stdout from client", websocket.MessageBinary, bin(1, 'x'), websocket.StatusPolicyViolation},
		{"bad json", websocket.MessageBinary, ctl(`{"type":`), websocket.StatusPolicyViolation},
		{"unknown control", websocket.MessageBinary, ctl(`{"type":"dance"}`), websocket.StatusPolicyViolation},
		{"resize 0x0", websocket.MessageBinary, ctl(`{"type":"resize","cols":0,"rows":0}`), websocket.StatusPolicyViolation},
		{"resize huge", websocket.MessageBinary, ctl(`{"type":"resize","cols":10001,"rows":5}`), websocket.StatusPolicyViolation},
		{"unknown signal", websocket.MessageBinary, ctl(`{"type":"signal","signal":"SIGSEGV"}`), websocket.StatusPolicyViolation},
		{"too big", websocket.MessageBinary, make([]byte, channels.MaxStdioMessage+2), websocket.StatusMessageTooBig},
	} {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		conn, _, err := websocket.Dial(ctx, h.url, &websocket.DialOptions{Subprotocols: []string{channels.StdioProtocol}})
		if err != nil {
			t.Fatal(err)
		}
		if _, hello, err := conn.Read(ctx); err != nil || hello[0] != 3 {
			t.Fatalf("%s: hello %q, %v", tc.name, hello, err)
		}
		conn.Write(ctx, tc.typ, tc.msg)
		_, _, err = conn.Read(ctx)
		if got := websocket.CloseStatus(err); got != tc.code {
			t.Errorf("%s: client saw %v, want close %d", tc.name, err, tc.code)
		}
		wantClose(t, h.result(), tc.code)
		conn.CloseNow()
		cancel()
	}
	s := h.dial()
	s.Write([]byte("unharmed\n"))
	readUntil(t, s, "unharmed")
}

// TestStdioSlowConsumer is the twin of tailscale's TestSendFreeze: a
// client that stops reading is dropped with 4429 while another client of
// the same workload keeps receiving at full speed.
func TestStdioSlowConsumer(t *testing.T) {
	t.Parallel()
	const grace = 300 * time.Millisecond
	opt := channels.StdioOptions{MaxBacklog: 256 << 10, Grace: grace}
	// About 25 MB/s: more than a stalled client's socket buffers take in
	// a second, less than a reading client (even under -race) reads.
	produce := "read x; while :; do head -c 262144 /dev/zero; sleep 0.01; done"

	for _, frozen := range []bool{false, true} {
		t.Run(fmt.Sprintf("frozen=%v", frozen), func(t *testing.T) {
			t.Parallel()
			h := newHarness(t, false, opt, "/bin/sh", "-c", produce)
			slow, fast := h.dial(), h.dial()
			release(t, fast)

			// fast reads all along, counting.
			var mu sync.Mutex
			var got int
			ctx, cancel := context.WithCancel(context.Background())
			fastDone := make(chan error, 1)
			go func() {
				for {
					_, data, err := fast.Next(ctx)
					if err != nil {
						fastDone <- err
						return
					}
					mu.Lock()
					got += len(data)
					mu.Unlock()
				}
			}()
			defer func() { cancel(); <-fastDone }()
			received := func() int { mu.Lock(); defer mu.Unlock(); return got }

			// slow reads nothing until the hub dropped it.
			start := time.Now()
			for h.w.Stats().DroppedSlowConsumers == 0 {
				if time.Since(start) > 10*time.Second {
					t.Fatal("no slow consumer dropped in 10 s")
				}
				time.Sleep(5 * time.Millisecond)
			}
			dropped := time.Now()
			atDrop := received()
			t.Logf("dropped %v after the stall; fast client had %d MB", dropped.Sub(start), atDrop>>20)

			if frozen {
				// A client that never reads again cannot get the close
				// frame; its connection is cut a second after the drop.
				r := h.result()
				wantClose(t, r, channels.StatusSlowConsumer)
				if d := r.at.Sub(dropped); d > time.Second+grace {
					t.Fatalf("ServeStdio returned %v after the drop", d)
				}
			} else {
				// A client that reads again drains its socket and gets 4429.
				_, _, err := readAll(t, slow)
				if c, _ := slow.CloseStatus(); c != channels.StatusSlowConsumer {
					t.Fatalf("slow client: %v, close %d", err, c)
				}
				// How long it takes depends on draining the socket
				// buffers (megabytes) at this machine's speed.
				t.Logf("4429 arrived %v after the drop", time.Since(dropped))
				wantClose(t, h.result(), channels.StatusSlowConsumer)
			}
			// fast was not slowed down: it keeps receiving, and keeps up
			// with the workload.
			time.Sleep(500 * time.Millisecond)
			lag := int(h.w.Stats().BytesOut) - received()
			if n := received() - atDrop; n < 1<<20 || lag > 4<<20 {
				t.Fatalf("fast client received %d bytes in the %v after the drop, %d bytes behind", n, time.Since(dropped), lag)
			}
			if st := h.w.Stats(); st.DroppedSlowConsumers != 1 || st.Subscribers != 1 {
				t.Fatalf("stats %+v", st)
			}
		})
	}
}
