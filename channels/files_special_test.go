package channels_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/coder/websocket"
	"golang.org/x/sys/unix"

	"github.com/nimbus/gateway/channels"
)

// doWithin is fs.do with a deadline: a request the server hangs on fails
// the test instead of hanging it.
func (fs *filesServer) doWithin(t testing.TB, d time.Duration, method, p string, hdr map[string]string) (*http.Response, []byte) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, fs.fileURL(p), nil)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: no answer within %v: %v", method, p, d, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	<-fs.httpDone
	return resp, b
}

// doWithin is c.do with a deadline.
func (c *wsFiles) doWithin(d time.Duration, req map[string]any) filesResp {
	c.t.Helper()
	id, ch := c.start(nil)
	req["id"] = id
	if err := c.sendJSON(req); err != nil {
		c.t.Fatal(err)
	}
	select {
	case r := <-ch:
		return r
	case <-c.done:
		c.t.Fatalf("connection ended: %v", c.err)
	case <-time.After(d):
		c.t.Fatalf("%v: no answer within %v", req, d)
	}
	return filesResp{}
}

// mkfifo makes a FIFO at name, and a cleanup that opens it for writing
// until no reader waits in open(2) any more: on code that does wait
// there, the test fails instead of leaving goroutines stuck for goleak.
func mkfifo(t *testing.T, name string) {
	t.Helper()
	if err := syscall.Mkfifo(name, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		for range 100 {
			fd, err := syscall.Open(name, syscall.O_WRONLY|syscall.O_NONBLOCK, 0)
			if err != nil {
				return // ENXIO: no reader left
			}
			_ = syscall.Close(fd)
			time.Sleep(10 * time.Millisecond)
		}
	})
}

// TestFilesSpecialFiles (issue 12): a FIFO, a socket, a symlink to a
// FIFO and a FIFO where a directory is expected are refused at once with
// invalid_argument on both faces — before this, open(2) of the FIFO hung
// each request until a writer came. stat and list still describe them.
func TestFilesSpecialFiles(t *testing.T) {
	t.Parallel()
	fs := newFilesServer(t, channels.FilesOptions{})
	mkfifo(t, filepath.Join(fs.root, "fifo.txt"))
	mkfifo(t, filepath.Join(fs.root, "dirfifo"))
	if err := os.Symlink("fifo.txt", filepath.Join(fs.root, "link")); err != nil {
		t.Fatal(err)
	}
	// A socket file: bound, never listened on, kept after the fd closes.
	sfd, err := syscall.Socket(syscall.AF_UNIX, syscall.SOCK_STREAM, 0)
	if err != nil {
		t.Fatal(err)
	}
	err = syscall.Bind(sfd, &syscall.SockaddrUnix{Name: filepath.Join(fs.root, "sock")})
	_ = syscall.Close(sfd)
	if err != nil {
		t.Fatal(err)
	}
	const within = 5 * time.Second

	for _, tc := range []struct{ method, path string }{
		{"GET", "fifo.txt"}, {"HEAD", "fifo.txt"}, {"GET", "link"}, {"GET", "sock"}, {"GET", "dirfifo"},
	} {
		resp, b := fs.doWithin(t, within, tc.method, tc.path, nil)
		if resp.StatusCode != http.StatusBadRequest {
			t.Errorf("%s %s: %d %s, want 400 invalid_argument", tc.method, tc.path, resp.StatusCode, b)
		}
		if tc.method == "GET" && problemCode(b) != "invalid_argument" {
			t.Errorf("%s %s: code %q, want invalid_argument", tc.method, tc.path, problemCode(b))
		}
	}
	resp, b := fs.doWithin(t, within, "GET", "fifo.txt?stat=true", nil)
	if resp.StatusCode != 200 || !strings.Contains(string(b), `"type":"other"`) {
		t.Errorf("stat of the FIFO: %d %s", resp.StatusCode, b)
	}

	c := dialFiles(t, fs)
	for _, tc := range []struct{ op, path string }{
		{"read", "fifo.txt"}, {"read", "link"}, {"read", "sock"}, {"list", "fifo.txt"}, {"list", "dirfifo"},
	} {
		wantCode(t, tc.op+" "+tc.path, c.doWithin(within, map[string]any{"op": tc.op, "path": tc.path}), "invalid_argument")
	}
	if r := c.doWithin(within, map[string]any{"op": "stat", "path": "fifo.txt"}); !r.OK || r.Entry.Type != "other" {
		t.Errorf("stat of the FIFO: %+v", r)
	}
	r := c.doWithin(within, map[string]any{"op": "list", "path": "/"})
	if !r.OK || len(r.Entries) != 4 {
		t.Errorf("listing: %+v", r)
	}
	// A FIFO is renamed and removed like any file, without being opened.
	wantCode(t, "rename", c.doWithin(within, map[string]any{"op": "rename", "from": "dirfifo", "to": "fifo2"}), "")
	wantCode(t, "remove", c.doWithin(within, map[string]any{"op": "remove", "path": "fifo2"}), "")
}

