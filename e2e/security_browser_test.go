package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/prometheus/procfs"

	"github.com/nimbus/gateway/client"
	"github.com/nimbus/gateway/targets"
)

// Issue 12's browser holes, against a real gateway and real Chromium:
// a browser session read the signing keys and /etc/shadow through file:
// URLs and wrote files as root through downloads; the DevTools TCP port
// on loopback let anyone on the host drive every browser.

// browserUsers is the --browser-user block of these tests, apart from
// the default one and from every sandbox block of the suite.
const browserUsers = "390100-390199"

// cdpClient drives a cdp or page connection through the gateway.
type cdpClient struct {
	t    testing.TB
	c    *websocket.Conn
	next int
}

func dialCDPURL(t testing.TB, u string) *cdpClient {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c, _, err := websocket.Dial(ctx, u, &websocket.DialOptions{HTTPClient: httpClient})
	if err != nil {
		t.Fatalf("dial %s: %v", redactToken(u), err)
	}
	c.SetReadLimit(64 << 20)
	t.Cleanup(func() { _ = c.CloseNow() })
	return &cdpClient{t: t, c: c}
}

// redactToken keeps connect tokens out of test logs.
func redactToken(u string) string {
	if i := strings.Index(u, "token="); i >= 0 {
		return u[:i] + "token=REDACTED"
	}
	return u
}

// call sends a command and returns its result or its error message.
func (c *cdpClient) call(method string, params any) (json.RawMessage, string) {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c.next++
	raw, _ := json.Marshal(map[string]any{"id": c.next, "method": method, "params": params})
	if err := c.c.Write(ctx, websocket.MessageText, raw); err != nil {
		c.t.Fatalf("%s: %v", method, err)
	}
	for {
		_, b, err := c.c.Read(ctx)
		if err != nil {
			c.t.Fatalf("%s: %v", method, err)
		}
		var r struct {
			ID     int             `json:"id"`
			Result json.RawMessage `json:"result"`
			Error  *struct {
				Message string `json:"message"`
			} `json:"error"`
		}
		if json.Unmarshal(b, &r) != nil || r.ID != c.next {
			continue // an event
		}
		if r.Error != nil {
			return nil, r.Error.Message
		}
		return r.Result, ""
	}
}

// eval evaluates expr in the page (awaiting a promise) and returns its
// value.
func (c *cdpClient) eval(expr string) any {
	c.t.Helper()
	res, e := c.call("Runtime.evaluate", map[string]any{"expression": expr, "returnByValue": true, "awaitPromise": true})
	if e != "" {
		c.t.Fatalf("evaluate %s: %s", expr, e)
	}
	var v struct {
		Result struct {
			Value any `json:"value"`
		} `json:"result"`
	}
	_ = json.Unmarshal(res, &v)
	return v.Result.Value
}

// startBrowserGateway starts a gateway whose browsers run as users of
// browserUsers, and opens a browser session with cdp and page.
func startBrowserGateway(t *testing.T, extra ...string) (*gateway, *client.Client, *client.Session) {
	t.Helper()
	dir := sandboxUserDir(t) // a data dir other users can pass through
	g := startGatewayIn(t, dir, append([]string{"--browser-user", browserUsers}, extra...)...)
	bc := clientFor(g, "demo", g.token("demo", false, []string{"browser"}, nil))
	s := g.open(bc, serviceTarget("browser"), "cdp", "page")
	return g, bc, s
}

