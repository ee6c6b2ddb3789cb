package channels

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/nimbus/gateway/store"
	"github.com/nimbus/gateway/targets"
)

// The fuzz targets of the channels' decoders: what a client sends on a
// stdio or files connection. Their seed corpora run as ordinary tests;
// `go test ./channels -run '^$' -fuzz '^FuzzStdioControl$'` (and the
// others) fuzz them.

// fuzzCatalog starts a catalog whose workloads the fuzz targets attach to.
func fuzzCatalog(tb testing.TB) *targets.Catalog {
	tb.Helper()
	st, err := store.OpenSQLite(filepath.Join(tb.TempDir(), "db"))
	if err != nil {
		tb.Fatal(err)
	}
	cat := targets.NewCatalog(st, targets.Options{DataDir: tb.TempDir(), StopGrace: 200 * time.Millisecond})
	tb.Cleanup(func() { cat.Close(); st.Close() })
	return cat
}

// fuzzWorkload starts sandbox id running argv and returns its workload.
func fuzzWorkload(tb testing.TB, cat *targets.Catalog, id string, tty bool, argv ...string) *targets.Workload {
	tb.Helper()
	if _, err := cat.CreateSandbox(context.Background(), "fuzz", targets.SandboxSpec{ID: id, Command: argv, TTY: tty}); err != nil {
		tb.Fatal(err)
	}
	w, ok := cat.Workload("fuzz", id)
	if !ok {
		tb.Fatal("no workload")
	}
	return w
}

// stdioControlSeeds are control messages, valid and not.
var stdioControlSeeds = []string{
	`{"type":"resize","cols":120,"rows":40}`,
	`{"type":"resize","cols":0,"rows":40}`,
	`{"type":"resize","cols":10001,"rows":1}`,
	`{"type":"resize","cols":-1,"rows":-1}`,
	`{"type":"resize","cols":"80","rows":24}`,
	`{"type":"resize","cols":1e3,"rows":24}`,
	`{"type":"resize","cols":4294967376,"rows":24}`,
	`{"type":"signal","signal":"SIGWINCH"}`,
	`{"type":"signal","signal":"winch"}`,
	`{"type":"signal","signal":"SIGSEGV"}`,
	`{"type":"signal","signal":""}`,
	`{"type":"signal","signal":9}`,
	`{"type":"eof"}`,
	`{"type":"EOF"}`,
	`{"type":"exit","code":0}`,
	`{"type":"hello","tty":true}`,
	`{"Type":"resize","Cols":80,"Rows":24}`,
	`{"type":"resize","cols":80,"rows":24,"type":"signal"}`,
	`{"type":null}`,
	`[]`, `null`, `""`, ``, `{`, "{\"type\":\"eof\x00\"}", "\xff\xfe",
}