// TestFilesRangeEmptySuffix (issue 12): "bytes=-0" asks for the last
// zero bytes, which RFC 9110 §14.1.1 calls unsatisfiable: 416 as
// problem+json with the size, not a 206 of nothing. A -0 beside a
// satisfiable range is ignored, and a failing If-Range still gets 200.
// (An empty file ignores every Range, as http.ServeContent does: 200.)
func TestFilesRangeEmptySuffix(t *testing.T) {
	t.Parallel()
	fs := newFilesServer(t, channels.FilesOptions{})
	mustWrite(t, filepath.Join(fs.root, "f"), []byte("0123456789"))
	for _, tc := range []struct {
		path, rng string
		size      int
	}{{"f", "bytes=-0", 10}, {"f", "bytes=-00", 10}, {"f", "bytes= -0 , -0", 10}} {
		resp, b := fs.do(t, "GET", tc.path, nil, map[string]string{"Range": tc.rng})
		if resp.StatusCode != http.StatusRequestedRangeNotSatisfiable || problemCode(b) != "range_not_satisfiable" ||
			resp.Header.Get("Content-Range") != fmt.Sprintf("bytes */%d", tc.size) ||
			!strings.HasPrefix(resp.Header.Get("Content-Type"), "application/problem+json") {
			t.Errorf("%s Range %q: %d %v %q, want 416 range_not_satisfiable", tc.path, tc.rng, resp.StatusCode, resp.Header, b)
		}
	}
	resp, b := fs.do(t, "GET", "f", nil, map[string]string{"Range": "bytes=-0,2-3"})
	if resp.StatusCode != http.StatusPartialContent || string(b) != "23" || resp.Header.Get("Content-Range") != "bytes 2-3/10" {
		t.Errorf("Range -0,2-3: %d %v %q", resp.StatusCode, resp.Header, b)
	}
	resp, b = fs.do(t, "GET", "f", nil, map[string]string{"Range": "bytes=-0", "If-Range": `"stale"`})
	if resp.StatusCode != http.StatusOK || string(b) != "0123456789" {
		t.Errorf("Range -0 with a stale If-Range: %d %q, want the whole file", resp.StatusCode, b)
	}
}

