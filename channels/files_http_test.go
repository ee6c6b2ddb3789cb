package channels_test

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nimbus/gateway/channels"
)

// fileURL is the HTTP face's URL of path, each segment escaped.
func (fs *filesServer) fileURL(p string) string {
	p, query, _ := strings.Cut(p, "?")
	segs := strings.Split(p, "/")
	for i, s := range segs {
		segs[i] = url.PathEscape(s)
	}
	u := fs.URL + "/files/" + strings.Join(segs, "/")
	if query != "" {
		u += "?" + query
	}
	return u
}

func (fs *filesServer) do(t testing.TB, method, p string, body io.Reader, hdr map[string]string) (*http.Response, []byte) {
	t.Helper()
	req, err := http.NewRequest(method, fs.fileURL(p), body)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	if r, ok := body.(*bytes.Reader); ok {
		req.ContentLength = int64(r.Len())
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	<-fs.httpDone
	return resp, b
}

func problemCode(b []byte) string {
	var p struct{ Code string }
	_ = json.Unmarshal(b, &p)
	return p.Code
}

func TestFilesHTTP(t *testing.T) {
	t.Parallel()
	fs := newFilesServer(t, channels.FilesOptions{MaxFileSize: 1 << 20})
	data := randBytes(7, 100000)
	mustWrite(t, filepath.Join(fs.root, "d/f.bin"), data)

	// GET: the file, its validators.
	resp, b := fs.do(t, "GET", "d/f.bin", nil, nil)
	etag := resp.Header.Get("ETag")
	if resp.StatusCode != 200 || !bytes.Equal(b, data) || resp.ContentLength != int64(len(data)) ||
		etag == "" || resp.Header.Get("Last-Modified") == "" || resp.Header.Get("Content-Type") != "application/octet-stream" ||
		resp.Header.Get("Accept-Ranges") != "bytes" {
		t.Fatalf("GET: %d %v", resp.StatusCode, resp.Header)
	}
	resp, b = fs.do(t, "HEAD", "/d/f.bin", nil, nil)
	if resp.StatusCode != 200 || len(b) != 0 || resp.ContentLength != int64(len(data)) || resp.Header.Get("ETag") != etag {
		t.Fatalf("HEAD: %d %v", resp.StatusCode, resp.Header)
	}
	resp, _ = fs.do(t, "GET", "d/f.bin", nil, map[string]string{"If-None-Match": etag})
	if resp.StatusCode != http.StatusNotModified {
		t.Fatalf("If-None-Match: %d", resp.StatusCode)
	}
	resp, b = fs.do(t, "GET", "d/f.bin", nil, map[string]string{"Range": "bytes=10-19"})
	if resp.StatusCode != http.StatusPartialContent || !bytes.Equal(b, data[10:20]) || resp.Header.Get("Content-Range") != fmt.Sprintf("bytes 10-19/%d", len(data)) {
		t.Fatalf("Range: %d %v", resp.StatusCode, resp.Header)
	}
	resp, b = fs.do(t, "GET", "d/f.bin", nil, map[string]string{"Range": "bytes=99990-"})
	if resp.StatusCode != http.StatusPartialContent || !bytes.Equal(b, data[99990:]) {
		t.Fatalf("open Range: %d", resp.StatusCode)
	}
	// net/http's own 416 and 412 answers come back as problem+json; 416
	// keeps the size in Content-Range (a resuming client reads it).
	resp, b = fs.do(t, "GET", "d/f.bin", nil, map[string]string{"Range": fmt.Sprintf("bytes=%d-", len(data))})
	if resp.StatusCode != http.StatusRequestedRangeNotSatisfiable || problemCode(b) != "range_not_satisfiable" ||
		resp.Header.Get("Content-Range") != fmt.Sprintf("bytes */%d", len(data)) || !strings.HasPrefix(resp.Header.Get("Content-Type"), "application/problem+json") {
		t.Fatalf("Range at end: %d %v %s", resp.StatusCode, resp.Header, b)
	}
	resp, b = fs.do(t, "GET", "d/f.bin", nil, map[string]string{"If-Match": `"stale"`})
	if resp.StatusCode != http.StatusPreconditionFailed || problemCode(b) != "precondition_failed" {
		t.Fatalf("If-Match stale: %d %s", resp.StatusCode, b)
	}
	resp, b = fs.do(t, "GET", "d/f.bin", nil, map[string]string{"Range": "bytes=0-9", "If-Range": `"stale"`})
	if resp.StatusCode != 200 || len(b) != len(data) {
		t.Fatalf("If-Range stale: %d", resp.StatusCode)
	}

	// GET a directory: a listing; ?stat=true: the entry.
	resp, b = fs.do(t, "GET", "", nil, nil)
	var listing struct {
		Entries   []fileEntry
		Truncated bool
	}
	if err := json.Unmarshal(b, &listing); err != nil || resp.StatusCode != 200 || len(listing.Entries) != 1 || listing.Entries[0].Name != "d" || listing.Entries[0].Type != "dir" {
		t.Fatalf("listing %d %s", resp.StatusCode, b)
	}
	resp, b = fs.do(t, "GET", "d/f.bin?stat=true", nil, nil)
	var e fileEntry
	if err := json.Unmarshal(b, &e); err != nil || resp.StatusCode != 200 || e.Type != "file" || e.Size != int64(len(data)) || e.Mode != "0644" {
		t.Fatalf("stat %d %s", resp.StatusCode, b)
	}
	if resp, b = fs.do(t, "GET", "nope", nil, nil); resp.StatusCode != 404 || problemCode(b) != "not_found" {
		t.Fatalf("missing: %d %s", resp.StatusCode, b)
	}

	// PUT: created, then replaced; parents created; mode.
	up := randBytes(8, 300000)
	resp, b = fs.do(t, "PUT", "n/e/w.bin?mode=0600", bytes.NewReader(up), nil)
	var put struct {
		Path   string
		Bytes  int64
		SHA256 string
	}
	if err := json.Unmarshal(b, &put); err != nil || resp.StatusCode != http.StatusCreated || put.Bytes != int64(len(up)) || put.SHA256 != sum(up) || put.Path != "/n/e/w.bin" || resp.Header.Get("ETag") == "" {
		t.Fatalf("PUT: %d %s", resp.StatusCode, b)
	}
	if got, _ := os.ReadFile(filepath.Join(fs.root, "n/e/w.bin")); !bytes.Equal(got, up) {
		t.Fatal("PUT content")
	}
	if fi, _ := os.Stat(filepath.Join(fs.root, "n/e/w.bin")); fi.Mode().Perm() != 0o600 {
		t.Fatalf("PUT mode %v", fi.Mode())
	}
	if resp, b = fs.do(t, "PUT", "n/e/w.bin", strings.NewReader("chunked"), nil); resp.StatusCode != 200 {
		t.Fatalf("PUT replace: %d %s", resp.StatusCode, b)
	}
	if resp, b = fs.do(t, "PUT", "x?mode=8", bytes.NewReader(nil), nil); resp.StatusCode != 400 || problemCode(b) != "invalid_argument" {
		t.Fatalf("PUT bad mode: %d %s", resp.StatusCode, b)
	}
	if resp, b = fs.do(t, "PUT", "d", bytes.NewReader(nil), nil); resp.StatusCode != 400 || problemCode(b) != "invalid_argument" {
		t.Fatalf("PUT over a dir: %d %s", resp.StatusCode, b)
	}

	// MaxFileSize: announced, and streamed without a length.
	if resp, b = fs.do(t, "PUT", "big", bytes.NewReader(make([]byte, 1<<20+1)), nil); resp.StatusCode != 413 || problemCode(b) != "payload_too_large" {
		t.Fatalf("PUT too large: %d %s", resp.StatusCode, b)
	}
	if resp, b = fs.do(t, "PUT", "big", io.MultiReader(bytes.NewReader(make([]byte, 1<<20)), strings.NewReader("x")), nil); resp.StatusCode != 413 || problemCode(b) != "payload_too_large" {
		t.Fatalf("chunked PUT too large: %d %s", resp.StatusCode, b)
	}
	if _, err := os.Stat(filepath.Join(fs.root, "big")); !os.IsNotExist(err) {
		t.Fatal("an oversized PUT left a file")
	}

	// DELETE
	if resp, b = fs.do(t, "DELETE", "n", nil, nil); resp.StatusCode != 400 || problemCode(b) != "invalid_argument" {
		t.Fatalf("DELETE non-empty: %d %s", resp.StatusCode, b)
	}
	if resp, _ = fs.do(t, "DELETE", "n?recursive=true", nil, nil); resp.StatusCode != 204 {
		t.Fatalf("DELETE tree: %d", resp.StatusCode)
	}
	if resp, _ = fs.do(t, "DELETE", "d/f.bin", nil, nil); resp.StatusCode != 204 {
		t.Fatalf("DELETE file: %d", resp.StatusCode)
	}
	if resp, b = fs.do(t, "DELETE", "d/f.bin", nil, nil); resp.StatusCode != 404 {
		t.Fatalf("DELETE missing: %d %s", resp.StatusCode, b)
	}
	if resp, b = fs.do(t, "DELETE", "", nil, nil); resp.StatusCode != 400 {
		t.Fatalf("DELETE root: %d %s", resp.StatusCode, b)
	}
	if resp, b = fs.do(t, "POST", "d", nil, nil); resp.StatusCode != 405 || resp.Header.Get("Allow") == "" {
		t.Fatalf("POST: %d %s", resp.StatusCode, b)
	}
	noTemps(t, fs.root)
}

// TestFilesHTTPCutOff: an upload whose body ends early — less than its
// Content-Length, or an error midway — leaves nothing at the target.
func TestFilesHTTPCutOff(t *testing.T) {
	t.Parallel()
	fs := newFilesServer(t, channels.FilesOptions{})
	mustWrite(t, filepath.Join(fs.root, "keep"), []byte("old"))

	for _, target := range []string{"cut", "keep"} {
		conn, err := net.Dial("tcp", fs.Listener.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(conn, "PUT /files/%s HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\n", target)
		_, _ = conn.Write(make([]byte, 500000))
		_ = conn.(*net.TCPConn).CloseWrite()
		err = <-fs.httpDone
		if err == nil {
			t.Fatal("FilesHTTP accepted a short body")
		}
		// The answer is a 400, since nothing had been written.
		resp, rerr := http.ReadResponse(bufio.NewReader(conn), nil)
		if rerr == nil && resp.StatusCode != 400 {
			t.Errorf("short body answered %d", resp.StatusCode)
		}
		conn.Close()
	}

	// The Go client aborts the request when its body fails.
	req, _ := http.NewRequest("PUT", fs.fileURL("cut"), io.MultiReader(bytes.NewReader(make([]byte, 300000)), errReader{}))
	if _, err := http.DefaultClient.Do(req); err == nil {
		t.Fatal("PUT with a failing body succeeded")
	}
	select {
	case err := <-fs.httpDone:
		if err == nil {
			t.Fatal("FilesHTTP accepted a failed body")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("FilesHTTP did not return")
	}

	if _, err := os.Stat(filepath.Join(fs.root, "cut")); !os.IsNotExist(err) {
		t.Fatal("a cut-off PUT left a file")
	}
	if b, _ := os.ReadFile(filepath.Join(fs.root, "keep")); string(b) != "old" {
		t.Fatalf("a cut-off PUT replaced the target: %q", b)
	}
	noTemps(t, fs.root)
}

type errReader struct{}

func (errReader) Read([]byte) (int, error) { return 0, errors.New("disk on fire") }

// TestFilesConfinement: every way out of the root is refused, on both
// faces, including a symlink the workload creates mid-session.
func TestFilesConfinement(t *testing.T) {
	t.Parallel()
	fs := newFilesServer(t, channels.FilesOptions{})
	outside := filepath.Dir(fs.root)
	mustWrite(t, filepath.Join(outside, "secret"), []byte("secret"))
	mustWrite(t, filepath.Join(outside, "out/x"), []byte("x"))
	mustWrite(t, filepath.Join(fs.root, "sub/f"), []byte("inside"))
	for name, target := range map[string]string{
		"rel":    "../secret",
		"abs":    filepath.Join(outside, "secret"),
		"outdir": "../out",
		"loop1":  "loop2",
		"loop2":  "loop1",
		"in":     "sub",
	} {
		if err := os.Symlink(target, filepath.Join(fs.root, name)); err != nil {
			t.Fatal(err)
		}
	}
	c := dialFiles(t, fs)
	long := strings.Repeat("a", 256)

	type tc struct {
		path, code string
	}
	reads := []tc{
		{"../secret", "permission_denied"},
		{"sub/../../secret", "permission_denied"},
		{"sub/../f", "not_found"}, // cleaned lexically: "f"
		{"/etc/passwd", "not_found"},
		{"rel", "permission_denied"},
		{"abs", "permission_denied"},
		{"outdir/x", "permission_denied"},
		{"loop1", "invalid_argument"},
		{"a\x00b", "invalid_argument"},
		{long, "invalid_argument"},
		{strings.Repeat("a/", 2100), "invalid_argument"},
		{"in/f", ""},
		{"/sub/f", ""},
	}
	for _, r := range reads {
		var buf bytes.Buffer
		wantCode(t, "ws read "+r.path[:min(len(r.path), 20)], c.readFile(r.path, 0, 0, &buf), r.code)
		resp, b := fs.do(t, "GET", r.path, nil, nil)
		if got := problemCode(b); got != r.code || (r.code == "" && (resp.StatusCode != 200 || string(b) != "inside")) {
			t.Errorf("GET %.20q: %d %s, want %q", r.path, resp.StatusCode, b, r.code)
		}
	}
	// Writes, mkdir, rename, list and remove through the way out.
	wantCode(t, "write out", c.write("outdir/new", strings.NewReader("x"), -1, 1), "permission_denied")
	wantCode(t, "write ..", c.write("../new", strings.NewReader("x"), -1, 1), "permission_denied")
	wantCode(t, "write abs", c.write("abs", strings.NewReader("x"), -1, 1), "permission_denied")
	wantCode(t, "mkdir out", c.do(map[string]any{"op": "mkdir", "path": "outdir/d", "parents": true}), "permission_denied")
	wantCode(t, "list out", c.do(map[string]any{"op": "list", "path": "outdir"}), "permission_denied")
	wantCode(t, "stat out", c.do(map[string]any{"op": "stat", "path": "outdir/x"}), "permission_denied")
	wantCode(t, "rename out", c.do(map[string]any{"op": "rename", "from": "sub/f", "to": "outdir/f"}), "permission_denied")
	wantCode(t, "rename in", c.do(map[string]any{"op": "rename", "from": "outdir/x", "to": "stolen"}), "permission_denied")
	wantCode(t, "remove out", c.do(map[string]any{"op": "remove", "path": "outdir/x"}), "permission_denied")
	wantCode(t, "write NUL", c.write("a\x00", strings.NewReader("x"), -1, 1), "invalid_argument")
	wantCode(t, "mkdir long", c.do(map[string]any{"op": "mkdir", "path": long}), "invalid_argument")
	if resp, b := fs.do(t, "PUT", "outdir/new", strings.NewReader("x"), nil); problemCode(b) != "permission_denied" {
		t.Errorf("PUT out: %d %s", resp.StatusCode, b)
	}
	if resp, b := fs.do(t, "DELETE", "outdir/x", nil, nil); problemCode(b) != "permission_denied" {
		t.Errorf("DELETE out: %d %s", resp.StatusCode, b)
	}
	if resp, b := fs.do(t, "GET", "outdir", nil, nil); problemCode(b) != "permission_denied" {
		t.Errorf("GET out dir: %d %s", resp.StatusCode, b)
	}
	// Removing the symlink removes the link, never what it points to.
	wantCode(t, "remove link", c.do(map[string]any{"op": "remove", "path": "outdir", "recursive": true}), "")
	if _, err := os.Stat(filepath.Join(outside, "out/x")); err != nil {
		t.Fatal("recursive remove followed a symlink out")
	}
	if ents, _ := os.ReadDir(filepath.Join(outside, "out")); len(ents) != 1 {
		t.Fatalf("something was written outside: %v", ents)
	}

	// The workload plants symlinks between two requests: a new one, and a
	// directory swapped for one.
	mustWrite(t, filepath.Join(fs.root, "swap/x"), []byte("inside"))
	var buf bytes.Buffer
	wantCode(t, "before", c.readFile("late", 0, 0, &buf), "not_found")
	wantCode(t, "before swap", c.readFile("swap/x", 0, 0, &buf), "")
	if err := os.Symlink("../secret", filepath.Join(fs.root, "late")); err != nil {
		t.Fatal(err)
	}
	if err := os.RemoveAll(filepath.Join(fs.root, "swap")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(filepath.Join(outside, "out"), filepath.Join(fs.root, "swap")); err != nil {
		t.Fatal(err)
	}
	wantCode(t, "late symlink", c.readFile("late", 0, 0, &buf), "permission_denied")
	wantCode(t, "swapped dir", c.readFile("swap/x", 0, 0, &buf), "permission_denied")
	wantCode(t, "write into swapped dir", c.write("swap/y", strings.NewReader("x"), -1, 1), "permission_denied")
	if resp, b := fs.do(t, "GET", "late", nil, nil); problemCode(b) != "permission_denied" {
		t.Errorf("GET late: %d %s", resp.StatusCode, b)
	}
	if strings.Contains(buf.String(), "secret") {
		t.Fatal("read the secret")
	}
	if ents, _ := os.ReadDir(filepath.Join(outside, "out")); len(ents) != 1 {
		t.Fatalf("something was written outside: %v", ents)
	}
}