// FuzzStdioControl decodes and applies client control messages to a live
// workload on a terminal (stdio.control, the code behind stream byte 3).
// Invariants: no panic; the answer is nil or a 1008 close, never another
// code; nil only for a well-formed resize, signal or eof; a well-formed
// resize is never refused. Signals are real: the workload is one nobody
// watches (a sleep), and a new one is started once it is gone.
func FuzzStdioControl(f *testing.F) {
	for _, s := range stdioControlSeeds {
		f.Add([]byte(s))
	}
	cat := fuzzCatalog(f)
	var n atomic.Int64
	newW := func() *targets.Workload {
		return fuzzWorkload(f, cat, fmt.Sprintf("ctl-%d", n.Add(1)), true, "sleep", "1000000")
	}
	w := newW()
	f.Fuzz(func(t *testing.T, p []byte) {
		select {
		case <-w.Done():
			w = newW()
		default:
		}
		s := &stdio{w: w}
		err := s.control(p)
		var m struct {
			Type   string `json:"type"`
			Cols   int    `json:"cols"`
			Rows   int    `json:"rows"`
			Signal string `json:"signal"`
		}
		valid := json.Unmarshal(p, &m) == nil
		if err != nil {
			ce, ok := AsClose(err)
			if !ok || ce.Code != websocket.StatusPolicyViolation {
				t.Fatalf("control(%q) = %v, want nil or a 1008 close", p, err)
			}
			if valid && m.Type == "resize" && m.Cols >= 1 && m.Rows >= 1 && m.Cols <= maxTermSize && m.Rows <= maxTermSize {
				t.Fatalf("control(%q) refused a well-formed resize: %v", p, err)
			}
			return
		}
		if !valid {
			t.Fatalf("control(%q) accepted malformed JSON", p)
		}
		switch m.Type {
		case "resize":
			if m.Cols < 1 || m.Rows < 1 || m.Cols > maxTermSize || m.Rows > maxTermSize {
				t.Fatalf("control(%q) accepted resize %dx%d", p, m.Cols, m.Rows)
			}
		case "signal":
			if _, ok := signalByName(m.Signal); !ok {
				t.Fatalf("control(%q) accepted signal %q", p, m.Signal)
			}
		case "eof":
		default:
			t.Fatalf("control(%q) accepted type %q", p, m.Type)
		}
	})
}

// FuzzStdioMessage sends one client message, binary or text (the first
// input byte picks), through ServeStdio on a real socket to a cat
// workload, then a probe on stdin. Invariants: the probe is echoed, or
// the connection closes with 1003, 1008 or 1009 — a bad message never
// hangs the connection or ends it otherwise. Messages that would signal
// or end the shared workload are FuzzStdioControl's business and skipped.
func FuzzStdioMessage(f *testing.F) {
	f.Add([]byte{1, 0, 'h', 'i', '\n'})
	f.Add([]byte{0, 'l', 's', '\n'})
	f.Add([]byte{1})
	f.Add([]byte{1, 1, 'x'})
	f.Add([]byte{1, 2, 'x'})
	f.Add([]byte{1, 9})
	f.Add([]byte{1, 255, 0, 0})
	f.Add([]byte{0, 0xff, 0xfe})
	for _, s := range stdioControlSeeds {
		f.Add(append([]byte{1, 3}, s...))
	}
	cat := fuzzCatalog(f)
	w := fuzzWorkload(f, cat, "msg", false, "cat")
	srv := httptest.NewServer(http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		conn, err := websocket.Accept(rw, r, &websocket.AcceptOptions{Subprotocols: []string{StdioProtocol}})
		if err != nil {
			return
		}
		err = ServeStdio(r.Context(), conn, w, StdioOptions{})
		if ce, ok := AsClose(err); ok {
			conn.Close(ce.Code, ce.Reason)
		} else {
			conn.CloseNow()
		}
	}))
	f.Cleanup(srv.Close)
	url := "ws" + strings.TrimPrefix(srv.URL, "http")
	var n atomic.Int64
	f.Fuzz(func(t *testing.T, in []byte) {
		if len(in) == 0 {
			return
		}
		typ := websocket.MessageBinary
		if in[0]&1 == 0 {
			typ = websocket.MessageText
		}
		msg := in[1:]
		if typ == websocket.MessageBinary && len(msg) > 0 && msg[0] == streamControl {
			var m struct {
				Type string `json:"type"`
			}
			if json.Unmarshal(msg[1:], &m) == nil && (m.Type == "signal" || m.Type == "eof") {
				t.Skip("signals and eof act on the shared workload")
			}
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		c, _, err := websocket.Dial(ctx, url, &websocket.DialOptions{Subprotocols: []string{StdioProtocol}})
		if err != nil {
			t.Fatal(err)
		}
		defer c.CloseNow()
		c.SetReadLimit(-1)
		probe := fmt.Sprintf("probe-%d\n", n.Add(1))
		_ = c.Write(ctx, typ, msg)
		_ = c.Write(ctx, websocket.MessageBinary, append([]byte{streamStdin}, probe...))
		var out []byte
		for {
			mt, b, err := c.Read(ctx)
			if err != nil {
				code := websocket.CloseStatus(err)
				switch code {
				case websocket.StatusUnsupportedData, websocket.StatusPolicyViolation, websocket.StatusMessageTooBig:
					return
				}
				t.Fatalf("message %x (type %v): connection ended with %d (%v), want the probe echoed or 1003/1008/1009", msg, typ, code, err)
			}
			if mt == websocket.MessageBinary && len(b) > 0 && b[0] == streamStdout {
				out = append(out, b[1:]...)
				if bytes.Contains(out, []byte(probe)) {
					c.Close(websocket.StatusNormalClosure, "")
					return
				}
			}
		}
	})
}