// TestSecurityBrowserNoHostFiles: over a browser session's own URLs, no
// file: URL reaches a page (navigate, new target, a page's own
// navigation or fetch), a download lands in the session's downloads
// folder whatever path the client names, and — the wall under the relay's
// filter — every Chromium process runs as a user that is not the
// gateway's and that can read neither the keys nor /etc/shadow.
func TestSecurityBrowserNoHostFiles(t *testing.T) {
	t.Parallel()
	g, _, s := startBrowserGateway(t)
	keys := filepath.Join(g.dir, "keys", "connect.json")
	cdp := dialCDPURL(t, s.Status.Connect["cdp"])
	page := dialCDPURL(t, s.Status.Connect["page"])

	for _, u := range []string{"file:///etc/shadow", "file://" + keys, " FILE:///etc/passwd", "view-source:file:///etc/shadow"} {
		if _, e := page.call("Page.navigate", map[string]any{"url": u}); !strings.Contains(e, "file: URLs are not allowed") {
			t.Errorf("Page.navigate %s: error %q", u, e)
		}
		if _, e := cdp.call("Target.createTarget", map[string]any{"url": u}); !strings.Contains(e, "file: URLs are not allowed") {
			t.Errorf("Target.createTarget %s: error %q", u, e)
		}
	}
	// What the page itself tries is for Chromium (and the user) to stop.
	if v := page.eval(`fetch("file:///etc/shadow").then(r => r.text()).catch(e => "denied")`); v != "denied" {
		t.Errorf("fetch of /etc/shadow from the page: %v", v)
	}
	page.eval(`location.href = "file:///etc/shadow"; 1`)
	time.Sleep(300 * time.Millisecond)
	if v := page.eval(`location.href`); v != "about:blank" {
		t.Errorf("the page navigated itself to %v", v)
	}

	// Downloads: the client names the keys folder; the file lands in the
	// session's own folder.
	if _, e := cdp.call("Browser.setDownloadBehavior", map[string]any{"behavior": "allow", "downloadPath": filepath.Dir(keys)}); e != "" {
		t.Fatalf("setDownloadBehavior: %s", e)
	}
	page.eval(`const a = document.createElement("a"); a.href = "data:text/plain,pwned"; a.download = "pwned.txt";` +
		` document.body.appendChild(a); a.click(); 1`)
	var landed string
	deadline := time.Now().Add(15 * time.Second)
	for landed == "" && time.Now().Before(deadline) {
		m, _ := filepath.Glob(filepath.Join(g.dir, "browsers", "brw_*", "downloads", "pwned.txt"))
		if len(m) == 1 {
			landed = m[0]
		}
		time.Sleep(100 * time.Millisecond)
	}
	if landed == "" {
		t.Error("the download did not land in the session's downloads folder")
	}
	if _, err := os.Stat(filepath.Join(filepath.Dir(keys), "pwned.txt")); err == nil {
		t.Error("the download landed in keys/")
	}

	// The wall: every Chromium process's user is not the gateway's, and
	// that user can read neither the keys nor /etc/shadow.
	procs := targets.ProfileProcesses(filepath.Join(g.dir, "browsers"), true)
	if len(procs) == 0 {
		t.Fatal("no Chromium process")
	}
	gwUID := procUID(t, g.pid())
	for _, p := range procs {
		uid := procUID(t, p.PID)
		if uid < 0 {
			continue // gone meanwhile
		}
		if uid == gwUID {
			t.Errorf("Chromium process %d runs as the gateway's user %d", p.PID, uid)
		}
		for _, f := range []string{keys, "/etc/shadow", filepath.Join(g.dir, "nimbus.db")} {
			cmd := exec.Command("/bin/cat", f)
			cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(uid), Gid: uint32(uid), Groups: []uint32{}}}
			if out, err := cmd.CombinedOutput(); err == nil {
				t.Errorf("the browser's user %d reads %s: %d bytes", uid, f, len(out))
			}
		}
	}
}

// procUID is the real uid of pid, or -1 when it is gone.
func procUID(t testing.TB, pid int) int {
	st, err := procfs.Proc{PID: pid}.NewStatus()
	if err != nil {
		return -1
	}
	return int(st.UIDs[0])
}

