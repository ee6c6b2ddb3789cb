package e2e

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/nimbus/gateway/client"
	"github.com/nimbus/gateway/store/pgtest"
	"github.com/nimbus/gateway/targets"
)

// createSandbox creates a sandbox of tenant demo through the admin API.
func (g *gateway) createSandbox(id string, tty bool, argv ...string) {
	g.t.Helper()
	err := g.admin().Do(context.Background(), http.MethodPost, "/v1/tenants/demo/sandboxes",
		map[string]any{"id": id, "command": argv, "tty": tty}, nil)
	if err != nil {
		g.t.Fatalf("create sandbox %s: %v", id, err)
	}
}

// adminFor is an admin client of demo that may reach the given sandboxes.
func (g *gateway) adminFor(sandboxes ...string) *client.Client {
	return clientFor(g, "demo", g.token("demo", true, []string{"worker"}, append(sandboxes, "sbx-cat")))
}

// workloadPID is the pid in a session's targetSnapshot backend "local:<pid>".
func workloadPID(t testing.TB, s *client.Session) int {
	t.Helper()
	b, _ := s.Spec.TargetSnapshot["backend"].(string)
	pid, err := strconv.Atoi(strings.TrimPrefix(b, "local:"))
	if err != nil || pid <= 0 {
		t.Fatalf("no pid in backend %q", b)
	}
	return pid
}

// TestKillWorkloadMidStream SIGKILLs a workload while it streams output:
// the attached client gets the output, then the exit message with code
// 137 and signal SIGKILL, then close 1000.
func TestKillWorkloadMidStream(t *testing.T) {
	t.Parallel()
	g := startGateway(t)
	g.createSandbox("sbx-tick", false, "sh", "-c", `i=0; while :; do i=$((i+1)); echo tick $i; sleep 0.01; done`)
	s := g.open(g.adminFor("sbx-tick"), client.SandboxTarget("sbx-tick"), "stdio")
	st, err := client.DialStdio(context.Background(), s.Status.Connect["stdio"])
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	readUntilOutput(t, st, "tick ")
	if err := syscall.Kill(workloadPID(t, s), syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for {
		_, _, err := st.Next(ctx)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			code, reason := st.CloseStatus()
			t.Fatalf("stream ended with %v (close %d %q), want the exit message and 1000", err, code, reason)
		}
	}
	code, sig, ok := st.Exit()
	if !ok || code != 137 || sig != "SIGKILL" {
		t.Errorf("exit = %d %q %v, want 137 SIGKILL", code, sig, ok)
	}
	if c, _ := st.CloseStatus(); c != 1000 {
		t.Errorf("close code %d, want 1000", c)
	}
}