// filesSeeds are files-channel requests, valid and hostile.
var filesSeeds = []string{
	`{"id":1,"op":"stat","path":"/"}`,
	`{"id":2,"op":"list","path":"a"}`,
	`{"id":3,"op":"read","path":"a/f.txt","offset":1,"length":2}`,
	`{"id":4,"op":"read","path":"../outside/secret"}`,
	`{"id":5,"op":"read","path":"escape/secret"}`,
	`{"id":6,"op":"write","path":"escape/pwned","size":0}`,
	`{"id":7,"op":"write","path":"new.txt","size":3,"mode":"0600"}`,
	`{"id":8,"op":"mkdir","path":"escape/d","parents":true}`,
	`{"id":9,"op":"remove","path":"escape","recursive":true}`,
	`{"id":10,"op":"rename","from":"a/f.txt","to":"../outside/stolen"}`,
	`{"id":11,"op":"rename","from":"escape/secret","to":"mine"}`,
	`{"id":12,"op":"remove","path":"/","recursive":true}`,
	`{"id":13,"op":"end"}`,
	`{"id":14,"op":"stat","path":"a\u0000b"}`,
	`{"id":15,"op":"stat","path":"loop/x"}`,
	`{"id":16,"op":"chmod","path":"a"}`,
	`{"id":17,"op":"stat","path":"a","extra":1}`,
	`{"op":"stat","path":"a"}`,
	`{"id":-1}`, `{"id":4294967296}`, `{"id":"1"}`, `{"id":1}{"id":2}`, `[]`, `{`, ``,
	`{"id":18,"op":"write","path":"x","size":-5}`,
	`{"id":19,"op":"read","path":"a/f.txt","offset":-1}`,
	`{"id":20,"op":"write","path":"m","mode":"7777"}`,
}