// TestFilesSweepTemps (issue 12): the temp files of uploads cut off by
// a gateway that died (SIGKILL) are removed by the first request on the
// root; the temp file of a live upload (its lock held, as another
// replica's would be), a FIFO and a symlink of the same name pattern,
// and what the symlink points to, stay.
func TestFilesSweepTemps(t *testing.T) {
	t.Parallel()
	fs := newFilesServer(t, channels.FilesOptions{})
	dead := []string{".nimbus-00112233-a.part", "d/e/.nimbus-44556677-b.part"}
	for _, n := range dead {
		mustWrite(t, filepath.Join(fs.root, n), []byte("half an upload"))
	}
	live := filepath.Join(fs.root, "d/.nimbus-8899aabb-c.part")
	mustWrite(t, live, []byte("uploading"))
	lf, err := os.Open(live)
	if err != nil {
		t.Fatal(err)
	}
	defer lf.Close()
	if err := syscall.Flock(int(lf.Fd()), syscall.LOCK_EX); err != nil {
		t.Fatal(err)
	}
	mkfifo(t, filepath.Join(fs.root, ".nimbus-fifo-x.part"))
	mustWrite(t, filepath.Join(fs.root, "target"), []byte("keep"))
	if err := os.Symlink("target", filepath.Join(fs.root, ".nimbus-link-y.part")); err != nil {
		t.Fatal(err)
	}

	resp, b := fs.doWithin(t, 10*time.Second, "GET", "", nil)
	if resp.StatusCode != 200 || strings.Contains(string(b), "00112233") {
		t.Fatalf("listing after the sweep: %d %s", resp.StatusCode, b)
	}
	for _, n := range dead {
		if _, err := os.Lstat(filepath.Join(fs.root, n)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s left behind: %v", n, err)
		}
	}
	for _, n := range []string{"d/.nimbus-8899aabb-c.part", ".nimbus-fifo-x.part", ".nimbus-link-y.part", "target"} {
		if _, err := os.Lstat(filepath.Join(fs.root, n)); err != nil {
			t.Errorf("%s was removed: %v", n, err)
		}
	}
	// An upload after the sweep holds its temp file's lock.
	c := dialFiles(t, fs)
	id, ch := c.start(nil)
	if err := c.sendJSON(map[string]any{"id": id, "op": "write", "path": "up/new.bin", "size": 10}); err != nil {
		t.Fatal(err)
	}
	if err := c.sendData(id, []byte("12345")); err != nil {
		t.Fatal(err)
	}
	var tmp string
	for i := 0; tmp == "" && i < 500; i++ {
		ents, _ := os.ReadDir(filepath.Join(fs.root, "up"))
		for _, e := range ents {
			if strings.HasPrefix(e.Name(), ".nimbus-") {
				tmp = filepath.Join(fs.root, "up", e.Name())
			}
		}
		time.Sleep(10 * time.Millisecond)
	}
	if tmp == "" {
		t.Fatal("no temp file for the upload")
	}
	tf, err := os.Open(tmp)
	if err != nil {
		t.Fatal(err)
	}
	if err := syscall.Flock(int(tf.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); !errors.Is(err, syscall.EWOULDBLOCK) {
		t.Errorf("flock of a live upload's temp file: %v, want EWOULDBLOCK", err)
	}
	tf.Close()
	if err := c.sendData(id, []byte("67890")); err != nil {
		t.Fatal(err)
	}
	if err := c.sendJSON(map[string]any{"id": id, "op": "end"}); err != nil {
		t.Fatal(err)
	}
	wantCode(t, "write", c.wait(ch), "")
}

// TestFilesCloseCutsStuckReader (issue 12, SPEC §5): a client that stops
// reading during a 50 MB read holds the server's writer in a frame; when
// the connection's context ends (4410), the connection is still gone
// about a second later, not after coder/websocket's 5 s write timeout.
func TestFilesCloseCutsStuckReader(t *testing.T) {
	t.Parallel()
	fs := newFilesServer(t, channels.FilesOptions{})
	big := filepath.Join(fs.root, "big.bin")
	if err := os.WriteFile(big, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(big, 50<<20); err != nil { // sparse: no disk
		t.Fatal(err)
	}
	conn, raw := dialRaw(t, "ws"+strings.TrimPrefix(fs.URL, "http")+"/ws")
	defer conn.CloseNow()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := conn.Write(ctx, websocket.MessageText, []byte(`{"id":1,"op":"read","path":"big.bin"}`)); err != nil {
		t.Fatal(err)
	}
	if typ, _, err := conn.Read(ctx); err != nil || typ != websocket.MessageBinary {
		t.Fatalf("first data message: %v %v", typ, err)
	}
	waitStalled(t, raw)

	start := time.Now()
	fs.cancel(channels.Close(channels.StatusClosed, "session closed: test"))
	select {
	case <-fs.served:
	case <-time.After(10 * time.Second):
		t.Fatal("the connection was not closed within 10 s")
	}
	// The test server's Close returns once the connection is cut. SPEC
	// says one second; the slack is for a loaded 2-core machine.
	if d := time.Since(start); d > 2500*time.Millisecond {
		t.Errorf("connection cut %v after its context ended, want about 1 s", d)
	}
}

// dialRaw dials a files WebSocket and returns the TCP connection under it.
func dialRaw(t testing.TB, u string) (*websocket.Conn, net.Conn) {
	t.Helper()
	var raw net.Conn
	hc := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := (&net.Dialer{}).DialContext(ctx, network, addr)
		raw = c
		return c, err
	}}}
	t.Cleanup(hc.CloseIdleConnections)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, _, err := websocket.Dial(ctx, u, &websocket.DialOptions{HTTPClient: hc, Subprotocols: []string{channels.FilesProtocol}})
	if err != nil {
		t.Fatal(err)
	}
	conn.SetReadLimit(2 << 20)
	return conn, raw
}

// waitStalled waits until the bytes queued unread on raw stop growing:
// the sender's buffers are full and its write is blocked.
func waitStalled(t testing.TB, raw net.Conn) {
	t.Helper()
	sc, err := raw.(*net.TCPConn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	queued := func() int {
		var n int
		_ = sc.Control(func(fd uintptr) { n, _ = unix.IoctlGetInt(int(fd), unix.SIOCINQ) })
		return n
	}
	last, same := -1, 0
	for range 400 { // 20 s at most
		n := queued()
		if n == last && n > 0 {
			if same++; same == 5 {
				return
			}
		} else {
			same = 0
		}
		last = n
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("the server's writes never stalled (%d bytes queued)", last)
}
