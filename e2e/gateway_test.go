package e2e

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nimbus/gateway/authn"
	"github.com/nimbus/gateway/client"
)

// httpClient is every test's HTTP client; TestMain closes its idle
// connections before goleak looks.
var httpClient = &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 16}, Timeout: 30 * time.Second}

// catalogYAML is the catalog of every test gateway: tenant demo with
// workloads on pipes (cat echoes stdin, ticker writes forever, forker
// leaves a background child) and on a terminal, and a second tenant.
const catalogYAML = `tenants:
  - id: demo
    sandboxes:
      - {id: sbx-cat, command: ["/bin/cat"]}
      - {id: sbx-tty, command: ["/bin/sh"], tty: true}
    services:
      - {name: worker, kind: sandbox, sandbox: sbx-cat}
      - {name: pg, kind: builtin}
      - {name: browser, kind: browser}
  - id: other
    sandboxes:
      - {id: sbx-other, command: ["/bin/cat"]}
    services:
      - {name: worker, kind: sandbox, sandbox: sbx-other}
`

// gateway is one `gateway serve` process on a data dir of its own.
type gateway struct {
	t       testing.TB
	dir     string // data dir; also the process's working directory
	addr    string
	URL     string
	args    []string
	key     ed25519.PrivateKey // the data dir's development key
	devKeys bool               // tokens are signed with key (no --tenant-key)
	env     []string           // added to the process's environment
	// metricsURL is the /metrics of its metrics listener (--metrics-addr,
	// a loopback port of its own).
	metricsURL string

	mu     sync.Mutex
	cmd    *exec.Cmd     // guarded by mu
	exited chan struct{} // guarded by mu; closed when cmd was reaped
	logs   bytes.Buffer  // guarded by mu; the gateway's stderr
}

// startGateway runs the built gateway on a free port with the test catalog
// and extra flags, waits until /readyz answers 200, and registers a
// cleanup that stops it and checks that none of its processes are left.
func startGateway(t testing.TB, extra ...string) *gateway {
	t.Helper()
	dir, err := os.MkdirTemp(tmpRoot, "gw-")
	if err != nil {
		t.Fatal(err)
	}
	return startGatewayIn(t, dir, extra...)
}

func startGatewayIn(t testing.TB, dir string, extra ...string) *gateway {
	t.Helper()
	return startGatewayEnv(t, dir, nil, extra...)
}

// startGatewayEnv is startGatewayIn with env (KEY=VALUE entries) added to
// the process's environment, e.g. a secret that must not be in argv.
func startGatewayEnv(t testing.TB, dir string, env []string, extra ...string) *gateway {
	t.Helper()
	cfg := filepath.Join(dir, "catalog.yaml")
	if err := os.WriteFile(cfg, []byte(catalogYAML), 0o644); err != nil {
		t.Fatal(err)
	}
	g := &gateway{t: t, dir: dir, addr: freeAddr(t), devKeys: true, env: env}
	g.URL = "http://" + g.addr
	metricsAddr := freeAddr(t)
	g.metricsURL = "http://" + metricsAddr + "/metrics"
	g.args = append([]string{"serve", "--addr", g.addr, "--data-dir", dir, "--config", cfg, "--log-level", "warn",
		"--metrics-addr", metricsAddr,
		// No warm Chromium: these tests need none, and two cores are shared.
		"--browser-warm", "-1"}, extra...)
	g.args = append(g.args, runtimeArgs(g.addr, extra)...)
	for _, a := range extra {
		if a == "--tenant-key" {
			g.devKeys = false
		}
	}
	if g.devKeys {
		var err error
		if g.key, err = authn.LoadOrCreateDevKey(dir); err != nil {
			t.Fatal(err)
		}
	}
	g.start()
	t.Cleanup(func() {
		g.stop()
		// Every workload of this data dir must be gone with its gateway,
		// a container's too (found by its block's uids).
		deadline := time.Now().Add(5 * time.Second)
		first, last := harnessBlock(g.addr)
		for {
			left := append(procsIn(dir), procsOf(first, last)...)
			if len(left) == 0 {
				break
			}
			if time.Now().After(deadline) {
				t.Errorf("processes left under %s after the gateway stopped: %v", dir, left)
				for _, p := range left {
					_ = syscall.Kill(p.pid, syscall.SIGKILL)
				}
				break
			}
			time.Sleep(50 * time.Millisecond)
		}
		if t.Failed() {
			t.Logf("gateway log:\n%s", g.log())
		}
	})
	return g
}

// harnessBlocks is where the sandbox user ids of the harness's gateways
// start: above every block a test names itself.
const harnessBlocks = 1_000_000

// harnessBlock is the sandbox user ids of the gateway on addr, 16 from
// its port: gateways running at once (in this package and others) have
// different ports, hence blocks, and none claims, on start, another's
// containers.
func harnessBlock(addr string) (first, last uint64) {
	_, p, _ := net.SplitHostPort(addr)
	port, _ := strconv.ParseUint(p, 10, 16)
	first = harnessBlocks + port*16
	return first, first + 15
}

