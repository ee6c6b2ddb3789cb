package proxy_test

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/nimbus/gateway/client"
)

// bigFile is the size of the end-to-end transfer tests; SPEC's 1 GiB run
// is `go test ./proxy -run TestFilesBigThroughGateway -files.size=1073741824`.
var bigFile = flag.Int64("files.size", 128<<20, "bytes moved by TestFilesBigThroughGateway")

// prng is a fast deterministic byte stream, so big transfers never sit in
// memory.
type prng struct{ r *rand.ChaCha8 }

func newPRNG(seed byte) *prng {
	var s [32]byte
	s[0] = seed
	return &prng{rand.NewChaCha8(s)}
}

func (p *prng) Read(b []byte) (int, error) { return p.r.Read(b) }

// sandboxRoot returns the host path of a sandbox's file root.
func (e *env) sandboxRoot(id string) string {
	e.t.Helper()
	sb, err := e.catalog.GetSandbox(context.Background(), "demo", id)
	if err != nil {
		e.t.Fatal(err)
	}
	return sb.Root
}

func rssKiB(t testing.TB) int64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			n, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			return n
		}
	}
	return 0
}

// TestFilesBigThroughGateway uploads and downloads a big file through the
// HTTP face and the WebSocket face of the gateway, checking sha256 end to
// end and that the process's memory stays flat.
func TestFilesBigThroughGateway(t *testing.T) {
	e := newEnv(t, envOptions{quiet: true})
	tok := e.sandbox("sbx-files", false, "/bin/cat")
	_, urls := e.openURL(tok, "sbx-files", 0, "files")
	c := client.New(e.URL, "demo", tok)
	ctx := context.Background()
	size := *bigFile
	rss0 := rssKiB(t)

	// HTTP face: upload, then download.
	h := sha256.New()
	res, err := c.Put(ctx, urls["files"], "big/http.bin", io.TeeReader(io.LimitReader(newPRNG(1), size), h), size, nil)
	if err != nil {
		t.Fatal(err)
	}
	want := hex.EncodeToString(h.Sum(nil))
	if res.SHA256 != want || res.Bytes != size {
		t.Fatalf("upload answered %d bytes %s, sent %d %s", res.Bytes, res.SHA256, size, want)
	}
	h.Reset()
	n, err := c.Download(ctx, urls["files"], "big/http.bin", h, 0, nil)
	if err != nil || n != size || hex.EncodeToString(h.Sum(nil)) != want {
		t.Fatalf("download: %d bytes, %v, sha %x", n, err, h.Sum(nil))
	}

	// WebSocket face: write, then read back.
	ws := dialFiles(t, urls["files"])
	h.Reset()
	got := wsWrite(t, ws, 1, "big/ws.bin", io.TeeReader(io.LimitReader(newPRNG(2), size), h))
	want = hex.EncodeToString(h.Sum(nil))
	if got["sha256"] != want {
		t.Fatalf("ws write answered %v, want sha %s", got, want)
	}
	h.Reset()
	final := wsRead(t, ws, 2, "big/ws.bin", h)
	if final["sha256"] != want || hex.EncodeToString(h.Sum(nil)) != want || final["bytes"] != float64(size) {
		t.Fatalf("ws read %v, got sha %x", final, h.Sum(nil))
	}
	ws.Close(websocket.StatusNormalClosure, "")

	grew := rssKiB(t) - rss0
	t.Logf("moved %d MiB four times through the gateway; RSS grew %d KiB", size>>20, grew)
	if grew > 64<<10 {
		t.Fatalf("RSS grew %d KiB moving %d MiB: memory is not flat", grew, size>>20)
	}
}

func dialFiles(t testing.TB, u string) *websocket.Conn {
	t.Helper()
	ws, _, err := websocket.Dial(context.Background(), u, &websocket.DialOptions{Subprotocols: []string{"nimbus.files.v1"}})
	if err != nil {
		t.Fatal(err)
	}
	ws.SetReadLimit(2 << 20)
	t.Cleanup(func() { ws.CloseNow() })
	return ws
}

