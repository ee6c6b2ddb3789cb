package main

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nimbus/gateway/authn"
	"github.com/nimbus/gateway/client"
)

// childEnv makes the test binary act as `gateway serve` (see TestMain), so
// a benchmark can measure a gateway in a process of its own.
const childEnv = "NIMBUS_TEST_CHILD_SERVE"

// BenchmarkIdleStdioMemory measures the gateway's resident memory per idle
// attached stdio connection at 10,000 connections (target: ≤ 30 KiB). The
// gateway runs in a child process so that the clients' memory is not
// counted; its VmRSS is read from /proc before and after the connections,
// as it is right after connecting ("KiB/conn") and in the steady state
// after a garbage collection, which the runtime runs on an idle process
// every two minutes ("KiB/conn-after-gc").
func BenchmarkIdleStdioMemory(b *testing.B) {
	const n = 10000
	for i := 0; i < b.N; i++ {
		perConn, afterGC := idleStdioMemory(b, n)
		b.ReportMetric(perConn/1024, "KiB/conn")
		b.ReportMetric(afterGC/1024, "KiB/conn-after-gc")
	}
}

func idleStdioMemory(b *testing.B, n int) (perConn, afterGC float64) {
	dir := b.TempDir()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	cmd := exec.Command(os.Args[0], "serve", "--addr", addr, "--data-dir", dir, "--log-level", "error", "--metrics-addr", "off",
		"--max-conns-per-session", strconv.Itoa(n+10))
	cmd.Env = append(os.Environ(), childEnv+"=1")
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	defer func() { _ = cmd.Process.Kill(); _, _ = cmd.Process.Wait() }()
	url := "http://" + addr
	for i := 0; ; i++ {
		if resp, err := http.Get(url + "/readyz"); err == nil {
			resp.Body.Close()
			break
		}
		if i > 500 {
			b.Fatal("child gateway did not start")
		}
		time.Sleep(10 * time.Millisecond)
	}
	ctx := context.Background()
	key, err := authn.LoadOrCreateDevKey(dir)
	if err != nil {
		b.Fatal(err)
	}
	tok, err := authn.Mint(key, authn.DevKeyID, authn.MintRequest{Tenant: "demo", Subject: "bench",
		Sandboxes: []string{"sbx-idle"}, Admin: true, TTL: time.Hour})
	if err != nil {
		b.Fatal(err)
	}
	c := client.New(url, "demo", tok)
	if err := c.Do(ctx, http.MethodPost, "/v1/tenants/demo/sandboxes", map[string]any{"id": "sbx-idle", "command": []string{"/bin/cat"}}, nil); err != nil {
		b.Fatal(err)
	}
	sess, err := c.Open(ctx, client.OpenRequest{Target: client.SandboxTarget("sbx-idle"), Channels: []string{"stdio"}})
	if err != nil {
		b.Fatal(err)
	}
	u := sess.Status.Connect["stdio"]
	conns := make([]*client.Stdio, 0, n)
	defer func() {
		for _, s := range conns {
			_ = s.Close()
		}
	}()
	// One connection first, so one-time costs are not counted per conn.
	first, err := client.DialStdio(ctx, u)
	if err != nil {
		b.Fatal(err)
	}
	conns = append(conns, first)
	time.Sleep(500 * time.Millisecond)
	gc := func() {
		_ = cmd.Process.Signal(syscall.SIGUSR1)
		time.Sleep(2 * time.Second)
	}
	gc()
	before := rssOf(b, cmd.Process.Pid)
	for i := 0; i < n; i++ {
		s, err := client.DialStdio(ctx, u)
		if err != nil {
			b.Fatalf("connection %d: %v", i, err)
		}
		conns = append(conns, s)
	}
	time.Sleep(2 * time.Second) // let the gateway settle
	after := rssOf(b, cmd.Process.Pid)
	gc()
	steady := rssOf(b, cmd.Process.Pid)
	perConn = float64(after-before) / float64(n)
	afterGC = float64(steady-before) / float64(n)
	b.Logf("gateway RSS %d KiB → %d KiB for %d idle stdio connections: %.1f KiB each; %d KiB, %.1f KiB each after a GC",
		before/1024, after/1024, n, perConn/1024, steady/1024, afterGC/1024)
	return perConn, afterGC
}

// rssOf reads VmRSS of pid in bytes.
func rssOf(b testing.TB, pid int) int64 {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "VmRSS:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			return kb * 1024
		}
	}
	b.Fatal("no VmRSS")
	return 0
}
