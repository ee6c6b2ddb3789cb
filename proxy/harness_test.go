package proxy_test

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/nimbus/gateway/authn"
	"github.com/nimbus/gateway/internal/testruntime"
	"github.com/nimbus/gateway/lease"
	"github.com/nimbus/gateway/proxy"
	"github.com/nimbus/gateway/store"
	"github.com/nimbus/gateway/targets"
)

// testCatalog is the catalog every proxy test starts from: the demo
// tenant plus a second tenant, a dynamic service, and sandboxes in every
// state a test needs.
const testCatalog = `
tenants:
  - id: demo
    sandboxes:
      - {id: sbx-worker, command: ["/bin/sh"], tty: true}
      - {id: sbx-other, command: ["/bin/cat"]}
      - {id: sbx-broken, command: ["/nonexistent/workload"]}
    services:
      - {name: worker, kind: sandbox, sandbox: sbx-worker}
      - {name: dyn, kind: sandbox, sandbox: sbx-worker, dynamic: true}
      - {name: broken, kind: sandbox, sandbox: sbx-broken}
      - {name: browser, kind: browser}
      - {name: pg, kind: builtin}
      - {name: billing, kind: external, url: "https://billing.internal"}
  - id: acme
    sandboxes:
      - {id: sbx-acme, command: ["/bin/cat"]}
    services:
      - {name: worker, kind: sandbox, sandbox: sbx-acme}
`

// clock is a settable clock shared by the server and the test.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.t.IsZero() {
		return time.Now()
	}
	return c.t
}

// Advance moves a frozen clock (freezing it at the real time first).
func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.t.IsZero() {
		c.t = time.Now()
	}
	c.t = c.t.Add(d)
}

// env is one gateway under test, on a real socket with a real SQLite store
// and real sandbox workloads.
type env struct {
	t       testing.TB
	dir     string
	URL     string
	srv     *proxy.Server
	db      *store.SQLite
	catalog *targets.Catalog
	key     ed25519.PrivateKey
	clock   *clock
	logs    *syncBuffer
	lease   *lease.Sessions
}

type envOptions struct {
	mutate    func(*proxy.Options) // last word on the server's options
	maxOpen   int
	ttl       lease.TTLPolicy
	noExpirer bool
	dir       string
	quiet     bool // log at warn and above only
}