// TestSecurityBrowserNoDevToolsPort: no process of the browser service
// listens on a TCP port, and no listening port on the host's loopback
// answers DevTools discovery — what a sandbox shell scanning
// /proc/net/tcp did to find and drive every browser of the host.
func TestSecurityBrowserNoDevToolsPort(t *testing.T) {
	t.Parallel()
	g, _, s := startBrowserGateway(t)
	cdp := dialCDPURL(t, s.Status.Connect["cdp"])
	if _, e := cdp.call("Browser.getVersion", nil); e != "" {
		t.Fatal(e)
	}
	procs := targets.ProfileProcesses(filepath.Join(g.dir, "browsers"), true)
	if len(procs) == 0 {
		t.Fatal("no Chromium process")
	}
	for _, p := range procs {
		if ports := targets.ListeningTCPPorts(p.PID); len(ports) > 0 {
			t.Errorf("Chromium process %d listens on TCP %v", p.PID, ports)
		}
	}
	// The attacker's scan: every listening loopback port, asked for
	// /json/version as Chromium would answer it.
	tcp, err := procfs.NewDefaultFS()
	if err != nil {
		t.Fatal(err)
	}
	lines, err := tcp.NetTCP()
	if err != nil {
		t.Fatal(err)
	}
	hc := &http.Client{Timeout: 500 * time.Millisecond}
	seen := map[uint64]bool{}
	for _, l := range lines {
		if l.St != 10 || !l.LocalAddr.IsLoopback() || seen[l.LocalPort] || len(seen) > 200 {
			continue
		}
		seen[l.LocalPort] = true
		resp, err := hc.Get(fmt.Sprintf("http://127.0.0.1:%d/json/version", l.LocalPort))
		if err != nil {
			continue
		}
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<16))
		resp.Body.Close()
		if strings.Contains(string(body), "webSocketDebuggerUrl") && strings.Contains(string(body), "/devtools/browser/") {
			t.Errorf("port %d answers DevTools discovery: %s", l.LocalPort, body)
		}
	}
	hc.CloseIdleConnections()
}

// TestSecurityBrowserExitClosesSession: a session whose browser exits on
// its own (Browser.close from the client) is closed, reason "target
// exited", by the system, audited — not left open with every connect 502.
func TestSecurityBrowserExitClosesSession(t *testing.T) {
	t.Parallel()
	g, bc, s := startBrowserGateway(t)
	cdp := dialCDPURL(t, s.Status.Connect["cdp"])
	cdp.call("Browser.close", nil) // the answer may or may not come before the pipe ends
	ctx := context.Background()
	var got *client.Session
	deadline := time.Now().Add(15 * time.Second)
	for time.Now().Before(deadline) {
		cur, err := bc.Get(ctx, s.Metadata.ID)
		if err != nil {
			t.Fatal(err)
		}
		if cur.Status.State != "open" {
			got = cur
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if got == nil || got.Status.State != "closed" || got.Status.CloseReason == nil || *got.Status.CloseReason != "target exited" {
		t.Fatalf("after Browser.close: %+v", got)
	}
	admin := clientFor(g, "demo", g.token("demo", true, nil, nil))
	var closed bool
	for _, ev := range g.audit(admin, "&sessionId="+s.Metadata.ID+"&action=session.close") {
		closed = closed || ev.Outcome == "success"
	}
	if !closed {
		t.Error("no session.close audit event")
	}
	r := do(t, http.MethodGet, httpScheme(s.Status.Connect["cdp"])+"/json/version", nil, nil)
	wantProblem(t, "discovery after the browser exited", r, http.StatusConflict, "session_not_open")
}

// TestSecurityBrowserPerTenant: one tenant cannot take every browser
// (issue 12: 8 of 8, then every other tenant got 429 for an hour).
func TestSecurityBrowserPerTenant(t *testing.T) {
	t.Parallel()
	_, bc, _ := startBrowserGateway(t, "--browser-max", "2")
	_, err := bc.Open(context.Background(), client.OpenRequest{Target: serviceTarget("browser"), Channels: []string{"cdp"}})
	var ce *client.Error
	if !errors.As(err, &ce) || ce.Status != http.StatusTooManyRequests || ce.Code != "resource_exhausted" {
		t.Fatalf("a second browser of one tenant with --browser-max 2: %v", err)
	}
}