// wsWrite sends a write request with r's bytes and returns the answer.
func wsWrite(t testing.TB, ws *websocket.Conn, id uint32, path string, r io.Reader) map[string]any {
	t.Helper()
	ctx := context.Background()
	req, _ := json.Marshal(map[string]any{"id": id, "op": "write", "path": path})
	if err := ws.Write(ctx, websocket.MessageText, req); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4+1<<20)
	binary.BigEndian.PutUint32(buf, id)
	for {
		n, err := io.ReadFull(r, buf[4:])
		if n > 0 {
			if err := ws.Write(ctx, websocket.MessageBinary, buf[:4+n]); err != nil {
				t.Fatal(err)
			}
		}
		if err != nil {
			break
		}
	}
	end, _ := json.Marshal(map[string]any{"id": id, "op": "end"})
	if err := ws.Write(ctx, websocket.MessageText, end); err != nil {
		t.Fatal(err)
	}
	for {
		typ, msg, err := ws.Read(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if typ == websocket.MessageText {
			var m map[string]any
			_ = json.Unmarshal(msg, &m)
			if m["id"] == float64(id) {
				return m
			}
		}
	}
}

// wsRead reads path into w and returns the final answer.
func wsRead(t testing.TB, ws *websocket.Conn, id uint32, path string, w io.Writer) map[string]any {
	t.Helper()
	ctx := context.Background()
	req, _ := json.Marshal(map[string]any{"id": id, "op": "read", "path": path})
	if err := ws.Write(ctx, websocket.MessageText, req); err != nil {
		t.Fatal(err)
	}
	for {
		typ, msg, err := ws.Read(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if typ == websocket.MessageBinary {
			if binary.BigEndian.Uint32(msg) == id {
				w.Write(msg[4:])
			}
			continue
		}
		var m map[string]any
		_ = json.Unmarshal(msg, &m)
		if m["id"] == float64(id) {
			return m
		}
	}
}

// TestFilesUploadCutOff: an upload cut off halfway leaves nothing at the
// target path, on both faces.
func TestFilesUploadCutOff(t *testing.T) {
	e := newEnv(t, envOptions{})
	tok := e.sandbox("sbx-files", false, "/bin/cat")
	_, urls := e.openURL(tok, "sbx-files", 0, "files")
	root := e.sandboxRoot("sbx-files")

	// HTTP: the body fails after 4 MiB of a declared 16 MiB.
	u, err := client.FilesHTTPURL(urls["files"], "cut/http.bin", nil)
	if err != nil {
		t.Fatal(err)
	}
	req, _ := http.NewRequest(http.MethodPut, u, io.MultiReader(io.LimitReader(newPRNG(3), 4<<20), errReader{}))
	req.ContentLength = 16 << 20
	if resp, err := http.DefaultClient.Do(req); err == nil {
		resp.Body.Close()
		if resp.StatusCode < 300 {
			t.Fatalf("a cut upload answered %d", resp.StatusCode)
		}
	}
	// WebSocket: the client vanishes mid-write.
	ws := dialFiles(t, urls["files"])
	ctx := context.Background()
	req2, _ := json.Marshal(map[string]any{"id": 1, "op": "write", "path": "cut/ws.bin"})
	ws.Write(ctx, websocket.MessageText, req2)
	chunk := make([]byte, 4+1<<20)
	binary.BigEndian.PutUint32(chunk, 1)
	for i := 0; i < 3; i++ {
		ws.Write(ctx, websocket.MessageBinary, chunk)
	}
	ws.CloseNow()

	deadline := time.Now().Add(5 * time.Second)
	for {
		entries, _ := os.ReadDir(filepath.Join(root, "cut"))
		if len(entries) == 0 {
			break // neither the files nor their temp files are left
		}
		if time.Now().After(deadline) {
			var names []string
			for _, en := range entries {
				names = append(names, en.Name())
			}
			t.Fatalf("cut uploads left %v", names)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

type errReader struct{}

func (errReader) Read([]byte) (int, error) { return 0, errors.New("client went away") }

// TestFilesTokenScope: the HTTP face takes only a files token of that
// session, of an open session.
func TestFilesTokenScope(t *testing.T) {
	e := newEnv(t, envOptions{})
	tok := e.sandbox("sbx-files", false, "/bin/cat")
	sid, urls := e.openURL(tok, "sbx-files", 0, "files", "stdio")
	fileURL := func(u string) string {
		s, err := client.FilesHTTPURL(strings.Replace(u, "/stdio?", "/files?", 1), "a.txt", nil)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	resp, err := http.Get(fileURL(urls["stdio"]))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 403 {
		t.Fatalf("stdio token on files: %d", resp.StatusCode)
	}
	e.do(http.MethodPost, "/v1/tenants/demo/sessions/"+sid+"/close", tok, nil)
	resp, err = http.Get(fileURL(urls["files"]))
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 409 || !strings.Contains(string(body), "session_not_open") {
		t.Fatalf("files after close: %d %s", resp.StatusCode, body)
	}
}

// TestFilesConcurrentOnOneConnection: ten reads and writes in flight on one
// WebSocket, interleaved, all correct.
func TestFilesConcurrentOnOneConnection(t *testing.T) {
	e := newEnv(t, envOptions{})
	tok := e.sandbox("sbx-files", false, "/bin/cat")
	_, urls := e.openURL(tok, "sbx-files", 0, "files")
	root := e.sandboxRoot("sbx-files")
	const n, size = 10, 3 << 20
	sums := map[string]string{}
	for i := 0; i < n; i++ {
		name := fmt.Sprintf("r%d.bin", i)
		h := sha256.New()
		f, _ := os.Create(filepath.Join(root, name))
		io.Copy(io.MultiWriter(f, h), io.LimitReader(newPRNG(byte(10+i)), size))
		f.Close()
		sums[name] = hex.EncodeToString(h.Sum(nil))
	}
	ws := dialFiles(t, urls["files"])
	ctx := context.Background()
	var mu sync.Mutex // one writer at a time on the client socket
	send := func(typ websocket.MessageType, b []byte) {
		mu.Lock()
		defer mu.Unlock()
		if err := ws.Write(ctx, typ, b); err != nil {
			t.Error(err)
		}
	}
	// Start ten reads and ten writes, interleaving the writes' data.
	for i := 0; i < n; i++ {
		r, _ := json.Marshal(map[string]any{"id": 100 + i, "op": "read", "path": fmt.Sprintf("r%d.bin", i)})
		send(websocket.MessageText, r)
		w, _ := json.Marshal(map[string]any{"id": 200 + i, "op": "write", "path": fmt.Sprintf("w%d.bin", i)})
		send(websocket.MessageText, w)
	}
	writeSums := map[uint32]string{}
	var hs [n]interface {
		io.Writer
		Sum([]byte) []byte
	}
	streams := make([]io.Reader, n)
	for i := range streams {
		streams[i] = io.LimitReader(newPRNG(byte(50+i)), size)
		hs[i] = sha256.New()
	}
	buf := make([]byte, 4+256<<10)
	for active := n; active > 0; {
		active = 0
		for i := 0; i < n; i++ {
			k, _ := io.ReadFull(streams[i], buf[4:])
			if k == 0 {
				continue
			}
			active++
			hs[i].Write(buf[4 : 4+k])
			binary.BigEndian.PutUint32(buf, uint32(200+i))
			send(websocket.MessageBinary, buf[:4+k])
		}
	}
	for i := 0; i < n; i++ {
		end, _ := json.Marshal(map[string]any{"id": 200 + i, "op": "end"})
		send(websocket.MessageText, end)
		writeSums[uint32(200+i)] = hex.EncodeToString(hs[i].Sum(nil))
	}
	readHash := map[uint32]interface {
		io.Writer
		Sum([]byte) []byte
	}{}
	done := 0
	rctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	for done < 2*n {
		typ, msg, err := ws.Read(rctx)
		if err != nil {
			t.Fatalf("after %d answers: %v", done, err)
		}
		if typ == websocket.MessageBinary {
			id := binary.BigEndian.Uint32(msg)
			if readHash[id] == nil {
				readHash[id] = sha256.New()
			}
			readHash[id].Write(msg[4:])
			continue
		}
		var m map[string]any
		json.Unmarshal(msg, &m)
		id := uint32(m["id"].(float64))
		if m["ok"] != true {
			t.Fatalf("request %d failed: %s", id, msg)
		}
		done++
		switch {
		case id >= 200:
			if m["sha256"] != writeSums[id] {
				t.Errorf("write %d: sha %v, sent %s", id, m["sha256"], writeSums[id])
			}
		default:
			name := fmt.Sprintf("r%d.bin", id-100)
			if m["sha256"] != sums[name] || hex.EncodeToString(readHash[id].Sum(nil)) != sums[name] {
				t.Errorf("read %s: answered %v, received %x, file %s", name, m["sha256"], readHash[id].Sum(nil), sums[name])
			}
		}
	}
}

// TestFilesHTTPAudit: a transfer through the HTTP face is audited like a
// WebSocket connection — connect, then disconnect with its status — and
// a refused one as a denied connect.
func TestFilesHTTPAudit(t *testing.T) {
	e := newEnv(t, envOptions{})
	tok := e.sandbox("sbx-files", false, "/bin/cat")
	sid, urls := e.openURL(tok, "sbx-files", 0, "files")
	ctx := context.Background()
	c := client.New(e.URL, "demo", tok)
	if _, err := c.Put(ctx, urls["files"], "a.txt", strings.NewReader("hi"), 2, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Download(ctx, urls["files"], "missing.txt", io.Discard, 0, nil); err == nil {
		t.Fatal("download of a missing file succeeded")
	}
	e.do(http.MethodPost, "/v1/tenants/demo/sessions/"+sid+"/close", tok, nil)
	if _, err := c.Download(ctx, urls["files"], "a.txt", io.Discard, 0, nil); err == nil {
		t.Fatal("download after close succeeded")
	}
	var got []string // oldest first; the audit lists newest first
	for _, ev := range slices.Backward(e.auditFor(sid, "")) {
		if a := ev["action"].(string); a == "session.connect" || a == "session.disconnect" {
			code, _ := ev["code"].(string)
			got = append(got, fmt.Sprintf("%s %v %s", a, ev["outcome"], code))
		}
	}
	want := []string{
		"session.connect success ", "session.disconnect success http_201",
		"session.connect success ", "session.disconnect success http_404",
		"session.connect failure session_not_open",
	}
	if strings.Join(got, "; ") != strings.Join(want, "; ") {
		t.Fatalf("audit:\n got  %q\n want %q", got, want)
	}
}

// TestFilesAfterSandboxDelete: once its sandbox is deleted, a session's
// files URL reaches nothing (502), though the session is still open.
func TestFilesAfterSandboxDelete(t *testing.T) {
	e := newEnv(t, envOptions{})
	tok := e.sandbox("sbx-gone", false, "/bin/cat")
	_, urls := e.openURL(tok, "sbx-gone", 0, "files")
	c := client.New(e.URL, "demo", tok)
	ctx := context.Background()
	if _, err := c.Put(ctx, urls["files"], "a.txt", strings.NewReader("hi"), 2, nil); err != nil {
		t.Fatal(err)
	}
	if r := e.do(http.MethodDelete, "/v1/tenants/demo/sandboxes/sbx-gone", e.admin(), nil); r.Status != 200 {
		t.Fatalf("delete: %d %s", r.Status, r.Body)
	}
	_, err := c.Download(ctx, urls["files"], "a.txt", io.Discard, 0, nil)
	var ce *client.Error
	if !errors.As(err, &ce) || ce.Status != 502 || ce.Code != "bad_gateway" {
		t.Fatalf("download after the delete: %v", err)
	}
}
