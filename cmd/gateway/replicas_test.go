package main

import (
	"context"
	"net/url"
	"slices"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/nimbus/gateway/client"
	"github.com/nimbus/gateway/store"
	"github.com/nimbus/gateway/store/pgtest"
)

// TestCrossReplicaClose: two gateways on one PostgreSQL store; a close
// through replica A disconnects the session's connection on replica B
// with 4410 within one second — also after the listeners' database
// connections were killed and had to be re-established.
func TestCrossReplicaClose(t *testing.T) {
	pg := pgtest.Start(t)
	dir := t.TempDir() // shared: both replicas use the same signing keys
	withStore := func(c *serveConfig) { c.store = pg }
	a := startGateway(t, dir, withStore)
	defer a.stop()
	b := startGateway(t, dir, withStore)
	defer b.stop()
	ca := client.New(a.URL, "demo", devToken(t, dir, false))
	ctx := context.Background()

	// onB opens a session through A and attaches to it through B.
	onB := func() (string, *client.Stdio) {
		s, err := ca.Open(ctx, client.OpenRequest{Target: client.ServiceTarget("worker"), Channels: []string{"stdio"}})
		if err != nil {
			t.Fatal(err)
		}
		u, _ := url.Parse(s.Status.Connect["stdio"])
		u.Host = b.URL[len("http://"):]
		conn, err := client.DialStdio(ctx, u.String())
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
	pg := pgtest.Start(b)
	dir := b.TempDir()
	withStore := func(c *serveConfig) { c.store = pg }
	ga := startGateway(b, dir, withStore)
	defer ga.stop()
	gb := startGateway(b, dir, withStore)
	defer gb.stop()
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
		u, _ := url.Parse(s.Status.Connect["stdio"])
		u.Host = gb.URL[len("http://"):]
		conn, err := client.DialStdio(ctx, u.String())
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