// TestGatewayKill9Restart SIGKILLs the gateway with live sessions and
// connections, then starts it again on the same data dir: no workload of
// the first run survives it (not even a background child), the sessions
// are intact with the same expiresAt, and the connect URLs the clients
// already hold work again.
func TestGatewayKill9Restart(t *testing.T) {
	t.Parallel()
	g := startGateway(t)
	// A workload that leaves a background child, as shells and
	// supervisors do.
	g.createSandbox("sbx-fork", false, "sh", "-c", "sleep 600 & exec cat")
	adm := g.adminFor("sbx-fork")
	s1 := g.open(adm, serviceTarget("worker"), "stdio", "files")
	s2 := g.open(adm, client.SandboxTarget("sbx-fork"), "stdio")
	c1, err := client.DialStdio(context.Background(), s1.Status.Connect["stdio"])
	if err != nil {
		t.Fatal(err)
	}
	defer c1.Close()
	c2, err := client.DialStdio(context.Background(), s2.Status.Connect["stdio"])
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	echoes(t, c1, "before-kill-1")
	echoes(t, c2, "before-kill-2")
	// A live browser session too: its Chromium must not outlive the
	// gateway's restart either.
	bc := clientFor(g, "demo", g.token("demo", false, []string{"browser"}, nil))
	if _, err := bc.Open(context.Background(), client.OpenRequest{Target: serviceTarget("browser"), Channels: []string{"cdp"}}); err != nil {
		t.Fatalf("browser session: %v", err)
	}
	if n := len(targets.ProfileProcesses(filepath.Join(g.dir, "browsers"), true)); n == 0 {
		t.Fatal("no Chromium runs for the browser session")
	}

	gwPID := g.pid()
	var firstRun []proc
	for _, p := range procsIn(g.dir) {
		if p.pid != gwPID {
			firstRun = append(firstRun, p)
		}
	}
	if len(firstRun) < 4 { // cat, tty sh, other cat, fork's cat and sleep
		t.Fatalf("workloads of the first run: %v", firstRun)
	}
	t.Logf("first run: gateway %d with %d workload and browser processes", gwPID, len(firstRun))

	g.kill9()
	// Both clients see their connection end.
	for i, c := range []*client.Stdio{c1, c2} {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		for {
			if _, _, err := c.Next(ctx); err != nil {
				break
			}
		}
		cancel()
		_ = i
	}
	g.start()
	// No workload process of the first run survives: the direct children
	// die with the gateway (Pdeathsig); their descendants (the fork's
	// background sleep), which Pdeathsig does not reach, are killed by the
	// restarted gateway before it starts its own workloads.
	var orphans []proc
	deadline := time.Now().Add(3 * time.Second)
	for {
		orphans = orphans[:0]
		for _, p := range firstRun {
			if alive(p.pid) {
				orphans = append(orphans, p)
			}
		}
		if len(orphans) == 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if len(orphans) > 0 {
		t.Errorf("workload processes of the SIGKILLed gateway still run: %v", orphans)
	}
	if left := targets.ProfileProcesses(filepath.Join(g.dir, "browsers"), true); len(left) > 0 {
		t.Errorf("Chromium of the SIGKILLed gateway still runs after the restart: %v", left)
	}

	for _, want := range []*client.Session{s1, s2} {
		got, err := adm.Get(context.Background(), want.Metadata.ID)
		if err != nil {
			t.Fatal(err)
		}
		if got.Status.State != "open" || got.Spec.ExpiresAt != want.Spec.ExpiresAt {
			t.Errorf("session %s after restart: %s, expires %s; want open, expires %s",
				want.Metadata.ID, got.Status.State, got.Spec.ExpiresAt, want.Spec.ExpiresAt)
		}
	}
	// The URLs the clients already hold.
	for i, s := range []*client.Session{s1, s2} {
		c, err := client.DialStdio(context.Background(), s.Status.Connect["stdio"])
		if err != nil {
			t.Fatalf("reconnecting with the connect URL of %s: %v", s.Metadata.ID, err)
		}
		echoes(t, c, fmt.Sprintf("after-restart-%d", i))
		c.Close()
	}
	fc := client.New(g.URL, "demo", "")
	fc.HTTP = httpClient
	if _, err := fc.Put(context.Background(), s1.Status.Connect["files"], "after-restart.txt", strings.NewReader("ok"), 2, nil); err != nil {
		t.Errorf("files after restart with the old URL: %v", err)
	}
	// Kill the survivors now, so that the cleanup's check does not count
	// them twice.
	for _, p := range orphans {
		_ = syscall.Kill(p.pid, syscall.SIGKILL)
	}
}

// TestReadOnlyStore makes the SQLite store unwritable under a running
// gateway (chattr +i on the database, its WAL and shared memory: the
// ext4 immutable flag fails even writes through descriptors already
// open, as a disk remounted read-only would): opens and closes fail with
// 503 unavailable and create nothing, while a live stdio connection keeps
// flowing; once the files are writable again, opens work again.
func TestReadOnlyStore(t *testing.T) {
	t.Parallel()
	if _, err := exec.LookPath("chattr"); err != nil {
		t.Skip("chattr not installed")
	}
	g := startGateway(t)
	immutableBlocksOpenFiles(t, g.dir)
	adm := g.admin()
	s := g.open(adm, serviceTarget("worker"), "stdio")
	c, err := client.DialStdio(context.Background(), s.Status.Connect["stdio"])
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	echoes(t, c, "before")
	before := g.snapshot("demo")

	var files []string
	for _, f := range []string{"nimbus.db", "nimbus.db-wal", "nimbus.db-shm"} {
		if _, err := os.Stat(filepath.Join(g.dir, f)); err == nil {
			files = append(files, filepath.Join(g.dir, f))
		}
	}
	if out, err := exec.Command("chattr", append([]string{"+i"}, files...)...).CombinedOutput(); err != nil {
		t.Skipf("chattr +i is not supported here: %v %s", err, out)
	}
	unfreeze := func() {
		if out, err := exec.Command("chattr", append([]string{"-i"}, files...)...).CombinedOutput(); err != nil {
			t.Errorf("chattr -i: %v %s", err, out)
		}
	}
	t.Cleanup(unfreeze) // runs before the gateway's cleanup stops it
	// Prove the files are really unwritable.
	if f, err := os.OpenFile(files[0], os.O_WRONLY, 0); err == nil {
		f.Close()
		t.Fatal("the database is still writable after chattr +i")
	}

	for i := 0; i < 3; i++ {
		_, err := adm.Open(context.Background(), client.OpenRequest{Target: serviceTarget("worker"), Channels: []string{"stdio"}})
		var e *client.Error
		if !errors.As(err, &e) || e.Status != 503 || e.Code != "unavailable" {
			t.Errorf("open %d on a read-only store: %v, want 503 unavailable", i, err)
		}
		echoes(t, c, fmt.Sprintf("during-%d", i))
	}
	if _, err := adm.Close(context.Background(), s.Metadata.ID, "x"); !isCode(err, 503, "unavailable") {
		t.Errorf("close on a read-only store: %v, want 503 unavailable", err)
	}
	echoes(t, c, "after-failed-close")

	unfreeze()
	deadline := time.Now().Add(10 * time.Second)
	for {
		s2, err := adm.Open(context.Background(), client.OpenRequest{Target: serviceTarget("worker"), Channels: []string{"stdio"}})
		if err == nil {
			after := g.snapshot("demo")
			if len(after.sessions) != len(before.sessions)+1 || !strings.HasPrefix(after.sessions[0], s2.Metadata.ID) {
				t.Errorf("sessions after recovery %v, want %v plus %s", after.sessions, before.sessions, s2.Metadata.ID)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("opens still fail 10 s after the store became writable: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	echoes(t, c, "after-recovery")
}

// immutableBlocksOpenFiles skips the test unless chattr +i in dir fails
// writes through a descriptor opened before (ext4 does; tmpfs does not).
func immutableBlocksOpenFiles(t *testing.T, dir string) {
	t.Helper()
	probe := filepath.Join(dir, "immutable-probe")
	f, err := os.OpenFile(probe, os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer os.Remove(probe)
	defer f.Close()
	if out, err := exec.Command("chattr", "+i", probe).CombinedOutput(); err != nil {
		t.Skipf("chattr +i is not supported here (needs root and a file system with the flag): %v %s", err, out)
	}
	defer func() { _ = exec.Command("chattr", "-i", probe).Run() }()
	if _, err := f.WriteAt([]byte("x"), 0); err == nil {
		t.Skip("this file system lets open descriptors write to an immutable file; the fault cannot be made here")
	}
}

// isCode reports whether err is a problem answer with status and code.
func isCode(err error, status int, code string) bool {
	var e *client.Error
	return errors.As(err, &e) && e.Status == status && e.Code == code
}

// TestReadOnlyStorePostgres turns the gateway's PostgreSQL database
// read-only (default_transaction_read_only, then every backend cut, as a
// failover to a standby does): opens fail with 503 unavailable and create
// nothing, while a live stdio connection keeps flowing.
func TestReadOnlyStorePostgres(t *testing.T) {
	t.Parallel()
	pgURL := pgtest.Start(t)
	g := startGateway(t, "--store", pgURL)
	adm := g.admin()
	s := g.open(adm, serviceTarget("worker"), "stdio")
	c, err := client.DialStdio(context.Background(), s.Status.Connect["stdio"])
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	echoes(t, c, "before")
	before := g.snapshot("demo")

	ctx := context.Background()
	db, err := pgx.Connect(ctx, pgURL)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close(ctx)
	u, _ := url.Parse(pgURL)
	name := strings.TrimPrefix(u.Path, "/")
	if _, err := db.Exec(ctx, `ALTER DATABASE `+pgx.Identifier{name}.Sanitize()+` SET default_transaction_read_only = on`); err != nil {
		t.Fatal(err)
	}
	if _, err := db.Exec(ctx, `SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()`, name); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 3; i++ {
		_, err := adm.Open(ctx, client.OpenRequest{Target: serviceTarget("worker"), Channels: []string{"stdio"}})
		if !isCode(err, 503, "unavailable") {
			t.Errorf("open %d on a read-only store: %v, want 503 unavailable", i, err)
		}
		echoes(t, c, fmt.Sprintf("during-%d", i))
	}
	// Writable again (and every backend cut, so the pool reconnects
	// without the read-only default); a lookup fails closed while its
	// audit event cannot be stored, so the store is compared only now.
	if _, err := db.Exec(ctx, `ALTER DATABASE `+pgx.Identifier{name}.Sanitize()+` SET default_transaction_read_only = off`); err != nil {
		t.Fatal(err)
	}
	if _, err := db.Exec(ctx, `SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()`, name); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		_, err := adm.List(ctx, client.ListOptions{PageSize: 1})
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the gateway did not recover 10 s after the store became writable: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	after := g.snapshot("demo")
	unchangedBut(t, "read-only store", before, after, true)
	echoes(t, c, "after-recovery")
}

// TestHalfOpenClientDropped completes a WebSocket handshake over a raw
// TCP connection, then never reads or answers a ping: with pings every
// 200 ms and a 500 ms ping timeout the gateway drops it (1001 "ping
// timeout", disconnect audited) once the ping timeout passes, while an attentive client of the same
// session stays connected.
func TestHalfOpenClientDropped(t *testing.T) {
	t.Parallel()
	g := startGateway(t, "--ping-interval", "200ms", "--ping-timeout", "500ms")
	adm := g.admin()
	s := g.open(adm, serviceTarget("worker"), "stdio")
	u, _ := url.Parse(s.Status.Connect["stdio"])

	raw, err := net.Dial("tcp", u.Host)
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	key := make([]byte, 16)
	_, _ = rand.Read(key)
	fmt.Fprintf(raw, "GET %s HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"+
		"Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: nimbus.stdio.v1\r\n\r\n",
		u.RequestURI(), u.Host, base64.StdEncoding.EncodeToString(key))
	br := bufio.NewReader(raw)
	status, err := br.ReadString('\n')
	if err != nil || !strings.Contains(status, "101") {
		t.Fatalf("handshake: %q %v", status, err)
	}
	for {
		line, err := br.ReadString('\n')
		if err != nil {
			t.Fatal(err)
		}
		if line == "\r\n" {
			break
		}
	}
	// From here on the raw client is silent: it neither reads nor pongs.

	attentive, err := client.DialStdio(context.Background(), s.Status.Connect["stdio"])
	if err != nil {
		t.Fatal(err)
	}
	defer attentive.Close()
	out := make(chan error, 1)
	lines := make(chan string, 64)
	go func() {
		for {
			_, b, err := attentive.Next(context.Background())
			if err != nil {
				out <- err
				return
			}
			select {
			case lines <- string(b):
			default:
			}
		}
	}()

	start := time.Now()
	var dropped *auditEvent
	for dropped == nil && time.Since(start) < 30*time.Second {
		time.Sleep(200 * time.Millisecond)
		for _, e := range g.audit(adm, "&sessionId="+s.Metadata.ID+"&action=session.disconnect") {
			if e.Code == "ws_1001" {
				dropped = &e
				break
			}
		}
	}
	if dropped == nil {
		t.Fatalf("the silent client was not dropped within 30 s")
	}
	t.Logf("silent client dropped after %v", time.Since(start).Round(100*time.Millisecond))
	// Its socket is closed by the gateway: what it had not read ends with
	// a close frame saying why, then EOF.
	_ = raw.SetReadDeadline(time.Now().Add(5 * time.Second))
	rest, err := io.ReadAll(br)
	if err != nil {
		t.Errorf("the silent client's socket was not closed: %v", err)
	}
	if !strings.Contains(string(rest), "ping timeout") {
		t.Errorf("no close frame with \"ping timeout\" in the %d bytes sent to the silent client", len(rest))
	}
	// The attentive client (it answers pings while it reads) is still on.
	select {
	case err := <-out:
		t.Fatalf("the attentive client was dropped too: %v", err)
	default:
	}
	if _, err := attentive.Write([]byte("still-here\n")); err != nil {
		t.Fatal(err)
	}
	deadline := time.After(10 * time.Second)
	for got := ""; !strings.Contains(got, "still-here"); {
		select {
		case l := <-lines:
			got += l
		case err := <-out:
			t.Fatalf("the attentive client ended: %v", err)
		case <-deadline:
			t.Fatal("no echo to the attentive client")
		}
	}
	attentive.Close()
	<-out
}