// FuzzFilesRequest sends one text message through ServeFiles on a real
// socket to a root holding a symlink out, a loop and a file, with a
// secret next to the root. Invariants: the connection answers a probe
// request after it or closes with 1008; nothing outside the root is ever
// created, changed or removed.
func FuzzFilesRequest(f *testing.F) {
	for _, s := range filesSeeds {
		f.Add(s)
	}
	dir := f.TempDir()
	root := filepath.Join(dir, "root")
	outside := filepath.Join(dir, "outside")
	if err := os.MkdirAll(outside, 0o755); err != nil {
		f.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(outside, "secret"), []byte("secret"), 0o600); err != nil {
		f.Fatal(err)
	}
	srv := httptest.NewServer(http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		conn, err := websocket.Accept(rw, r, &websocket.AcceptOptions{Subprotocols: []string{FilesProtocol}})
		if err != nil {
			return
		}
		err = ServeFiles(r.Context(), conn, root, FilesOptions{MaxFileSize: 1 << 20})
		if ce, ok := AsClose(err); ok {
			conn.Close(ce.Code, ce.Reason)
		} else {
			conn.Close(websocket.StatusNormalClosure, "")
		}
	}))
	f.Cleanup(srv.Close)
	url := "ws" + strings.TrimPrefix(srv.URL, "http")
	f.Fuzz(func(t *testing.T, req string) {
		// A fresh tree each time: the last input may have changed it.
		// The last connection's reader may still be removing the temp
		// file of a write it left open.
		for i := 0; ; i++ {
			err := os.RemoveAll(root)
			if err == nil {
				break
			}
			if i == 50 {
				t.Fatal(err)
			}
			time.Sleep(10 * time.Millisecond)
		}
		for _, err := range []error{
			os.MkdirAll(filepath.Join(root, "a"), 0o755),
			os.WriteFile(filepath.Join(root, "a", "f.txt"), []byte("hello"), 0o644),
			os.Symlink(outside, filepath.Join(root, "escape")),
			os.Symlink("loop", filepath.Join(root, "loop")),
		} {
			if err != nil {
				t.Fatal(err)
			}
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		c, _, err := websocket.Dial(ctx, url, &websocket.DialOptions{Subprotocols: []string{FilesProtocol}})
		if err != nil {
			t.Fatal(err)
		}
		defer c.CloseNow()
		c.SetReadLimit(-1)
		_ = c.Write(ctx, websocket.MessageText, []byte(req))
		const probeID = 4000000001
		_ = c.Write(ctx, websocket.MessageText, fmt.Appendf(nil, `{"id":%d,"op":"stat","path":"/"}`, uint32(probeID)))
		for {
			mt, b, err := c.Read(ctx)
			if err != nil {
				if code := websocket.CloseStatus(err); code != websocket.StatusPolicyViolation {
					t.Fatalf("request %q: connection ended with %d (%v), want the probe answered or 1008", req, code, err)
				}
				break
			}
			if mt != websocket.MessageText {
				continue
			}
			var resp struct {
				ID *uint32 `json:"id"`
			}
			if err := json.Unmarshal(b, &resp); err != nil || resp.ID == nil {
				t.Fatalf("request %q: unreadable answer %q", req, b)
			}
			if *resp.ID == probeID {
				c.Close(websocket.StatusNormalClosure, "")
				break
			}
		}
		ents, err := os.ReadDir(outside)
		if err != nil || len(ents) != 1 || ents[0].Name() != "secret" {
			t.Fatalf("request %q changed the outside of the root: %v %v", req, ents, err)
		}
		if b, err := os.ReadFile(filepath.Join(outside, "secret")); err != nil || string(b) != "secret" {
			t.Fatalf("request %q changed the secret outside the root: %q %v", req, b, err)
		}
	})
}

// FuzzFilesPath checks filesPath, the check every files request's path
// goes through first. Invariants: an accepted path maps to "." or a
// local name (no "..", not absolute, no NUL) within the length bounds;
// an ordinary local path is never refused.
func FuzzFilesPath(f *testing.F) {
	for _, s := range []string{"", "/", "a/b", "/etc/passwd", "../x", "a/../../x", "a/..", "./a//b/", "..",
		"a\x00b", strings.Repeat("a/", 2049), strings.Repeat("n", 256), "…/ü", `a\..\..\b`, "/../", "a/./../b"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, p string) {
		name, perr := filesPath(p)
		if perr != nil {
			if perr.Code == "" {
				t.Fatalf("filesPath(%q): error without a code", p)
			}
			if filepath.IsLocal(p) && !strings.ContainsAny(p, "/\x00") && len(p) <= filesMaxName {
				t.Fatalf("filesPath(%q) refused a plain local name: %v", p, perr)
			}
			return
		}
		if strings.IndexByte(name, 0) >= 0 || len(name) > filesMaxPath {
			t.Fatalf("filesPath(%q) = %q: NUL or too long", p, name)
		}
		if name != "." && !filepath.IsLocal(name) {
			t.Fatalf("filesPath(%q) = %q, which is not local to the root", p, name)
		}
		for part := range strings.SplitSeq(name, "/") {
			if part == ".." || len(part) > filesMaxName {
				t.Fatalf("filesPath(%q) = %q: bad component %q", p, name, part)
			}
		}
	})
}
