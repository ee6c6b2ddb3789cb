package channels_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/nimbus/gateway/channels"
	"github.com/nimbus/gateway/problem"
)

// filesServer serves one sandbox root on both faces: WebSocket on /ws,
// HTTP on /files/{path}. served gets ServeFiles' result per connection.
type filesServer struct {
	*httptest.Server
	root   string
	served chan error
	// ctx is the lifetime of WebSocket connections; end it with cancel.
	ctx    context.Context
	cancel context.CancelCauseFunc
	// httpDone gets FilesHTTP's result per request.
	httpDone chan error
}

func newFilesServer(t testing.TB, o channels.FilesOptions) *filesServer {
	t.Helper()
	return newFilesServerIn(t, t.TempDir(), o)
}

// newFilesServerIn is newFilesServer with the root (and the outside the
// confinement tests use) in dir.
func newFilesServerIn(t testing.TB, dir string, o channels.FilesOptions) *filesServer {
	t.Helper()
	root := filepath.Join(dir, "root")
	if err := os.Mkdir(root, 0o755); err != nil {
		t.Fatal(err)
	}
	fs := &filesServer{root: root, served: make(chan error, 100), httpDone: make(chan error, 100)}
	fs.ctx, fs.cancel = context.WithCancelCause(context.Background())
	fs.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if p, ok := strings.CutPrefix(r.URL.Path, "/files/"); ok {
			err := channels.FilesHTTP(w, r, root, p, o)
			var pe *problem.Error
			if errors.As(err, &pe) {
				writeProblem(w, pe)
			}
			fs.httpDone <- err
			return
		}
		c, err := websocket.Accept(w, r, &websocket.AcceptOptions{Subprotocols: []string{channels.FilesProtocol}})
		if err != nil {
			return
		}
		err = channels.ServeFiles(fs.ctx, c, root, o)
		if ce, ok := channels.AsClose(err); ok {
			_ = c.Close(ce.Code, ce.Reason)
		} else {
			_ = c.Close(websocket.StatusNormalClosure, "")
		}
		fs.served <- err
	}))
	t.Cleanup(func() {
		fs.cancel(errors.New("test over"))
		fs.Server.Close()
	})
	return fs
}

// writeProblem is a stand-in for the proxy's problem+json writer.
func writeProblem(w http.ResponseWriter, pe *problem.Error) {
	w.Header().Set("Content-Type", "application/problem+json")
	w.WriteHeader(pe.Code.Status())
	_ = json.NewEncoder(w).Encode(map[string]any{"code": pe.Code, "detail": pe.Detail, "status": pe.Code.Status()})
}

// wsFiles is a test client of nimbus.files.v1: one reader goroutine routes
// answers and data by id.
type wsFiles struct {
	t    testing.TB
	conn *websocket.Conn

	wmu sync.Mutex // one writer at a time

	mu      sync.Mutex
	pending map[uint32]*pend
	nextID  uint32
	// closed when the reader ends; err is why.
	done chan struct{}
	err  error
}

type pend struct {
	data func([]byte)
	resp chan filesResp
}

type fileEntry struct {
	Name, Type, Mode, MTime string
	Size                    int64
}

type filesResp struct {
	ID    uint32 `json:"id"`
	OK    bool   `json:"ok"`
	Error *struct {
		Code    string `json:"code"`
		Message string `json:"message"`
	} `json:"error"`
	Entry     *fileEntry  `json:"entry"`
	Entries   []fileEntry `json:"entries"`
	Truncated bool        `json:"truncated"`
	Bytes     int64       `json:"bytes"`
	Size      int64       `json:"size"`
	SHA256    string      `json:"sha256"`
}

func (r filesResp) code() string {
	if r.Error == nil {
		return ""
	}
	return r.Error.Code
}

