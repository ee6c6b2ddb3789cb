package client_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/nimbus/gateway/channels"
	"github.com/nimbus/gateway/client"
	"github.com/nimbus/gateway/problem"
)

// filesGateway stands in for the proxy's files route: the token is
// checked, the path cut and handed to channels.FilesHTTP.
func filesGateway(t *testing.T) (filesURL, root string) {
	t.Helper()
	root = t.TempDir()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p, ok := strings.CutPrefix(r.URL.Path, "/v1/connect/s1/files/")
		if !ok || r.URL.Query().Get("token") != "tok" {
			http.Error(w, "bad route", http.StatusTeapot)
			return
		}
		err := channels.FilesHTTP(w, r, root, p, channels.FilesOptions{})
		var pe *problem.Error
		if errors.As(err, &pe) {
			w.Header().Set("Content-Type", "application/problem+json")
			w.Header().Set("X-Request-Id", "req_1")
			w.WriteHeader(pe.Code.Status())
			_ = json.NewEncoder(w).Encode(map[string]any{"code": pe.Code, "detail": pe.Detail, "status": pe.Code.Status()})
		}
	}))
	t.Cleanup(srv.Close)
	return "ws" + strings.TrimPrefix(srv.URL, "http") + "/v1/connect/s1/files?token=tok", root
}

func TestFilesClient(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	furl, root := filesGateway(t)
	c := client.New("http://unused", "demo", "unused")
	data := bytes.Repeat([]byte("0123456789abcdef"), 100000)

	var last int64
	if err := c.Upload(ctx, furl, "/dir/with space/f?#.bin", bytes.NewReader(data), int64(len(data)), func(d int64) { last = d }); err != nil {
		t.Fatal(err)
	}
	if last != int64(len(data)) {
		t.Fatalf("progress ended at %d", last)
	}
	if got, _ := os.ReadFile(filepath.Join(root, "dir/with space/f?#.bin")); !bytes.Equal(got, data) {
		t.Fatal("uploaded content")
	}
	res, err := c.Put(ctx, furl, "chunked", strings.NewReader("hello"), -1, nil)
	if sum := sha256.Sum256([]byte("hello")); err != nil || res.Bytes != 5 || res.SHA256 != hex.EncodeToString(sum[:]) {
		t.Fatalf("Put: %+v %v", res, err)
	}

	fi, err := c.Stat(ctx, furl, "dir/with space/f?#.bin")
	if err != nil || fi.Type != "file" || fi.Size != int64(len(data)) || fi.Name != "f?#.bin" {
		t.Fatalf("Stat: %+v %v", fi, err)
	}
	l, err := c.ListFiles(ctx, furl, "/")
	if err != nil || len(l.Entries) != 2 || l.Entries[0].Name != "chunked" || l.Entries[1].Type != "dir" {
		t.Fatalf("ListFiles: %+v %v", l, err)
	}
	if _, err := c.ListFiles(ctx, furl, "chunked"); err == nil {
		t.Fatal("ListFiles of a file")
	}

	// Download whole, then resume a partial local file.
	var buf bytes.Buffer
	n, err := c.Download(ctx, furl, "dir/with space/f?#.bin", &buf, 0, nil)
	if err != nil || n != int64(len(data)) || !bytes.Equal(buf.Bytes(), data) {
		t.Fatalf("Download: %d %v", n, err)
	}
	local := filepath.Join(t.TempDir(), "part")
	if err := os.WriteFile(local, data[:12345], 0o644); err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(local, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	n, err = c.DownloadAt(ctx, furl, "dir/with space/f?#.bin", f, 12345, func(d int64) { last = d })
	f.Close()
	if got, _ := os.ReadFile(local); err != nil || n != int64(len(data)-12345) || !bytes.Equal(got, data) || last != int64(len(data)) {
		t.Fatalf("resumed Download: %d %v, progress %d", n, err, last)
	}
	if n, err = c.Download(ctx, furl, "chunked", &buf, 5, nil); err != nil || n != 0 {
		t.Fatalf("Download at the end: %d %v", n, err)
	}
	if _, err = c.Download(ctx, furl, "chunked", &buf, 6, nil); err == nil {
		t.Fatal("Download past the end succeeded")
	}

	// Errors are *client.Error with the catalog code.
	_, err = c.Download(ctx, furl, "nope", &buf, 0, nil)
	var ce *client.Error
	if !errors.As(err, &ce) || ce.Code != "not_found" || ce.Status != 404 || ce.RequestID != "req_1" {
		t.Fatalf("missing file: %v", err)
	}
	if err := c.Remove(ctx, furl, "dir", false); !errors.As(err, &ce) || ce.Code != "invalid_argument" {
		t.Fatalf("Remove non-empty: %v", err)
	}
	if err := c.Remove(ctx, furl, "dir", true); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Stat(ctx, furl, "../etc"); !errors.As(err, &ce) || ce.Code != "permission_denied" {
		t.Fatalf("escape: %v", err)
	}
}

func TestFilesHTTPURL(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct{ in, path, want string }{
		{"ws://h:1/v1/connect/s1/files?token=a.b-c", "/x/y z", "http://h:1/v1/connect/s1/files/x/y%20z?token=a.b-c"},
		{"wss://h/v1/connect/s1/files?token=t", "", "https://h/v1/connect/s1/files/?token=t"},
		{"wss://h/v1/connect/s1/files?token=t", "a?b#c", "https://h/v1/connect/s1/files/a%3Fb%23c?token=t"},
	} {
		got, err := client.FilesHTTPURL(tc.in, tc.path, nil)
		if err != nil || got != tc.want {
			t.Errorf("%s + %q = %q %v, want %q", tc.in, tc.path, got, err, tc.want)
		}
	}
	got, _ := client.FilesHTTPURL("ws://h/v1/connect/s1/files?token=t", "d", url.Values{"recursive": {"true"}})
	if u, _ := url.Parse(got); u.Query().Get("token") != "t" || u.Query().Get("recursive") != "true" {
		t.Errorf("extra query: %s", got)
	}
	if _, err := client.FilesHTTPURL("ws://h/v1/connect/s1/stdio?token=t", "d", nil); err == nil {
		t.Error("a stdio URL was accepted")
	}
}

// TestDownloadInOrder: Download writes an *os.File with Write, never at
// offsets, so a file opened with O_APPEND keeps what it held and gets the
// bytes after it (issue 17; WriteAt fails on O_APPEND).
func TestDownloadInOrder(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	furl, root := filesGateway(t)
	c := client.New("http://unused", "demo", "unused")
	if err := os.WriteFile(filepath.Join(root, "f"), []byte("0123456789"), 0o644); err != nil {
		t.Fatal(err)
	}
	local := filepath.Join(t.TempDir(), "log")
	if err := os.WriteFile(local, []byte("earlier\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(local, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if n, err := c.Download(ctx, furl, "f", f, 4, nil); err != nil || n != 6 {
		t.Fatalf("Download: %d %v", n, err)
	}
	if got, _ := os.ReadFile(local); string(got) != "earlier\n456789" {
		t.Fatalf("file holds %q", got)
	}
}
