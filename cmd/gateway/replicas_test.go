package main

import (
	"context"
	"encoding/json"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/nimbus/gateway/authn"
	"github.com/nimbus/gateway/client"
	"github.com/nimbus/gateway/store"
	"github.com/nimbus/gateway/store/pgtest"
)

// TestCrossReplicaClose: two gateways on one PostgreSQL store; a close
// through replica A disconnects the session's connection on replica B
// with 4410 within one second — also after the listeners' database
// connections were killed and had to be re-established.
func TestCrossReplicaClose(t *testing.T) {
	pg, dir, a, b := twoReplicas(t, false)
	ca := client.New(a.URL, "demo", devToken(t, dir, false))
	ctx := context.Background()

	// onB opens a session through A and attaches to it through B.
	onB := func() (string, *client.Stdio) {
		s, err := ca.Open(ctx, client.OpenRequest{Target: client.ServiceTarget("worker"), Channels: []string{"stdio"}})
		if err != nil {
			t.Fatal(err)
		}
		conn, err := client.DialStdio(ctx, b.rehost(s.Status.Connect["stdio"]))
		if err != nil {
			t.Fatalf("connect through B: %v", err)
		}
		t.Cleanup(func() { conn.Close() })
		return s.Metadata.ID, conn
	}
	closeOnA := func(id string, conn *client.Stdio) time.Duration {
		start := time.Now()
		if _, err := ca.Close(ctx, id, "done"); err != nil {
			t.Fatal(err)
		}
		rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		for {
			if _, _, err := conn.Next(rctx); err != nil {
				break
			}
		}
		d := time.Since(start)
		if code, reason := conn.CloseStatus(); code != 4410 || reason != "session closed: done" {
			t.Fatalf("B's connection closed with %d %q", code, reason)
		}
		if d > time.Second {
			t.Fatalf("B disconnected %v after the close on A", d)
		}
		return d
	}

	id, conn := onB()
	t.Logf("close on A → 4410 on B in %v", closeOnA(id, conn))

	// Kill every listener connection; the replicas must reconnect and
	// still hear every close.
	pc, err := pgx.Connect(ctx, pg)
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close(ctx)
	var killed int
	if err := pc.QueryRow(ctx, `SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = $1`,
		store.ListenerApplicationName).Scan(&killed); err != nil || killed < 2 {
		t.Fatalf("killed %d listeners: %v", killed, err)
	}
	id, conn = onB()
	t.Logf("after the listeners were killed: close on A → 4410 on B in %v", closeOnA(id, conn))
}

// BenchmarkCrossReplicaClose measures close-to-disconnect latency across
// replicas: a session opened and closed through replica A, its stdio
// connection on replica B, timed from the close call to B's 4410.
func BenchmarkCrossReplicaClose(b *testing.B) {
	_, dir, ga, gb := twoReplicas(b, false)
	ca := client.New(ga.URL, "demo", devToken(b, dir, false))
	ctx := context.Background()
	lat := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		s, err := ca.Open(ctx, client.OpenRequest{Target: client.ServiceTarget("worker"), Channels: []string{"stdio"}})
		if err != nil {
			b.Fatal(err)
		}
		conn, err := client.DialStdio(ctx, gb.rehost(s.Status.Connect["stdio"]))
		if err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
		start := time.Now()
		if _, err := ca.Close(ctx, s.Metadata.ID, "bench"); err != nil {
			b.Fatal(err)
		}
		for {
			if _, _, err := conn.Next(ctx); err != nil {
				break
			}
		}
		lat = append(lat, time.Since(start))
		if code, _ := conn.CloseStatus(); code != 4410 {
			b.Fatalf("close code %d", code)
		}
		conn.Close()
	}
	b.StopTimer()
	slices.Sort(lat)
	b.ReportMetric(float64(lat[len(lat)/2].Microseconds()), "p50-µs")
	b.ReportMetric(float64(lat[min(len(lat)-1, len(lat)*99/100)].Microseconds()), "p99-µs")
}

