package e2e

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/golang-jwt/jwt/v5"

	"github.com/nimbus/gateway/client"
)

// tokenOf is the token query parameter of a connect URL.
func tokenOf(t testing.TB, connectURL string) string {
	u, err := url.Parse(connectURL)
	if err != nil {
		t.Fatal(err)
	}
	return u.Query().Get("token")
}

// withToken is connectURL with its token replaced ("" drops it).
func withToken(connectURL, tok string) string {
	u, _ := url.Parse(connectURL)
	q := u.Query()
	if tok == "" {
		q.Del("token")
	} else {
		q.Set("token", tok)
	}
	u.RawQuery = q.Encode()
	return u.String()
}

// withPath is connectURL for another session and channel, same token.
func withPath(connectURL, sid, ch string) string {
	u, _ := url.Parse(connectURL)
	u.Path = "/v1/connect/" + sid + "/" + ch
	return u.String()
}

// dialRefused tries a WebSocket upgrade that must be refused and returns
// the problem+json answer.
func dialRefused(t testing.TB, connectURL, proto string) *client.Error {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, resp, err := websocket.Dial(ctx, connectURL, &websocket.DialOptions{Subprotocols: []string{proto}})
	if err == nil {
		conn.CloseNow()
		t.Fatalf("upgrade of %s succeeded, want a refusal", connectURL)
	}
	if resp == nil {
		t.Fatalf("upgrade of %s: no HTTP answer: %v", connectURL, err)
	}
	var e client.Error
	b := make([]byte, 4096)
	n, _ := resp.Body.Read(b)
	_ = json.Unmarshal(b[:n], &e)
	e.Status = resp.StatusCode
	return &e
}