// runtimeArgs are the flags that pick the gateway's sandbox runtime:
// NIMBUS_TEST_SANDBOX_RUNTIME (runc, process; default: the gateway's own
// choice, runc where it can), unless the test picks one; and, where the
// runtime can be runc, a block of sandbox ids of the gateway's own unless
// the test names users.
func runtimeArgs(addr string, extra []string) []string {
	var out []string
	rt := os.Getenv("NIMBUS_TEST_SANDBOX_RUNTIME")
	if !slices.Contains(extra, "--sandbox-runtime") && rt != "" {
		out = append(out, "--sandbox-runtime", rt)
	} else if i := slices.Index(extra, "--sandbox-runtime"); i >= 0 && i+1 < len(extra) {
		rt = extra[i+1]
	}
	if rt == "" {
		if _, err := exec.LookPath("runc"); err != nil || os.Geteuid() != 0 {
			rt = "process" // what the gateway will pick
		}
	}
	if rt != "process" && !slices.Contains(extra, "--sandbox-user") {
		first, last := harnessBlock(addr)
		out = append(out, "--sandbox-user", fmt.Sprintf("%d-%d", first, last))
	}
	return out
}

// freeAddr returns a loopback address with a port nobody listens on.
func freeAddr(t testing.TB) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// start starts the process (again) with the same arguments and waits
// until it is ready.
func (g *gateway) start() {
	g.t.Helper()
	cmd := exec.Command(gatewayBin, g.args...)
	cmd.Dir = g.dir
	if g.env != nil {
		cmd.Env = append(os.Environ(), g.env...)
	}
	cmd.Stdout = io.Discard
	cmd.Stderr = (*logWriter)(g)
	// The gateway dies with the test binary, however it ends.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		g.t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	g.mu.Lock()
	g.cmd, g.exited = cmd, exited
	g.mu.Unlock()
	for i := 0; ; i++ {
		resp, err := httpClient.Get(g.URL + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
		}
		select {
		case <-exited:
			g.t.Fatalf("gateway exited at start:\n%s", g.log())
		default:
		}
		if i > 1000 {
			g.t.Fatalf("gateway not ready after 10 s:\n%s", g.log())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// pid is the gateway process's pid.
func (g *gateway) pid() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.cmd.Process.Pid
}

// kill9 SIGKILLs the gateway and waits until it is reaped.
func (g *gateway) kill9() {
	g.mu.Lock()
	cmd, exited := g.cmd, g.exited
	g.mu.Unlock()
	_ = cmd.Process.Signal(syscall.SIGKILL)
	<-exited
}

// stop drains the gateway with SIGTERM, and SIGKILLs it after 15 s.
func (g *gateway) stop() {
	g.mu.Lock()
	cmd, exited := g.cmd, g.exited
	g.mu.Unlock()
	select {
	case <-exited:
		return
	default:
	}
	_ = cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-exited:
	case <-time.After(15 * time.Second):
		g.t.Errorf("gateway did not stop within 15 s of SIGTERM")
		_ = cmd.Process.Signal(syscall.SIGKILL)
		<-exited
	}
}

type logWriter gateway

func (w *logWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.logs.Len() < 4<<20 {
		w.logs.Write(p)
	}
	return len(p), nil
}

func (g *gateway) log() string {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.logs.String()
}

// token mints a tenant token with the data dir's development key.
func (g *gateway) token(tenant string, admin bool, services, sandboxes []string) string {
	g.t.Helper()
	tok, err := authn.Mint(g.key, authn.DevKeyID, authn.MintRequest{Tenant: tenant, Subject: "e2e",
		Services: services, Sandboxes: sandboxes, Admin: admin, TTL: time.Hour})
	if err != nil {
		g.t.Fatal(err)
	}
	return tok
}

// admin is an admin client of tenant demo with every grant of the catalog.
func (g *gateway) admin() *client.Client {
	c := client.New(g.URL, "demo", g.token("demo", true, []string{"worker", "pg"}, []string{"sbx-cat", "sbx-tty"}))
	c.HTTP = httpClient
	return c
}

// sandboxRoot is the file root of a sandbox of tenant.
func (g *gateway) sandboxRoot(tenant, id string) string {
	return filepath.Join(g.dir, "sandboxes", tenant, id)
}

// open opens a session and fails the test on error.
func (g *gateway) open(c *client.Client, target client.Target, channels ...string) *client.Session {
	g.t.Helper()
	s, err := c.Open(context.Background(), client.OpenRequest{Target: target, Channels: channels})
	if err != nil {
		g.t.Fatalf("open: %v", err)
	}
	return s
}

// result is a raw HTTP answer.
type result struct {
	status int
	header http.Header
	body   []byte
}

// problem decodes a problem+json body: its code and details.
func (r result) problem() (code string, details map[string]any) {
	var p struct {
		Code    string         `json:"code"`
		Details map[string]any `json:"details"`
	}
	_ = json.Unmarshal(r.body, &p)
	return p.Code, p.Details
}

// do sends one raw request. hdr may set Authorization (an empty value
// removes it) and other headers.
func do(t testing.TB, method, url string, body io.Reader, hdr map[string]string) result {
	t.Helper()
	url = httpScheme(url)
	req, err := http.NewRequest(method, url, body)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := httpClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: reading the body: %v", method, url, err)
	}
	return result{status: resp.StatusCode, header: resp.Header, body: b}
}