// TestRelayToOwner: a session's workload runs on the replica that opened
// it (its --public-url is the session's owner); a stdio connect sent to
// another replica is relayed there end to end, close code included, and
// so is the files channel's HTTP face.
func TestRelayToOwner(t *testing.T) {
	_, dir, a, b := twoReplicas(t, true)
	key, err := authn.LoadOrCreateDevKey(dir)
	if err != nil {
		t.Fatal(err)
	}
	tok, err := authn.Mint(key, authn.DevKeyID, authn.MintRequest{Tenant: "demo", Subject: "alice",
		Sandboxes: []string{"sbx-relay"}, Admin: true, TTL: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	ca := client.New(a.URL, "demo", tok)
	ctx := context.Background()
	// Created through A, so its workload runs on A only.
	if err := ca.Do(ctx, "POST", "/v1/tenants/demo/sandboxes", map[string]any{
		"id": "sbx-relay", "command": []string{"/bin/sh", "-c", `read x; echo "relayed-$x"; exit 4`},
	}, nil); err != nil {
		t.Fatal(err)
	}
	s, err := ca.Open(ctx, client.OpenRequest{Target: client.SandboxTarget("sbx-relay"), Channels: []string{"stdio", "files"}})
	if err != nil {
		t.Fatal(err)
	}
	if u := s.Status.Connect["stdio"]; u[:len("ws://"+a.URL[7:])] != "ws://"+a.URL[7:] {
		t.Fatalf("connect URL %s does not point at the owner %s", u, a.URL)
	}
	conn, err := client.DialStdio(ctx, b.rehost(s.Status.Connect["stdio"]))
	if err != nil {
		t.Fatalf("stdio through B: %v", err)
	}
	defer conn.Close()
	if _, err := conn.Write([]byte("x\n")); err != nil {
		t.Fatal(err)
	}
	var out []byte
	rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	for {
		_, data, err := conn.Next(rctx)
		if err != nil {
			break
		}
		out = append(out, data...)
	}
	if string(out) != "relayed-x\n" {
		t.Fatalf("output through the relay: %q", out)
	}
	if code, _, ok := conn.Exit(); !ok || code != 4 {
		t.Fatalf("exit through the relay: %d %v", code, ok)
	}
	if code, _ := conn.CloseStatus(); code != 1000 {
		t.Fatalf("close code through the relay: %d", code)
	}
	// The files channel's HTTP face through B.
	if _, err := ca.Put(ctx, b.rehost(s.Status.Connect["files"]), "hello.txt", strings.NewReader("hi"), 2, nil); err != nil {
		t.Fatalf("upload through B: %v", err)
	}
	var got strings.Builder
	if _, err := ca.Download(ctx, s.Status.Connect["files"], "hello.txt", &got, 0, nil); err != nil || got.String() != "hi" {
		t.Fatalf("download from A: %q %v", got.String(), err)
	}
}

// TestRelayCloseReachesClient: a session closed while a client is
// attached through a relay gets 4410 on that client.
func TestRelayCloseReachesClient(t *testing.T) {
	_, dir, a, b := twoReplicas(t, true)
	ca := client.New(a.URL, "demo", devToken(t, dir, false))
	ctx := context.Background()
	s, err := ca.Open(ctx, client.OpenRequest{Target: client.ServiceTarget("worker"), Channels: []string{"stdio"}})
	if err != nil {
		t.Fatal(err)
	}
	conn, err := client.DialStdio(ctx, b.rehost(s.Status.Connect["stdio"]))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := ca.Close(ctx, s.Metadata.ID, "bye"); err != nil {
		t.Fatal(err)
	}
	rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	for {
		if _, _, err := conn.Next(rctx); err != nil {
			break
		}
	}
	if code, reason := conn.CloseStatus(); code != 4410 || reason != "session closed: bye" {
		t.Fatalf("relayed client closed with %d %q", code, reason)
	}
}

// TestConnectKeyRotation: a fleet shares its connect keys through the
// environment; after a rotation (new signing key, old key still listed)
// the connect URLs minted before it keep working until they expire, and
// new ones are signed with the new key. Dropping the old key ends them.
func TestConnectKeyRotation(t *testing.T) {
	dir := t.TempDir()
	k1 := strings.Repeat("a", 43) + "="
	k2 := strings.Repeat("b", 43) + "="
	keyset := func(signing string, keys ...string) func(*serveConfig) {
		var kv []string
		for _, k := range keys {
			kv = append(kv, `"`+k+`":"`+map[string]string{"k1": k1, "k2": k2}[k]+`"`)
		}
		js := `{"signing":"` + signing + `","keys":{` + strings.Join(kv, ",") + `}}`
		return func(c *serveConfig) { c.connectKeys = js }
	}
	ctx := context.Background()
	g := startGateway(t, dir, keyset("k1", "k1"))
	c := client.New(g.URL, "demo", devToken(t, dir, false))
	s, err := c.Open(ctx, client.OpenRequest{Target: client.ServiceTarget("worker"), Channels: []string{"stdio"}})
	if err != nil {
		t.Fatal(err)
	}
	old := s.Status.Connect["stdio"]
	g.stop()

	g = startGateway(t, dir, keyset("k2", "k1", "k2"))
	conn, err := client.DialStdio(ctx, g.rehost(old))
	if err != nil {
		t.Fatalf("a URL minted before the rotation: %v", err)
	}
	conn.Close()
	c.Endpoint = g.URL
	fresh, err := c.Connect(ctx, s.Metadata.ID)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(fresh.Status.Connect["stdio"], "token=") {
		t.Fatal("no fresh URL")
	}
	g.stop()

	g = startGateway(t, dir, keyset("k2", "k2"))
	defer g.stop()
	if _, err := client.DialStdio(ctx, g.rehost(old)); err == nil {
		t.Fatal("a URL signed with a retired key still works")
	} else if ce, ok := err.(*client.Error); !ok || ce.Code != "unauthenticated" {
		t.Fatalf("retired key: %v", err)
	}
	if conn, err := client.DialStdio(ctx, g.rehost(fresh.Status.Connect["stdio"])); err != nil {
		t.Fatalf("a URL minted after the rotation: %v", err)
	} else {
		conn.Close()
	}
}

// twoReplicas starts a PostgreSQL database and two gateways on it sharing
// one data directory (so, the same signing keys), each with its own
// address as --public-url when owners is set. They stop with t.
func twoReplicas(t testing.TB, owners bool) (pg, dir string, a, b *gateway) {
	t.Helper()
	pg = pgtest.Start(t)
	dir = t.TempDir()
	replica := func(c *serveConfig) {
		c.store = pg
		// Both share one data directory (and its keys): under runc each
		// would claim the same block of sandbox ids and container state,
		// which one gateway per data directory owns (lockDataDir). The
		// relay under test does not depend on the runtime.
		c.sandboxRuntime, c.sandboxUser = runtimeProcess, ""
		if owners {
			c.publicURL = "http://" + c.addr
		}
	}
	a = startGateway(t, dir, replica)
	t.Cleanup(a.stop)
	b = startGateway(t, dir, replica)
	t.Cleanup(b.stop)
	return pg, dir, a, b
}

// rehost points a connect URL minted elsewhere at g, as a load balancer
// sending the client to another replica would.
func (g *gateway) rehost(u string) string {
	pu, err := url.Parse(u)
	if err != nil {
		panic(err)
	}
	pu.Host = strings.TrimPrefix(g.URL, "http://")
	return pu.String()
}

// TestRelayCDPDiscovery: connectOverCDP("http://…/cdp?token=…") sent to a
// replica that does not run the session's browser is answered by the
// owner, through the relay — in the current form and in the old
// Playwright one, which glues the discovery path to the token.
func TestRelayCDPDiscovery(t *testing.T) {
	if _, err := exec.LookPath("chromium"); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("CI must have Chromium: the browser relay is untested otherwise")
		}
		t.Skip("no chromium on PATH")
	}
	_, dir, a, b := twoReplicas(t, true)
	key, err := authn.LoadOrCreateDevKey(dir)
	if err != nil {
		t.Fatal(err)
	}
	tok, err := authn.Mint(key, authn.DevKeyID, authn.MintRequest{Tenant: "demo", Subject: "alice",
		Services: []string{"browser"}, TTL: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	ca := client.New(a.URL, "demo", tok)
	ctx := context.Background()
	s, err := ca.Open(ctx, client.OpenRequest{Target: client.ServiceTarget("browser"), Channels: []string{"cdp"}})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _, _ = ca.Close(ctx, s.Metadata.ID, "done") }()
	cdp := strings.Replace(b.rehost(s.Status.Connect["cdp"]), "ws://", "http://", 1)
	base, query, _ := strings.Cut(cdp, "?")
	for _, u := range []string{base + "/json/version?" + query, cdp + "/json/version/"} {
		resp, err := http.Get(u)
		if err != nil {
			t.Fatal(err)
		}
		var v struct {
			Browser string `json:"Browser"`
			WS      string `json:"webSocketDebuggerUrl"`
		}
		err = json.NewDecoder(resp.Body).Decode(&v)
		resp.Body.Close()
		if err != nil || resp.StatusCode != 200 || v.Browser == "" || !strings.Contains(v.WS, "/v1/connect/"+s.Metadata.ID+"/cdp?token=") {
			t.Fatalf("discovery through B: %d %+v %v", resp.StatusCode, v, err)
		}
	}
}