// TestHostileConnectTokens presents connect URLs used after close, on
// the wrong session or channel, tampered, forged and missing.
func TestHostileConnectTokens(t *testing.T) {
	t.Parallel()
	g := startGateway(t)
	adm := g.admin()
	a := g.open(adm, serviceTarget("worker"), "stdio", "files")
	b := g.open(adm, serviceTarget("worker"), "stdio", "files")
	closed := g.open(adm, serviceTarget("worker"), "stdio", "files")
	if _, err := adm.Close(context.Background(), closed.Metadata.ID, "done"); err != nil {
		t.Fatal(err)
	}
	short, err := adm.Open(context.Background(), client.OpenRequest{Target: serviceTarget("worker"), Channels: []string{"stdio"}, RequestedTTLMs: 1000})
	if err != nil {
		t.Fatal(err)
	}
	otherSess := g.open(clientFor(g, "other", g.token("other", false, []string{"worker"}, nil)), serviceTarget("worker"), "stdio")
	aStdio, aFiles := a.Status.Connect["stdio"], a.Status.Connect["files"]
	aTok := tokenOf(t, aStdio)

	// Tamper the claims (ch stdio → files) and keep the signature.
	parts := strings.Split(aTok, ".")
	payload, _ := base64.RawURLEncoding.DecodeString(parts[1])
	var cl map[string]any
	_ = json.Unmarshal(payload, &cl)
	cl["ch"] = "files"
	p2, _ := json.Marshal(cl)
	tampered := parts[0] + "." + base64.RawURLEncoding.EncodeToString(p2) + "." + parts[2]
	// Forge a token with the right claims and a guessed HS256 secret.
	hdr, _ := base64.RawURLEncoding.DecodeString(parts[0])
	var h map[string]any
	_ = json.Unmarshal(hdr, &h)
	forged := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.MapClaims(cl))
	forged.Header["kid"] = h["kid"]
	forgedTok, _ := forged.SignedString([]byte("guessed-secret-guessed-secret-32"))
	none := unsigned(map[string]any{"alg": "none", "kid": h["kid"]}, jwt.MapClaims(cl))

	time.Sleep(1200 * time.Millisecond) // let `short` expire
	cases := []struct {
		name, url, proto string
		status           int
		code             string
	}{
		{"replayed after close", closed.Status.Connect["stdio"], "nimbus.stdio.v1", 409, "session_not_open"},
		{"files URL replayed after close", closed.Status.Connect["files"], "nimbus.files.v1", 409, "session_not_open"},
		{"replayed after expiry", short.Status.Connect["stdio"], "nimbus.stdio.v1", 409, "session_not_open"},
		{"stdio token on the files channel", withPath(aStdio, a.Metadata.ID, "files"), "nimbus.files.v1", 403, "permission_denied"},
		{"files token on the stdio channel", withPath(aFiles, a.Metadata.ID, "stdio"), "nimbus.stdio.v1", 403, "permission_denied"},
		{"stdio token on the cdp channel", withPath(aStdio, a.Metadata.ID, "cdp"), "", 403, "permission_denied"},
		{"token of session A on session B", withPath(aStdio, b.Metadata.ID, "stdio"), "nimbus.stdio.v1", 403, "permission_denied"},
		{"token on another tenant's session", withPath(aStdio, otherSess.Metadata.ID, "stdio"), "nimbus.stdio.v1", 403, "permission_denied"},
		{"token on an unknown session", withPath(aStdio, "ses_doesnotexist", "stdio"), "nimbus.stdio.v1", 403, "permission_denied"},
		{"tampered claims", withPath(withToken(aStdio, tampered), a.Metadata.ID, "files"), "nimbus.files.v1", 401, "unauthenticated"},
		{"truncated signature", withToken(aStdio, aTok[:len(aTok)-6]), "nimbus.stdio.v1", 401, "unauthenticated"},
		{"forged with a guessed secret", withToken(aStdio, forgedTok), "nimbus.stdio.v1", 401, "unauthenticated"},
		{"alg none", withToken(aStdio, none), "nimbus.stdio.v1", 401, "unauthenticated"},
		{"no token", withToken(aStdio, ""), "nimbus.stdio.v1", 401, "unauthenticated"},
		{"tenant token as connect token", withToken(aStdio, adm.Token), "nimbus.stdio.v1", 401, "unauthenticated"},
		{"garbage token", withToken(aStdio, "x.y.z"), "nimbus.stdio.v1", 401, "unauthenticated"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			before := g.snapshot("demo")
			e := dialRefused(t, strings.Replace(tc.url, "http", "ws", 1), tc.proto)
			if e.Status != tc.status || e.Code != tc.code {
				t.Errorf("got %d %q, want %d %q (%s)", e.Status, e.Code, tc.status, tc.code, e.Detail)
			}
			unchangedBut(t, tc.name, before, g.snapshot("demo"), true)
		})
	}
	// The same refusals on the files HTTP face.
	filesHTTP := []struct {
		name, url string
		status    int
		code      string
	}{
		{"HTTP face after close", closed.Status.Connect["files"] + "&x=1", 409, "session_not_open"},
		{"HTTP face with a stdio token", withPath(aStdio, a.Metadata.ID, "files"), 403, "permission_denied"},
		{"HTTP face of session B with A's token", withPath(aFiles, b.Metadata.ID, "files"), 403, "permission_denied"},
		{"HTTP face with tampered claims", withPath(withToken(aStdio, tampered), a.Metadata.ID, "files"), 401, "unauthenticated"},
	}
	for _, tc := range filesHTTP {
		t.Run(tc.name, func(t *testing.T) {
			u, _ := url.Parse(tc.url)
			u.Path += "/hello.txt"
			r := do(t, http.MethodGet, u.String(), nil, nil)
			wantProblem(t, tc.name, r, tc.status, tc.code)
			r = do(t, http.MethodPut, u.String(), strings.NewReader("pwned"), nil)
			wantProblem(t, tc.name+" (PUT)", r, tc.status, tc.code)
			if _, err := os.Stat(filepath.Join(g.sandboxRoot("demo", "sbx-cat"), "hello.txt")); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("a refused PUT wrote hello.txt (%v)", err)
			}
		})
	}
}

// rawStdio is an attacker's stdio connection.
func rawStdio(t testing.TB, connectURL string) *websocket.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, _, err := websocket.Dial(ctx, connectURL, &websocket.DialOptions{Subprotocols: []string{"nimbus.stdio.v1"}})
	if err != nil {
		t.Fatal(err)
	}
	c.SetReadLimit(-1)
	return c
}

// closeCodeOf reads until the connection ends and returns its close code.
func closeCodeOf(t testing.TB, c *websocket.Conn) (websocket.StatusCode, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for {
		_, _, err := c.Read(ctx)
		if err != nil {
			var ce websocket.CloseError
			if errors.As(err, &ce) {
				return ce.Code, ce.Reason
			}
			return -1, err.Error()
		}
	}
}