func newEnv(t testing.TB, o envOptions) *env {
	t.Helper()
	// Goroutines alive now are not this test's; every other one must be
	// gone once the env is torn down.
	ignore := goleak.IgnoreCurrent()
	e := &env{t: t, dir: o.dir, clock: &clock{}, logs: &syncBuffer{}}
	if e.dir == "" {
		e.dir = t.TempDir()
	}
	level := zap.DebugLevel
	if o.quiet {
		level = zap.WarnLevel
	}
	log := zap.New(zapcore.NewCore(zapcore.NewJSONEncoder(zap.NewProductionEncoderConfig()), zapcore.AddSync(e.logs), level))
	db, err := store.OpenSQLite(e.dir + "/nimbus.db")
	if err != nil {
		t.Fatal(err)
	}
	e.db = db
	e.key, err = authn.LoadOrCreateDevKey(e.dir)
	if err != nil {
		t.Fatal(err)
	}
	verifier, err := authn.NewVerifier([]authn.Key{authn.DevKey(e.key)})
	if err != nil {
		t.Fatal(err)
	}
	ck, err := authn.LoadOrCreateConnectKeys(e.dir)
	if err != nil {
		t.Fatal(err)
	}
	cfgPath := e.dir + "/catalog.yaml"
	writeFile(t, cfgPath, testCatalog)
	cfg, err := targets.LoadConfig(cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	copts := targets.Options{DataDir: e.dir, Logger: log}
	testruntime.Apply(t, &copts)
	e.catalog = targets.NewCatalog(db, copts)
	if err := e.catalog.Seed(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	if err := e.catalog.Start(ctx); err != nil {
		t.Fatal(err)
	}
	po := proxy.Options{
		Sessions: db, Catalog: e.catalog, Tenants: verifier, ConnectKeys: ck, Ping: db.Ping,
		Logger: log, Now: e.clock.Now,
	}
	if o.mutate != nil {
		o.mutate(&po)
	}
	if po.Lease == nil {
		prov := map[targets.Kind]lease.Provisioner{}
		if po.Browsers != nil {
			prov[targets.KindBrowser] = po.Browsers
		}
		po.Lease = lease.NewSessions(lease.SessionsOptions{Store: po.Sessions, Catalog: e.catalog, TTL: o.ttl,
			MaxOpenPerTenant: o.maxOpen, Owner: strings.TrimRight(po.PublicURL, "/"), Provisioners: prov,
			Expiry: lease.ExpirerOptions{Logger: log}, Now: po.Now, Logger: log})
	}
	e.lease = po.Lease
	srv := proxy.New(po)
	e.srv = srv
	hs := httptest.NewServer(srv)
	e.URL = hs.URL
	stopExpirer := func() {}
	if !o.noExpirer {
		ectx, cancel := context.WithCancel(ctx)
		done := make(chan struct{})
		go func() { defer close(done); e.lease.RunExpiry(ectx) }()
		stopExpirer = func() { cancel(); <-done }
	}
	t.Cleanup(func() {
		sctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		if err := srv.Shutdown(sctx); err != nil {
			t.Errorf("connections still open at teardown: %v", err)
		}
		hs.Close()
		stopExpirer()
		e.catalog.Close()
		_ = db.Close()
		http.DefaultClient.CloseIdleConnections()
		// Find retries for a while, so goroutines on their way out pass.
		if err := goleak.Find(ignore); err != nil {
			t.Errorf("goroutines leaked: %v", err)
		}
	})
	return e
}

// token mints a tenant token.
func (e *env) token(tenant, subject string, services, sandboxes []string, admin bool) string {
	e.t.Helper()
	tok, err := authn.Mint(e.key, authn.DevKeyID, authn.MintRequest{
		Tenant: tenant, Subject: subject, Services: services, Sandboxes: sandboxes, Admin: admin, TTL: time.Hour,
	})
	if err != nil {
		e.t.Fatal(err)
	}
	return tok
}

// alice may open everything in demo.
func (e *env) alice() string {
	return e.token("demo", "alice", []string{"worker", "dyn", "broken", "browser", "pg", "billing"},
		[]string{"sbx-worker", "sbx-other", "sbx-broken"}, false)
}

func (e *env) admin() string { return e.token("demo", "root", nil, nil, true) }

// response is a decoded answer.
type response struct {
	Status int
	Header http.Header
	Body   []byte
}

func (r response) JSON(t testing.TB) map[string]any {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(r.Body, &m); err != nil {
		t.Fatalf("body is not JSON: %v: %s", err, r.Body)
	}
	return m
}

// code is the problem+json code of the answer ("" for a success).
func (r response) Code(t testing.TB) string {
	t.Helper()
	if r.Status < 300 {
		return ""
	}
	if ct := r.Header.Get("Content-Type"); ct != "application/problem+json" {
		t.Fatalf("error answer has Content-Type %q, want application/problem+json: %s", ct, r.Body)
	}
	c, _ := r.JSON(t)["code"].(string)
	return c
}

func (e *env) do(method, path, token string, body any) response {
	e.t.Helper()
	var rd io.Reader
	switch b := body.(type) {
	case nil:
	case string:
		rd = strings.NewReader(b)
	case []byte:
		rd = bytes.NewReader(b)
	default:
		raw, err := json.Marshal(b)
		if err != nil {
			e.t.Fatal(err)
		}
		rd = bytes.NewReader(raw)
	}
	req, err := http.NewRequest(method, e.URL+path, rd)
	if err != nil {
		e.t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		e.t.Fatal(err)
	}
	if resp.Header.Get("X-Request-Id") == "" {
		e.t.Errorf("%s %s: no X-Request-Id", method, path)
	}
	return response{Status: resp.StatusCode, Header: resp.Header, Body: b}
}

// open opens a session in demo and returns the answer.
func (e *env) open(token string, body any) response {
	return e.do(http.MethodPost, "/v1/tenants/demo/sessions", token, body)
}

// mustOpen opens a session on the worker service and returns its id.
func (e *env) mustOpen(token string, body any) map[string]any {
	e.t.Helper()
	r := e.open(token, body)
	if r.Status != http.StatusCreated {
		e.t.Fatalf("open: %d %s", r.Status, r.Body)
	}
	return r.JSON(e.t)
}

func workerOpen(channels ...string) map[string]any {
	if len(channels) == 0 {
		channels = []string{"stdio"}
	}
	return map[string]any{"target": map[string]any{"service": map[string]any{"name": "worker"}}, "channels": channels}
}

func sessionID(m map[string]any) string {
	return m["metadata"].(map[string]any)["id"].(string)
}

func field(m map[string]any, path ...string) any {
	var v any = m
	for _, p := range path {
		mm, ok := v.(map[string]any)
		if !ok {
			return nil
		}
		v = mm[p]
	}
	return v
}

// syncBuffer collects log output from several goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func writeFile(t testing.TB, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
}

// newBenchEnv is newEnv without the per-tenant limit and logs.
func newBenchEnv(b *testing.B) *env {
	return newEnv(b, envOptions{maxOpen: 1 << 30, quiet: true})
}