func dialFiles(t testing.TB, fs *filesServer) *wsFiles {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, _, err := websocket.Dial(ctx, "ws"+strings.TrimPrefix(fs.URL, "http")+"/ws", &websocket.DialOptions{Subprotocols: []string{channels.FilesProtocol}})
	if err != nil {
		t.Fatal(err)
	}
	conn.SetReadLimit(64 << 20)
	c := &wsFiles{t: t, conn: conn, pending: map[uint32]*pend{}, done: make(chan struct{}), nextID: 1}
	go c.read()
	t.Cleanup(func() { _ = conn.CloseNow(); <-c.done })
	return c
}

func (c *wsFiles) read() {
	defer close(c.done)
	var buf bytes.Buffer
	for {
		typ, mr, err := c.conn.Reader(context.Background())
		if err == nil {
			buf.Reset()
			_, err = buf.ReadFrom(mr)
		}
		if err != nil {
			c.err = err
			return
		}
		b := buf.Bytes()
		if typ == websocket.MessageBinary {
			if len(b) < 4 {
				c.err = errors.New("short data message")
				return
			}
			id := binary.BigEndian.Uint32(b)
			c.mu.Lock()
			p := c.pending[id]
			c.mu.Unlock()
			if p == nil || p.data == nil {
				c.err = fmt.Errorf("data for unexpected id %d", id)
				return
			}
			p.data(b[4:])
			continue
		}
		var r filesResp
		if err := json.Unmarshal(b, &r); err != nil {
			c.err = err
			return
		}
		c.mu.Lock()
		p := c.pending[r.ID]
		delete(c.pending, r.ID)
		c.mu.Unlock()
		if p == nil {
			c.err = fmt.Errorf("answer for unexpected id %d: %s", r.ID, b)
			return
		}
		p.resp <- r
	}
}

// start registers a request and returns its id and answer channel.
func (c *wsFiles) start(data func([]byte)) (uint32, chan filesResp) {
	c.mu.Lock()
	defer c.mu.Unlock()
	id := c.nextID
	c.nextID++
	p := &pend{data: data, resp: make(chan filesResp, 1)}
	c.pending[id] = p
	return id, p.resp
}

func (c *wsFiles) sendJSON(v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	c.wmu.Lock()
	defer c.wmu.Unlock()
	return c.conn.Write(context.Background(), websocket.MessageText, b)
}

func (c *wsFiles) sendData(id uint32, p []byte) error {
	b := make([]byte, 4+len(p))
	binary.BigEndian.PutUint32(b, id)
	copy(b[4:], p)
	c.wmu.Lock()
	defer c.wmu.Unlock()
	return c.conn.Write(context.Background(), websocket.MessageBinary, b)
}

func (c *wsFiles) wait(ch chan filesResp) filesResp {
	c.t.Helper()
	select {
	case r := <-ch:
		return r
	case <-c.done:
		c.t.Fatalf("connection ended: %v", c.err)
	case <-time.After(60 * time.Second):
		c.t.Fatal("no answer")
	}
	return filesResp{}
}

// do sends a request (fields merged with id) and waits for its answer.
func (c *wsFiles) do(req map[string]any) filesResp {
	c.t.Helper()
	id, ch := c.start(nil)
	req["id"] = id
	if err := c.sendJSON(req); err != nil {
		c.t.Fatal(err)
	}
	return c.wait(ch)
}

// write uploads src in chunks of chunk bytes; size < 0 announces none.
func (c *wsFiles) write(path string, src io.Reader, size int64, chunk int) filesResp {
	c.t.Helper()
	id, ch := c.start(nil)
	req := map[string]any{"id": id, "op": "write", "path": path}
	if size >= 0 {
		req["size"] = size
	}
	if err := c.sendJSON(req); err != nil {
		c.t.Fatal(err)
	}
	buf := make([]byte, chunk)
	for {
		n, err := io.ReadFull(src, buf)
		if n > 0 {
			if err := c.sendData(id, buf[:n]); err != nil {
				c.t.Fatal(err)
			}
		}
		if err != nil {
			break
		}
	}
	if err := c.sendJSON(map[string]any{"id": id, "op": "end"}); err != nil {
		c.t.Fatal(err)
	}
	return c.wait(ch)
}