// echoes writes a line to a cat workload through s and waits for it to
// come back: the workload's stdin and output still work.
func echoes(t testing.TB, s *client.Stdio, line string) {
	t.Helper()
	if _, err := s.Write([]byte(line + "\n")); err != nil {
		t.Fatalf("stdin: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var got []byte
	for !bytes.Contains(got, []byte(line)) {
		_, data, err := s.Next(ctx)
		if err != nil {
			t.Fatalf("waiting for %q: %v (got %q)", line, err, got)
		}
		got = append(got, data...)
	}
}

// TestHostileStdioMessages breaks the stdio protocol in every way on one
// connection at a time while a bystander stays attached to the same cat
// workload: each attacker is closed with its code, and the bystander's
// stdin and output keep working after every attack.
func TestHostileStdioMessages(t *testing.T) {
	t.Parallel()
	g := startGateway(t)
	s := g.open(g.admin(), serviceTarget("worker"), "stdio")
	u := s.Status.Connect["stdio"]
	bystander, err := client.DialStdio(context.Background(), u)
	if err != nil {
		t.Fatal(err)
	}
	defer bystander.Close()
	echoes(t, bystander, "before")

	ctl := func(js string) []byte { return append([]byte{3}, js...) }
	cases := []struct {
		name   string
		typ    websocket.MessageType
		msg    []byte
		code   websocket.StatusCode
		reason string
	}{
		{"message over 1 MiB", websocket.MessageBinary, append([]byte{0}, make([]byte, 1<<20+1)...), websocket.StatusMessageTooBig, ""},
		{"text frame", websocket.MessageText, []byte("ls\n"), websocket.StatusUnsupportedData, "stdio takes binary messages"},
		{"text frame with invalid UTF-8", websocket.MessageText, []byte{0, 0xff, 0xfe, 0xc3}, websocket.StatusUnsupportedData, ""},
		{"empty message", websocket.MessageBinary, nil, websocket.StatusPolicyViolation, "empty message"},
		{"unknown stream byte", websocket.MessageBinary, []byte{9, 'x'}, websocket.StatusPolicyViolation, "unknown stream byte"},
		{"stream byte 255", websocket.MessageBinary, []byte{255}, websocket.StatusPolicyViolation, "unknown stream byte"},
		{"stdout from the client", websocket.MessageBinary, []byte{1, 'x'}, websocket.StatusPolicyViolation, "unknown stream byte"},
		{"stderr from the client", websocket.MessageBinary, []byte{2, 'x'}, websocket.StatusPolicyViolation, "unknown stream byte"},
		{"control not JSON", websocket.MessageBinary, ctl("resize 80x24"), websocket.StatusPolicyViolation, "malformed control message"},
		{"control truncated", websocket.MessageBinary, ctl(`{"type":"resize","cols":`), websocket.StatusPolicyViolation, "malformed control message"},
		{"control an array", websocket.MessageBinary, ctl(`[{"type":"eof"}]`), websocket.StatusPolicyViolation, "malformed control message"},
		{"control empty", websocket.MessageBinary, ctl(""), websocket.StatusPolicyViolation, "malformed control message"},
		{"control with NUL", websocket.MessageBinary, ctl("{\"type\":\"eof\x00\"}"), websocket.StatusPolicyViolation, ""},
		{"control unknown type", websocket.MessageBinary, ctl(`{"type":"exec","cmd":"rm -rf /"}`), websocket.StatusPolicyViolation, "unknown control type"},
		{"control type case variant", websocket.MessageBinary, ctl(`{"type":"EOF"}`), websocket.StatusPolicyViolation, "unknown control type"},
		{"resize zero", websocket.MessageBinary, ctl(`{"type":"resize","cols":0,"rows":24}`), websocket.StatusPolicyViolation, ""},
		{"resize huge", websocket.MessageBinary, ctl(`{"type":"resize","cols":80,"rows":10001}`), websocket.StatusPolicyViolation, ""},
		{"resize negative", websocket.MessageBinary, ctl(`{"type":"resize","cols":-80,"rows":24}`), websocket.StatusPolicyViolation, ""},
		{"resize strings", websocket.MessageBinary, ctl(`{"type":"resize","cols":"80","rows":"24"}`), websocket.StatusPolicyViolation, "malformed control message"},
		{"resize overflow", websocket.MessageBinary, ctl(`{"type":"resize","cols":4294967376,"rows":24}`), websocket.StatusPolicyViolation, ""},
		{"signal not allowed", websocket.MessageBinary, ctl(`{"type":"signal","signal":"SIGSEGV"}`), websocket.StatusPolicyViolation, "unknown signal"},
		{"signal by number", websocket.MessageBinary, ctl(`{"type":"signal","signal":"9"}`), websocket.StatusPolicyViolation, "unknown signal"},
		{"signal empty", websocket.MessageBinary, ctl(`{"type":"signal","signal":""}`), websocket.StatusPolicyViolation, "unknown signal"},
		{"signal a number", websocket.MessageBinary, ctl(`{"type":"signal","signal":9}`), websocket.StatusPolicyViolation, "malformed control message"},
	}
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := rawStdio(t, u)
			defer c.CloseNow()
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			// The message over the limit may be cut off mid-write.
			_ = c.Write(ctx, tc.typ, tc.msg)
			code, reason := closeCodeOf(t, c)
			if code != tc.code || (tc.reason != "" && !strings.HasPrefix(reason, tc.reason)) {
				t.Errorf("closed with %d %q, want %d %q", code, reason, tc.code, tc.reason)
			}
			echoes(t, bystander, fmt.Sprintf("still-alive-%d", i))
		})
	}
	// And a newcomer still attaches and is heard.
	late, err := client.DialStdio(context.Background(), u)
	if err != nil {
		t.Fatal(err)
	}
	defer late.Close()
	echoes(t, late, "newcomer")
}