// wantProblem checks the status, the problem+json content type and code.
func wantProblem(t testing.TB, what string, r result, status int, code string) {
	t.Helper()
	got, _ := r.problem()
	if r.status != status || got != code {
		t.Errorf("%s: got %d %q, want %d %q; body %.300s", what, r.status, got, status, code, r.body)
		return
	}
	if ct := r.header.Get("Content-Type"); !strings.HasPrefix(ct, "application/problem+json") {
		t.Errorf("%s: Content-Type %q, want application/problem+json", what, ct)
	}
	if r.header.Get("X-Request-Id") == "" {
		t.Errorf("%s: no X-Request-Id", what)
	}
}

// storeState is what a hostile request must leave unchanged: every
// session of the tenant (id and state) and the audit events other than
// lookups (which the checks themselves cause).
type storeState struct {
	sessions []string
	events   []auditEvent
}

type auditEvent struct {
	ID        string `json:"id"`
	Action    string `json:"action"`
	Outcome   string `json:"outcome"`
	SessionID string `json:"sessionId"`
	Code      string `json:"code"`
}

// snapshot reads the store through the API with an admin token.
func (g *gateway) snapshot(tenant string) storeState {
	g.t.Helper()
	c := client.New(g.URL, tenant, g.token(tenant, true, nil, nil))
	c.HTTP = httpClient
	var st storeState
	tok := ""
	for {
		p, err := c.List(context.Background(), client.ListOptions{PageSize: 500, PageToken: tok})
		if err != nil {
			g.t.Fatalf("list: %v", err)
		}
		for _, s := range p.Items {
			st.sessions = append(st.sessions, s.Metadata.ID+"/"+s.Status.State)
		}
		if tok = p.NextPageToken; tok == "" {
			break
		}
	}
	st.events = g.audit(c, "")
	return st
}

// audit reads the tenant's audit trail (newest first) without lookups.
func (g *gateway) audit(c *client.Client, query string) []auditEvent {
	g.t.Helper()
	var out []auditEvent
	tok := ""
	for {
		var page struct {
			Items         []auditEvent `json:"items"`
			NextPageToken string       `json:"nextPageToken"`
		}
		path := "/v1/tenants/" + c.Tenant + "/audit?pageSize=500" + query
		if tok != "" {
			path += "&pageToken=" + tok
		}
		if err := c.Do(context.Background(), http.MethodGet, path, nil, &page); err != nil {
			g.t.Fatalf("audit: %v", err)
		}
		for _, e := range page.Items {
			if e.Action != "session.list" && e.Action != "session.get" && e.Action != "audit.read" {
				out = append(out, e)
			}
		}
		if tok = page.NextPageToken; tok == "" {
			break
		}
	}
	return out
}

// unchangedBut checks that after is before plus, at most, audit events
// recording refusals (outcome denied or failure, never success), and that
// the sessions are exactly the same. allowAudit false demands no new
// event at all (an unauthenticated caller must not write the audit trail).
func unchangedBut(t testing.TB, what string, before, after storeState, allowAudit bool) {
	t.Helper()
	if fmt.Sprint(before.sessions) != fmt.Sprint(after.sessions) {
		t.Errorf("%s: sessions changed:\nbefore %v\nafter  %v", what, before.sessions, after.sessions)
	}
	n := len(after.events) - len(before.events)
	if n < 0 {
		t.Errorf("%s: audit events disappeared (%d → %d)", what, len(before.events), len(after.events))
		return
	}
	if n > 0 && !allowAudit {
		t.Errorf("%s: %d audit events written, want none: %+v", what, n, after.events[:n])
	}
	for _, e := range after.events[:n] {
		if e.Outcome == "success" {
			t.Errorf("%s: a successful audit event was written: %+v", what, e)
		}
	}
}

func serviceTarget(name string) client.Target { return client.ServiceTarget(name) }

// clientFor is a client of tenant with token on g.
func clientFor(g *gateway, tenant, token string) *client.Client {
	c := client.New(g.URL, tenant, token)
	c.HTTP = httpClient
	return c
}

// httpScheme turns a ws:// connect URL into its http:// twin.
func httpScheme(u string) string {
	if rest, ok := strings.CutPrefix(u, "ws://"); ok {
		return "http://" + rest
	}
	if rest, ok := strings.CutPrefix(u, "wss://"); ok {
		return "https://" + rest
	}
	return u
}