// readFile reads path into w and returns the final answer.
func (c *wsFiles) readFile(path string, offset, length int64, w io.Writer) filesResp {
	c.t.Helper()
	id, ch := c.start(func(p []byte) { _, _ = w.Write(p) })
	if err := c.sendJSON(map[string]any{"id": id, "op": "read", "path": path, "offset": offset, "length": length}); err != nil {
		c.t.Fatal(err)
	}
	return c.wait(ch)
}

func sum(b []byte) string { s := sha256.Sum256(b); return hex.EncodeToString(s[:]) }

func randBytes(seed uint64, n int) []byte {
	b := make([]byte, n)
	_, _ = rand.NewChaCha8(seedOf(seed)).Read(b)
	return b
}

func seedOf(s uint64) (seed [32]byte) {
	binary.LittleEndian.PutUint64(seed[:], s)
	return seed
}

func mustWrite(t testing.TB, name string, b []byte) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(name), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(name, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

func wantCode(t testing.TB, what string, r filesResp, code string) {
	t.Helper()
	if r.code() != code || (code == "") != r.OK {
		t.Fatalf("%s: got ok=%v error %+v, want code %q", what, r.OK, r.Error, code)
	}
}

// noTemps fails if dir holds an upload's temp file.
func noTemps(t testing.TB, dir string) {
	t.Helper()
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), ".nimbus-") {
			t.Errorf("temp file left behind: %s", e.Name())
		}
	}
}