// filesConn is an attacker's files-channel connection.
type filesConn struct {
	t  testing.TB
	c  *websocket.Conn
	id uint32
}

func dialFiles(t testing.TB, connectURL string) *filesConn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, _, err := websocket.Dial(ctx, connectURL, &websocket.DialOptions{Subprotocols: []string{"nimbus.files.v1"}})
	if err != nil {
		t.Fatal(err)
	}
	c.SetReadLimit(4 << 20)
	return &filesConn{t: t, c: c}
}

// request sends req with a fresh id (plus extra messages for that id,
// e.g. data then end) and returns the error code of its answer, "" for ok.
func (f *filesConn) request(req map[string]any, after ...func(id uint32)) string {
	f.t.Helper()
	f.id++
	req["id"] = f.id
	b, _ := json.Marshal(req)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := f.c.Write(ctx, websocket.MessageText, b); err != nil {
		f.t.Fatal(err)
	}
	for _, a := range after {
		a(f.id)
	}
	for {
		typ, m, err := f.c.Read(ctx)
		if err != nil {
			f.t.Fatalf("waiting for the answer to %s: %v", b, err)
		}
		if typ != websocket.MessageText {
			continue
		}
		var resp struct {
			ID    uint32 `json:"id"`
			OK    bool   `json:"ok"`
			Error *struct {
				Code string `json:"code"`
			} `json:"error"`
		}
		if json.Unmarshal(m, &resp) != nil || resp.ID != f.id {
			continue
		}
		if resp.OK {
			return ""
		}
		return resp.Error.Code
	}
}

// hostileTree builds, in and next to a sandbox root, what a malicious
// workload would leave there: symlinks out (absolute and relative), a
// loop, and a secret outside the root.
func hostileTree(t testing.TB, root string) (outside string) {
	t.Helper()
	outside = filepath.Join(filepath.Dir(filepath.Dir(filepath.Dir(root))), "outside")
	must := func(err error) {
		if err != nil && !errors.Is(err, os.ErrExist) {
			t.Fatal(err)
		}
	}
	must(os.MkdirAll(outside, 0o755))
	must(os.WriteFile(filepath.Join(outside, "secret"), []byte("top secret"), 0o600))
	must(os.Symlink(outside, filepath.Join(root, "escape")))
	must(os.Symlink("../../../outside", filepath.Join(root, "rel-escape")))
	must(os.Symlink("loop2", filepath.Join(root, "loop1")))
	must(os.Symlink("loop1", filepath.Join(root, "loop2")))
	must(os.WriteFile(filepath.Join(root, "ok.txt"), []byte("fine"), 0o644))
	return outside
}

