package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nimbus/gateway/authn"
	"github.com/nimbus/gateway/client"
)

// gateway is one in-process run of `gateway serve`.
type gateway struct {
	URL    string
	stdout *lockedBuffer
	stop   func()
}

// lockedBuffer is the gateway's stdout, written by its goroutine and read
// by the test.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func startGateway(t testing.TB, dataDir string, extra ...func(*serveConfig)) *gateway {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	c := serveConfig{addr: ln.Addr().String(), dataDir: dataDir, logLevel: "warn", listener: ln,
		ttlDefault: 15 * time.Minute, ttlMax: time.Hour, maxSessions: 1000, drainTimeout: 5 * time.Second,
		browserWarm: -1} // no idle Chromium for tests that never open a browser
	if os.Geteuid() == 0 {
		// A block of sandbox ids of its own (runc, the default as root,
		// takes one): gateways of other test binaries run at once, and
		// each kills, on start, whatever runs under its block.
		first := 5_000_000 + ln.Addr().(*net.TCPAddr).Port*16
		c.sandboxUser = fmt.Sprintf("%d-%d", first, first+15)
	}
	for _, f := range extra {
		f(&c)
	}
	ctx, cancel := context.WithCancel(context.Background())
	g := &gateway{URL: "http://" + ln.Addr().String(), stdout: &lockedBuffer{}}
	done := make(chan error, 1)
	go func() { done <- runServer(ctx, c, g.stdout, io.Discard) }()
	g.stop = func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("gateway exited with %v", err)
		}
	}
	// Wait until it serves.
	for i := 0; i < 200; i++ {
		if resp, err := http.Get(g.URL + "/readyz"); err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return g
			}
		}
		time.Sleep(10 * time.Millisecond)
	}
	g.stop()
	t.Fatal("gateway did not become ready")
	return nil
}

func devToken(t testing.TB, dataDir string, admin bool) string {
	t.Helper()
	key, err := authn.LoadOrCreateDevKey(dataDir)
	if err != nil {
		t.Fatal(err)
	}
	tok, err := authn.Mint(key, authn.DevKeyID, authn.MintRequest{Tenant: "demo", Subject: "alice",
		Services: []string{"worker"}, Sandboxes: []string{"sbx-worker"}, Admin: admin, TTL: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// TestRestart stops the gateway and starts it on the same data directory:
// sessions keep their expiresAt, one that expired while it was down reads
// as expired, and the catalog and audit trail are intact.
func TestRestart(t *testing.T) {
	dir := t.TempDir()
	g := startGateway(t, dir)
	tok := devToken(t, dir, true)
	c := client.New(g.URL, "demo", tok)
	ctx := context.Background()
	long, err := c.Open(ctx, client.OpenRequest{Target: client.ServiceTarget("worker"), Channels: []string{"stdio"}, RequestedTTLMs: 600000})
	if err != nil {
		t.Fatal(err)
	}
	short, err := c.Open(ctx, client.OpenRequest{Target: client.SandboxTarget("sbx-worker"), Channels: []string{"files"}, RequestedTTLMs: 1000})
	if err != nil {
		t.Fatal(err)
	}
	closed, err := c.Open(ctx, client.OpenRequest{Target: client.ServiceTarget("worker"), Channels: []string{"stdio"}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Close(ctx, closed.Metadata.ID, "before restart"); err != nil {
		t.Fatal(err)
	}
	var svcBefore, auditBefore map[string]any
	if err := c.Do(ctx, http.MethodGet, "/v1/tenants/demo/services", nil, &svcBefore); err != nil {
		t.Fatal(err)
	}
	if err := c.Do(ctx, http.MethodGet, "/v1/tenants/demo/audit?pageSize=500", nil, &auditBefore); err != nil {
		t.Fatal(err)
	}
	g.stop()

	time.Sleep(1200 * time.Millisecond) // the short session expires while the gateway is down
	g = startGateway(t, dir)
	defer g.stop()
	c.Endpoint = g.URL

	got, err := c.Get(ctx, long.Metadata.ID)
	if err != nil {
		t.Fatal(err)
	}
	if got.Spec.ExpiresAt != long.Spec.ExpiresAt || got.Status.State != "open" {
		t.Fatalf("long session after restart: %s %s, was %s", got.Status.State, got.Spec.ExpiresAt, long.Spec.ExpiresAt)
	}
	if s, err := c.Get(ctx, short.Metadata.ID); err != nil || s.Status.State != "expired" {
		t.Fatalf("short session after restart: %+v %v", s.Status, err)
	}
	if s, err := c.Get(ctx, closed.Metadata.ID); err != nil || s.Status.State != "closed" || *s.Status.CloseReason != "before restart" {
		t.Fatalf("closed session after restart: %+v %v", s.Status, err)
	}
	var svcAfter, auditAfter map[string]any
	if err := c.Do(ctx, http.MethodGet, "/v1/tenants/demo/services", nil, &svcAfter); err != nil {
		t.Fatal(err)
	}
	if a, b := jsonString(svcBefore), jsonString(svcAfter); a != b {
		t.Fatalf("catalog changed across restart:\n%s\n%s", a, b)
	}
	if err := c.Do(ctx, http.MethodGet, "/v1/tenants/demo/audit?pageSize=500", nil, &auditAfter); err != nil {
		t.Fatal(err)
	}
	before := auditBefore["items"].([]any)
	after := auditAfter["items"].([]any)
	for _, ev := range before {
		if !strings.Contains(jsonString(after), jsonString(ev)) {
			t.Fatalf("audit event lost across restart: %s", jsonString(ev))
		}
	}
	// The expiry that happened while down is recorded by the new process.
	deadline := time.Now().Add(5 * time.Second)
	for {
		var evs map[string]any
		if err := c.Do(ctx, http.MethodGet, "/v1/tenants/demo/audit?action=session.expire&sessionId="+short.Metadata.ID, nil, &evs); err != nil {
			t.Fatal(err)
		}
		if len(evs["items"].([]any)) == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the expiry that fell while the gateway was down was never recorded")
		}
		time.Sleep(50 * time.Millisecond)
	}
	// The sandbox workload runs again: a new open on it works.
	if _, err := c.Open(ctx, client.OpenRequest{Target: client.ServiceTarget("worker"), Channels: []string{"stdio"}}); err != nil {
		t.Fatalf("open after restart: %v", err)
	}
}