func TestFilesOps(t *testing.T) {
	t.Parallel()
	fs := newFilesServer(t, channels.FilesOptions{})
	c := dialFiles(t, fs)
	data := randBytes(1, 3<<20+17)

	// write: creates missing parents, announces its size, sets a mode.
	id, ch := c.start(nil)
	_ = c.sendJSON(map[string]any{"id": id, "op": "write", "path": "/a/b/f.bin", "size": len(data), "mode": "0600"})
	for off := 0; off < len(data); off += 1 << 20 {
		_ = c.sendData(id, data[off:min(off+1<<20, len(data))])
	}
	_ = c.sendJSON(map[string]any{"id": id, "op": "end"})
	r := c.wait(ch)
	wantCode(t, "write", r, "")
	if r.Bytes != int64(len(data)) || r.SHA256 != sum(data) {
		t.Fatalf("write answer %+v", r)
	}
	got, err := os.ReadFile(filepath.Join(fs.root, "a/b/f.bin"))
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("file on disk: %v", err)
	}
	noTemps(t, filepath.Join(fs.root, "a/b"))

	// stat
	r = c.do(map[string]any{"op": "stat", "path": "a/b/f.bin"})
	wantCode(t, "stat", r, "")
	if e := r.Entry; e == nil || e.Name != "f.bin" || e.Type != "file" || e.Size != int64(len(data)) || e.Mode != "0600" || !strings.HasSuffix(e.MTime, "Z") {
		t.Fatalf("stat entry %+v", r.Entry)
	}
	if _, err := time.Parse(time.RFC3339Nano, r.Entry.MTime); err != nil {
		t.Fatal(err)
	}
	r = c.do(map[string]any{"op": "stat", "path": "/"})
	if r.Entry == nil || r.Entry.Type != "dir" || r.Entry.Name != "/" {
		t.Fatalf("stat root %+v", r)
	}
	wantCode(t, "stat missing", c.do(map[string]any{"op": "stat", "path": "nope"}), "not_found")

	// read: whole, then a range.
	var buf bytes.Buffer
	r = c.readFile("a/b/f.bin", 0, 0, &buf)
	wantCode(t, "read", r, "")
	if r.Bytes != int64(len(data)) || r.SHA256 != sum(data) || r.Size != int64(len(data)) || !bytes.Equal(buf.Bytes(), data) {
		t.Fatalf("read answer %+v, %d bytes", r, buf.Len())
	}
	buf.Reset()
	r = c.readFile("a/b/f.bin", 1000, 300000, &buf)
	if r.Bytes != 300000 || !bytes.Equal(buf.Bytes(), data[1000:301000]) || r.SHA256 != sum(data[1000:301000]) {
		t.Fatalf("range read %+v", r)
	}
	buf.Reset()
	r = c.readFile("a/b/f.bin", int64(len(data)), 0, &buf)
	if !r.OK || r.Bytes != 0 {
		t.Fatalf("read at EOF %+v", r)
	}
	wantCode(t, "read past end", c.readFile("a/b/f.bin", int64(len(data))+1, 0, &buf), "invalid_argument")
	wantCode(t, "read dir", c.readFile("a", 0, 0, &buf), "invalid_argument")
	wantCode(t, "read missing", c.readFile("a/zz", 0, 0, &buf), "not_found")

	// mkdir
	wantCode(t, "mkdir", c.do(map[string]any{"op": "mkdir", "path": "d"}), "")
	wantCode(t, "mkdir again", c.do(map[string]any{"op": "mkdir", "path": "d"}), "already_exists")
	wantCode(t, "mkdir -p existing", c.do(map[string]any{"op": "mkdir", "path": "d", "parents": true}), "")
	wantCode(t, "mkdir no parent", c.do(map[string]any{"op": "mkdir", "path": "x/y/z"}), "not_found")
	wantCode(t, "mkdir -p", c.do(map[string]any{"op": "mkdir", "path": "x/y/z", "parents": true}), "")
	wantCode(t, "mkdir over file", c.do(map[string]any{"op": "mkdir", "path": "a/b/f.bin", "parents": true}), "already_exists")

	// list: sorted, typed.
	if err := os.Symlink("a", filepath.Join(fs.root, "ln")); err != nil {
		t.Fatal(err)
	}
	r = c.do(map[string]any{"op": "list", "path": ""})
	wantCode(t, "list", r, "")
	var names []string
	for _, e := range r.Entries {
		names = append(names, e.Name+":"+e.Type)
	}
	if strings.Join(names, ",") != "a:dir,d:dir,ln:symlink,x:dir" || r.Truncated {
		t.Fatalf("list %v", names)
	}
	r = c.do(map[string]any{"op": "list", "path": "d"})
	if !r.OK || r.Entries == nil || len(r.Entries) != 0 {
		t.Fatalf("empty list %+v", r)
	}
	wantCode(t, "list file", c.do(map[string]any{"op": "list", "path": "a/b/f.bin"}), "invalid_argument")

	// rename
	wantCode(t, "rename", c.do(map[string]any{"op": "rename", "from": "a/b/f.bin", "to": "d/g.bin"}), "")
	if _, err := os.Stat(filepath.Join(fs.root, "d/g.bin")); err != nil {
		t.Fatal(err)
	}
	wantCode(t, "rename missing", c.do(map[string]any{"op": "rename", "from": "a/b/f.bin", "to": "d/h"}), "not_found")
	wantCode(t, "rename root", c.do(map[string]any{"op": "rename", "from": "/", "to": "d/h"}), "invalid_argument")

	// remove
	wantCode(t, "remove non-empty", c.do(map[string]any{"op": "remove", "path": "d"}), "invalid_argument")
	wantCode(t, "remove file", c.do(map[string]any{"op": "remove", "path": "d/g.bin"}), "")
	wantCode(t, "remove empty dir", c.do(map[string]any{"op": "remove", "path": "d"}), "")
	wantCode(t, "remove tree", c.do(map[string]any{"op": "remove", "path": "x", "recursive": true}), "")
	wantCode(t, "remove missing", c.do(map[string]any{"op": "remove", "path": "x", "recursive": true}), "not_found")
	wantCode(t, "remove symlink", c.do(map[string]any{"op": "remove", "path": "ln"}), "")
	if _, err := os.Stat(filepath.Join(fs.root, "a/b")); err != nil {
		t.Fatal("removing a symlink removed its target")
	}
	wantCode(t, "remove root", c.do(map[string]any{"op": "remove", "path": "/", "recursive": true}), "invalid_argument")

	// write: size mismatch, replace keeps mode, write over a directory.
	r = c.write("short", bytes.NewReader([]byte("abc")), 4, 2)
	wantCode(t, "short write", r, "invalid_argument")
	if _, err := os.Stat(filepath.Join(fs.root, "short")); !os.IsNotExist(err) {
		t.Fatal("a short write left a file")
	}
	mustWrite(t, filepath.Join(fs.root, "run.sh"), []byte("old"))
	_ = os.Chmod(filepath.Join(fs.root, "run.sh"), 0o750)
	wantCode(t, "replace", c.write("run.sh", strings.NewReader("new"), -1, 2), "")
	if fi, _ := os.Stat(filepath.Join(fs.root, "run.sh")); fi.Mode().Perm() != 0o750 {
		t.Fatalf("replaced file mode %v", fi.Mode())
	}
	wantCode(t, "write over dir", c.write("a", strings.NewReader("x"), -1, 1), "invalid_argument")
	wantCode(t, "write bad mode", c.do(map[string]any{"op": "write", "path": "m", "mode": "999"}), "invalid_argument")
	wantCode(t, "write setuid", c.do(map[string]any{"op": "write", "path": "m", "mode": "4755"}), "invalid_argument")
	wantCode(t, "write setgid", c.do(map[string]any{"op": "write", "path": "m", "mode": "2711"}), "invalid_argument")
	// Replacing a set-id file keeps its permission bits, not the set-id.
	_ = os.Chmod(filepath.Join(fs.root, "run.sh"), 0o4755)
	wantCode(t, "replace setuid", c.write("run.sh", strings.NewReader("newer"), -1, 2), "")
	if fi, _ := os.Stat(filepath.Join(fs.root, "run.sh")); fi.Mode()&(os.ModeSetuid|os.ModeSetgid) != 0 || fi.Mode().Perm() != 0o755 {
		t.Fatalf("replaced set-id file mode %v", fi.Mode())
	}
	if _, err := os.Stat(filepath.Join(fs.root, "m")); !os.IsNotExist(err) {
		t.Fatal("a refused mode left a file")
	}
	noTemps(t, fs.root)
}