// treeOf lists every path under dir with its size, for before/after
// comparisons.
func treeOf(dir string) string {
	var b strings.Builder
	_ = filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
		if err == nil {
			fmt.Fprintf(&b, "%s %d %v\n", p, fi.Size(), fi.Mode())
		}
		return nil
	})
	return b.String()
}

// TestHostileFilePaths sends escaping, malformed and looping paths
// through both faces of the files channel, including a symlink to / made
// by the workload itself: each gets its code and nothing outside the root
// is read, written or removed.
func TestHostileFilePaths(t *testing.T) {
	t.Parallel()
	g := startGateway(t)
	adm := g.admin()
	root := g.sandboxRoot("demo", "sbx-tty")
	outside := hostileTree(t, root)

	// The workload plants a symlink to the host's root, as a malicious
	// one would.
	ses := g.open(adm, client.SandboxTarget("sbx-tty"), "stdio", "files")
	sh, err := client.DialStdio(context.Background(), ses.Status.Connect["stdio"])
	if err != nil {
		t.Fatal(err)
	}
	defer sh.Close()
	// The terminal echoes the command line, so the marker is spelt apart
	// there: only the echo command's own output has it whole.
	if _, err := sh.Write([]byte("ln -s / rootlink && ln -s /etc/passwd pw && echo PLANT''ED\n")); err != nil {
		t.Fatal(err)
	}
	readUntilOutput(t, sh, "PLANTED\r\n")
	outBefore := treeOf(outside)

	long := strings.Repeat("d/", 2100)
	comp := strings.Repeat("n", 300)
	f := dialFiles(t, strings.Replace(ses.Status.Connect["files"], "http", "ws", 1))
	defer f.c.CloseNow()
	data := func(p []byte) func(uint32) {
		return func(id uint32) {
			msg := append([]byte{byte(id >> 24), byte(id >> 16), byte(id >> 8), byte(id)}, p...)
			_ = f.c.Write(context.Background(), websocket.MessageBinary, msg)
			end, _ := json.Marshal(map[string]any{"id": id, "op": "end"})
			_ = f.c.Write(context.Background(), websocket.MessageText, end)
		}
	}
	ws := []struct {
		name string
		req  map[string]any
		code string
		more []func(uint32)
	}{
		{"NUL in path", map[string]any{"op": "stat", "path": "ok.txt\x00../../etc/passwd"}, "invalid_argument", nil},
		{"dot-dot out of the root", map[string]any{"op": "read", "path": "../../../etc/passwd"}, "permission_denied", nil},
		{"dot-dot after a name", map[string]any{"op": "read", "path": "ok.txt/../../../../etc/passwd"}, "permission_denied", nil},
		{"bare dot-dot", map[string]any{"op": "list", "path": ".."}, "permission_denied", nil},
		{"absolute path stays inside", map[string]any{"op": "read", "path": "/etc/passwd"}, "not_found", nil},
		{"path over 4096 bytes", map[string]any{"op": "stat", "path": long}, "invalid_argument", nil},
		{"component over 255 bytes", map[string]any{"op": "stat", "path": comp}, "invalid_argument", nil},
		{"symlink loop", map[string]any{"op": "read", "path": "loop1"}, "invalid_argument", nil},
		{"through a symlink loop", map[string]any{"op": "stat", "path": "loop1/x"}, "invalid_argument", nil},
		{"absolute symlink out", map[string]any{"op": "read", "path": "escape/secret"}, "permission_denied", nil},
		{"list through a symlink out", map[string]any{"op": "list", "path": "escape"}, "permission_denied", nil},
		{"relative symlink out", map[string]any{"op": "read", "path": "rel-escape/secret"}, "permission_denied", nil},
		{"workload's link to /", map[string]any{"op": "read", "path": "rootlink/etc/passwd"}, "permission_denied", nil},
		{"workload's link to a host file", map[string]any{"op": "read", "path": "pw"}, "permission_denied", nil},
		{"write through a symlink out", map[string]any{"op": "write", "path": "escape/pwned", "size": 5}, "permission_denied", []func(uint32){data([]byte("pwned"))}},
		{"write through the workload's link", map[string]any{"op": "write", "path": "rootlink/tmp/pwned", "size": 5}, "permission_denied", []func(uint32){data([]byte("pwned"))}},
		{"mkdir through a symlink out", map[string]any{"op": "mkdir", "path": "escape/newdir", "parents": true}, "permission_denied", nil},
		{"remove through a symlink out", map[string]any{"op": "remove", "path": "escape/secret"}, "permission_denied", nil},
		{"recursive remove of dot-dot", map[string]any{"op": "remove", "path": "..", "recursive": true}, "permission_denied", nil},
		{"rename out of the root", map[string]any{"op": "rename", "from": "ok.txt", "to": "../../../outside/stolen"}, "permission_denied", nil},
		{"rename into a symlink out", map[string]any{"op": "rename", "from": "ok.txt", "to": "escape/stolen"}, "permission_denied", nil},
		{"rename from outside", map[string]any{"op": "rename", "from": "escape/secret", "to": "mine"}, "permission_denied", nil},
		{"write over the root", map[string]any{"op": "write", "path": "/", "size": 0}, "invalid_argument", []func(uint32){data(nil)}},
		{"remove the root", map[string]any{"op": "remove", "path": "/", "recursive": true}, "invalid_argument", nil},
		{"bad mode", map[string]any{"op": "write", "path": "m.txt", "mode": "rwxrwxrwx"}, "invalid_argument", nil},
		{"mode out of range", map[string]any{"op": "write", "path": "m.txt", "mode": "99999"}, "invalid_argument", nil},
		{"setuid mode", map[string]any{"op": "write", "path": "m.txt", "mode": "4755"}, "invalid_argument", nil},
		{"setgid mode", map[string]any{"op": "write", "path": "m.txt", "mode": "2755"}, "invalid_argument", nil},
		{"negative size", map[string]any{"op": "write", "path": "m.txt", "size": -1}, "invalid_argument", nil},
		{"offset past the end", map[string]any{"op": "read", "path": "ok.txt", "offset": 1 << 40}, "invalid_argument", nil},
		{"unknown op", map[string]any{"op": "chmod", "path": "ok.txt"}, "invalid_argument", nil},
		{"misspelt field", map[string]any{"op": "remove", "path": "ok.txt", "recursiv": true}, "invalid_argument", nil},
		{"path of the wrong type", map[string]any{"op": "stat", "path": 42}, "invalid_argument", nil},
	}
	for _, tc := range ws {
		t.Run("ws/"+tc.name, func(t *testing.T) {
			f.t = t
			if got := f.request(tc.req, tc.more...); got != tc.code {
				t.Errorf("got %q, want %q", got, tc.code)
			}
			if after := treeOf(outside); after != outBefore {
				t.Errorf("the tree outside the root changed:\n%s\nwas\n%s", after, outBefore)
			}
		})
	}
	if b, err := os.ReadFile(filepath.Join(root, "ok.txt")); err != nil || string(b) != "fine" {
		t.Errorf("ok.txt is %q, %v after the attacks", b, err)
	}

	// Protocol breaks that leave no id to answer on: close 1008 / 1009.
	closes := []struct {
		name string
		typ  websocket.MessageType
		msg  []byte
		code websocket.StatusCode
	}{
		{"request without an id", websocket.MessageText, []byte(`{"op":"stat","path":"ok.txt"}`), websocket.StatusPolicyViolation},
		{"negative id", websocket.MessageText, []byte(`{"id":-1,"op":"stat","path":"ok.txt"}`), websocket.StatusPolicyViolation},
		{"id over uint32", websocket.MessageText, []byte(`{"id":4294967296,"op":"stat"}`), websocket.StatusPolicyViolation},
		{"not JSON", websocket.MessageText, []byte("GET / HTTP/1.1"), websocket.StatusPolicyViolation},
		{"data shorter than its id", websocket.MessageBinary, []byte{0, 1}, websocket.StatusPolicyViolation},
		{"data over 1 MiB + 4", websocket.MessageBinary, make([]byte, 1<<20+5), websocket.StatusMessageTooBig},
	}
	for _, tc := range closes {
		t.Run("ws/"+tc.name, func(t *testing.T) {
			c := dialFiles(t, strings.Replace(ses.Status.Connect["files"], "http", "ws", 1))
			defer c.c.CloseNow()
			_ = c.c.Write(context.Background(), tc.typ, tc.msg)
			if code, reason := closeCodeOf(t, c.c); code != tc.code {
				t.Errorf("closed with %d %q, want %d", code, reason, tc.code)
			}
		})
	}

	// The HTTP face.
	base := ses.Status.Connect["files"]
	tok := tokenOf(t, base)
	fileURL := func(rawPath string, q string) string {
		u, _ := url.Parse(base)
		return u.Scheme + "://" + u.Host + "/v1/connect/" + ses.Metadata.ID + "/files/" + rawPath + "?token=" + url.QueryEscape(tok) + q
	}
	web := []struct {
		name, method, path, query, body string
		status                          int
		code                            string
	}{
		{"encoded dot-dot", "GET", "..%2F..%2F..%2Fetc%2Fpasswd", "", "", 403, "permission_denied"},
		{"encoded bare dot-dot", "GET", "%2e%2e", "", "", 403, "permission_denied"},
		{"NUL in path", "GET", "ok.txt%00.png", "", "", 400, "invalid_argument"},
		{"component over 255 bytes", "GET", comp, "", "", 400, "invalid_argument"},
		{"symlink loop", "GET", "loop1", "", "", 400, "invalid_argument"},
		{"symlink out", "GET", "escape/secret", "", "", 403, "permission_denied"},
		{"stat through a symlink out", "GET", "escape/secret", "&stat=true", "", 403, "permission_denied"},
		{"workload's link to /", "GET", "rootlink/etc/shadow", "", "", 403, "permission_denied"},
		{"PUT through a symlink out", "PUT", "escape/pwned", "", "pwned", 403, "permission_denied"},
		{"PUT through the workload's link", "PUT", "rootlink/tmp/pwned-by-e2e", "", "pwned", 403, "permission_denied"},
		{"PUT with dot-dot", "PUT", "..%2F..%2F..%2Foutside%2Fpwned", "", "pwned", 403, "permission_denied"},
		{"DELETE through a symlink out", "DELETE", "escape/secret", "", "", 403, "permission_denied"},
		{"DELETE dot-dot recursively", "DELETE", "%2e%2e", "&recursive=true", "", 403, "permission_denied"},
		{"PUT with a bad mode", "PUT", "m.txt", "&mode=banana", "x", 400, "invalid_argument"},
		{"PUT with a setuid mode", "PUT", "m.txt", "&mode=4755", "x", 400, "invalid_argument"},
		{"bad recursive flag", "DELETE", "ok.txt", "&recursive=maybe", "", 400, "invalid_argument"},
	}
	for _, tc := range web {
		t.Run("http/"+tc.name, func(t *testing.T) {
			var body *strings.Reader
			if tc.body != "" {
				body = strings.NewReader(tc.body)
			}
			var r result
			if body != nil {
				r = doRaw(t, tc.method, fileURL(tc.path, tc.query), body, nil)
			} else {
				r = doRaw(t, tc.method, fileURL(tc.path, tc.query), nil, nil)
			}
			wantProblem(t, tc.name, r, tc.status, tc.code)
			if after := treeOf(outside); after != outBefore {
				t.Errorf("the tree outside the root changed:\n%s\nwas\n%s", after, outBefore)
			}
		})
	}
	if _, err := os.Stat("/tmp/pwned-by-e2e"); err == nil {
		os.Remove("/tmp/pwned-by-e2e")
		t.Error("a PUT through the workload's link to / wrote /tmp/pwned-by-e2e")
	}
	// No temp file of a refused write is left in the root.
	ents, _ := os.ReadDir(root)
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), ".nimbus-") {
			t.Errorf("temp file %s left in the root", e.Name())
		}
	}
}

// readUntilOutput reads s until its output contains want, and returns
// the output read.
func readUntilOutput(t testing.TB, s *client.Stdio, want string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var got []byte
	for !bytes.Contains(got, []byte(want)) {
		_, data, err := s.Next(ctx)
		if err != nil {
			t.Fatalf("waiting for %q: %v (got %q)", want, err, got)
		}
		got = append(got, data...)
	}
	return string(got)
}