// TestFilesConcurrent: ten reads and ten writes in flight at once on one
// connection, their data messages interleaved, all correct.
func TestFilesConcurrent(t *testing.T) {
	t.Parallel()
	fs := newFilesServer(t, channels.FilesOptions{})
	c := dialFiles(t, fs)
	const n, size = 10, 3<<20 + 5
	srcs := make([][]byte, n)
	for i := range n {
		srcs[i] = randBytes(uint64(100+i), size)
		mustWrite(t, filepath.Join(fs.root, fmt.Sprintf("r%d", i)), srcs[i])
	}
	var wg sync.WaitGroup
	errs := make(chan error, 2*n)
	for i := range n {
		wg.Add(2)
		go func() {
			defer wg.Done()
			h := sha256.New()
			id, ch := c.start(func(p []byte) { h.Write(p) })
			_ = c.sendJSON(map[string]any{"id": id, "op": "read", "path": fmt.Sprintf("r%d", i)})
			r := <-ch
			if !r.OK || r.SHA256 != sum(srcs[i]) || hex.EncodeToString(h.Sum(nil)) != r.SHA256 {
				errs <- fmt.Errorf("read %d: %+v", i, r)
			}
		}()
		go func() {
			defer wg.Done()
			data := randBytes(uint64(200+i), size)
			id, ch := c.start(nil)
			_ = c.sendJSON(map[string]any{"id": id, "op": "write", "path": fmt.Sprintf("w/%d", i), "size": size})
			for off := 0; off < size; off += 64 << 10 {
				_ = c.sendData(id, data[off:min(off+64<<10, size)])
			}
			_ = c.sendJSON(map[string]any{"id": id, "op": "end"})
			r := <-ch
			if !r.OK || r.SHA256 != sum(data) {
				errs <- fmt.Errorf("write %d: %+v", i, r)
				return
			}
			if got, _ := os.ReadFile(filepath.Join(fs.root, fmt.Sprintf("w/%d", i))); !bytes.Equal(got, data) {
				errs <- fmt.Errorf("write %d: wrong content on disk", i)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

// TestFilesWriteCutOff: a client that vanishes mid-write leaves nothing
// at the target and no temp file.
func TestFilesWriteCutOff(t *testing.T) {
	t.Parallel()
	fs := newFilesServer(t, channels.FilesOptions{})
	c := dialFiles(t, fs)
	mustWrite(t, filepath.Join(fs.root, "keep"), []byte("old"))
	for _, p := range []string{"new/file", "keep"} {
		id, _ := c.start(nil)
		_ = c.sendJSON(map[string]any{"id": id, "op": "write", "path": p, "size": 1 << 20})
		_ = c.sendData(id, make([]byte, 512<<10))
	}
	// A request answered after the data proves the server has the
	// temp files open.
	if r := c.do(map[string]any{"op": "stat", "path": "/"}); !r.OK {
		t.Fatal(r)
	}
	if ents, _ := os.ReadDir(filepath.Join(fs.root, "new")); len(ents) != 1 {
		t.Fatalf("want one temp file, got %v", ents)
	}
	_ = c.conn.CloseNow()
	if err := <-fs.served; err != nil {
		t.Fatalf("ServeFiles: %v", err)
	}
	if _, err := os.Stat(filepath.Join(fs.root, "new/file")); !os.IsNotExist(err) {
		t.Fatal("cut-off write left a file")
	}
	if b, _ := os.ReadFile(filepath.Join(fs.root, "keep")); string(b) != "old" {
		t.Fatalf("cut-off write replaced the target: %q", b)
	}
	noTemps(t, filepath.Join(fs.root, "new"))
	noTemps(t, fs.root)
}

// TestFilesLimits: MaxFileSize, announced or discovered midway.
func TestFilesLimits(t *testing.T) {
	t.Parallel()
	fs := newFilesServer(t, channels.FilesOptions{MaxFileSize: 1000})
	c := dialFiles(t, fs)
	wantCode(t, "announced", c.write("big", bytes.NewReader(make([]byte, 1001)), 1001, 100), "payload_too_large")
	wantCode(t, "streamed", c.write("big", bytes.NewReader(make([]byte, 5000)), -1, 300), "payload_too_large")
	wantCode(t, "at the limit", c.write("ok", bytes.NewReader(make([]byte, 1000)), -1, 300), "")
	// The ids of the failed writes were swallowed with their data and end:
	// the connection goes on.
	wantCode(t, "after", c.do(map[string]any{"op": "stat", "path": "ok"}), "")
	if _, err := os.Stat(filepath.Join(fs.root, "big")); !os.IsNotExist(err) {
		t.Fatal("an oversized write left a file")
	}
	noTemps(t, fs.root)
}

// TestFilesProtocolErrors: a bad request with an id gets an error answer;
// one without an id closes with 1008.
func TestFilesProtocolErrors(t *testing.T) {
	t.Parallel()
	fs := newFilesServer(t, channels.FilesOptions{})
	c := dialFiles(t, fs)
	wantCode(t, "unknown op", c.do(map[string]any{"op": "chmod", "path": "x"}), "invalid_argument")
	wantCode(t, "unknown field", c.do(map[string]any{"op": "stat", "path": "x", "recursiv": true}), "invalid_argument")
	wantCode(t, "bad type", c.do(map[string]any{"op": "read", "path": "x", "offset": "0"}), "invalid_argument")

	// Data for an id that is not a write.
	id, ch := c.start(nil)
	_ = c.sendData(id, []byte("stray"))
	wantCode(t, "stray data", c.wait(ch), "invalid_argument")
	// End for an id that is not a write.
	id, ch = c.start(nil)
	_ = c.sendJSON(map[string]any{"id": id, "op": "end"})
	wantCode(t, "stray end", c.wait(ch), "invalid_argument")

	// A duplicate id in flight: the open write keeps going.
	id, ch = c.start(nil)
	_ = c.sendJSON(map[string]any{"id": id, "op": "write", "path": "dup"})
	dupCh := make(chan filesResp, 1)
	c.mu.Lock()
	c.pending[id] = &pend{resp: dupCh}
	c.mu.Unlock()
	_ = c.sendJSON(map[string]any{"id": id, "op": "stat", "path": "/"})
	wantCode(t, "duplicate", c.wait(dupCh), "invalid_argument")
	c.mu.Lock()
	c.pending[id] = &pend{resp: ch}
	c.mu.Unlock()
	_ = c.sendData(id, []byte("hello"))
	_ = c.sendJSON(map[string]any{"id": id, "op": "end"})
	if r := c.wait(ch); !r.OK || r.Bytes != 5 {
		t.Fatalf("write after duplicate: %+v", r)
	}

	for name, msg := range map[string]struct {
		typ  websocket.MessageType
		b    []byte
		code websocket.StatusCode
	}{
		"malformed":  {websocket.MessageText, []byte(`{"op":`), websocket.StatusPolicyViolation},
		"no id":      {websocket.MessageText, []byte(`{"op":"stat","path":"/"}`), websocket.StatusPolicyViolation},
		"short data": {websocket.MessageBinary, []byte{0, 1}, websocket.StatusPolicyViolation},
		"too big":    {websocket.MessageBinary, make([]byte, 4+1<<20+1), websocket.StatusMessageTooBig},
	} {
		t.Run(name, func(t *testing.T) {
			c := dialFiles(t, fs)
			_ = c.conn.Write(context.Background(), msg.typ, msg.b)
			<-c.done
			if got := websocket.CloseStatus(c.err); got != msg.code {
				t.Fatalf("closed with %v (%v), want %d", got, c.err, msg.code)
			}
		})
	}
}

// TestFilesContextEnd: when the connection's context ends, ServeFiles
// returns its cause, and an open write leaves nothing behind.
func TestFilesContextEnd(t *testing.T) {
	t.Parallel()
	fs := newFilesServer(t, channels.FilesOptions{})
	c := dialFiles(t, fs)
	id, _ := c.start(nil)
	_ = c.sendJSON(map[string]any{"id": id, "op": "write", "path": "half", "size": 100})
	_ = c.sendData(id, make([]byte, 50))
	if r := c.do(map[string]any{"op": "stat", "path": "/"}); !r.OK {
		t.Fatal(r)
	}
	fs.cancel(channels.Close(channels.StatusExpired, "session expired"))
	err := <-fs.served
	if ce, ok := channels.AsClose(err); !ok || ce.Code != channels.StatusExpired {
		t.Fatalf("ServeFiles returned %v", err)
	}
	<-c.done
	if got := websocket.CloseStatus(c.err); got != channels.StatusExpired {
		t.Fatalf("client saw %v", c.err)
	}
	// The reader removes the temp file once the caller's close ends it.
	deadline := time.Now().Add(5 * time.Second)
	for {
		ents, _ := os.ReadDir(fs.root)
		if len(ents) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("left behind: %v", ents)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestFilesRootMissing: a root that cannot be opened closes with 4502.
func TestFilesRootMissing(t *testing.T) {
	t.Parallel()
	fs := newFilesServer(t, channels.FilesOptions{})
	if err := os.Remove(fs.root); err != nil {
		t.Fatal(err)
	}
	c := dialFiles(t, fs)
	<-c.done
	if got := websocket.CloseStatus(c.err); got != channels.StatusTargetUnavailable {
		t.Fatalf("client saw %v", c.err)
	}
}
