package e2e

// The operational holes of issue 12: secrets in argv, a header flood,
// a full disk, and /metrics open to anyone. Each test runs a real gateway
// process.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/jackc/pgx/v5"
	"github.com/prometheus/procfs"

	"github.com/nimbus/gateway/client"
	"github.com/nimbus/gateway/store/pgtest"
)

// memStatus reads the gateway's resident set and its peak (VmHWM) with
// procfs, the project's one way to read /proc.
func (g *gateway) memStatus() (rss, peak uint64) {
	g.t.Helper()
	p, err := procfs.NewProc(g.pid())
	if err != nil {
		g.t.Fatal(err)
	}
	st, err := p.NewStatus()
	if err != nil {
		g.t.Fatal(err)
	}
	return st.VmRSS, st.VmHWM
}

// unread is how many bytes sent to the gateway's port sit in its sockets'
// receive queues, not yet read by the process (/proc/net/tcp).
func (g *gateway) unread() uint64 {
	g.t.Helper()
	fs, err := procfs.NewDefaultFS()
	if err != nil {
		g.t.Fatal(err)
	}
	lines, err := fs.NetTCP()
	if err != nil {
		g.t.Fatal(err)
	}
	_, port, _ := net.SplitHostPort(g.addr)
	var n uint64
	for _, l := range lines {
		if strconv.FormatUint(l.LocalPort, 10) == port {
			n += l.RxQueue
		}
	}
	return n
}

// TestHeaderFlood floods the gateway with 200 unauthenticated connections
// sending 900 KiB of header each, every one holding its request open
// (no blank line) until all have sent theirs, so that a gateway that
// buffers whole headers holds all of them at once (issue 12 saw 1,000
// such connections take RSS from 22 MB to 1.74 GB). The gateway's peak
// RSS must stay under 300 MB and within 128 MiB of its RSS before the
// flood; /healthz must answer during and after it; and one connection
// that sends an 80 KiB header and then reads gets 431 problem+json
// header_too_large. A bound on memory, not on speed.
func TestHeaderFlood(t *testing.T) {
	g := startGateway(t)
	rss0, _ := g.memStatus()

	const conns, headerBytes = 200, 900 << 10
	line := []byte("X-Pad: " + strings.Repeat("a", 8<<10) + "\r\n")
	var sent, done sync.WaitGroup
	release := make(chan struct{})
	sent.Add(conns)
	done.Add(conns)
	for i := 0; i < conns; i++ {
		go func() {
			defer done.Done()
			c, err := net.Dial("tcp", g.addr)
			if err != nil {
				sent.Done()
				t.Errorf("dial: %v", err)
				return
			}
			defer c.Close()
			_ = c.SetDeadline(time.Now().Add(60 * time.Second))
			// Write errors are expected: a bounded gateway answers 431
			// and closes while the header still comes.
			_, err = c.Write([]byte("GET /healthz HTTP/1.1\r\nHost: flood\r\n"))
			for n := 0; err == nil && n < headerBytes; n += len(line) {
				_, err = c.Write(line)
			}
			sent.Done()
			<-release
			if err == nil {
				_, _ = c.Write([]byte("\r\n"))
			}
			_, _ = c.Read(make([]byte, 512))
		}()
	}
	sentAll := make(chan struct{})
	go func() { sent.Wait(); close(sentAll) }()
	select {
	case <-sentAll:
	case <-time.After(90 * time.Second):
		t.Error("the flood's connections did not finish sending in 90 s")
	}
	// The flood is in the kernel's socket buffers until the gateway reads
	// it: wait until it has read everything sent to it.
	for i := 0; g.unread() > 0; i++ {
		if i == 1200 {
			t.Errorf("the gateway has not read the flood after 60 s (%d bytes unread)", g.unread())
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if r := do(t, http.MethodGet, g.URL+"/healthz", nil, nil); r.status != http.StatusOK {
		t.Errorf("/healthz during the flood: %d %s", r.status, r.body)
	}
	_, peak := g.memStatus()
	close(release)
	done.Wait()

	t.Logf("RSS before the flood %.1f MiB, peak %.1f MiB", float64(rss0)/(1<<20), float64(peak)/(1<<20))
	if peak > 300e6 || peak > rss0+128<<20 {
		t.Errorf("a header flood of %d × %d KiB took the gateway's peak RSS to %.1f MiB (from %.1f MiB)",
			conns, headerBytes>>10, float64(peak)/(1<<20), float64(rss0)/(1<<20))
	}
	if r := do(t, http.MethodGet, g.URL+"/healthz", nil, nil); r.status != http.StatusOK {
		t.Errorf("/healthz after the flood: %d %s", r.status, r.body)
	}

	// One oversized header, sent whole, then read: the refusal is
	// problem+json like every other.
	c, err := net.Dial("tcp", g.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(30 * time.Second))
	var req bytes.Buffer
	req.WriteString("GET /healthz HTTP/1.1\r\nHost: big\r\n")
	for req.Len() < 80<<10 {
		req.Write(line)
	}
	req.WriteString("\r\n")
	if _, err := c.Write(req.Bytes()); err != nil {
		t.Fatalf("writing an 80 KiB header: %v", err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatalf("reading the answer to an 80 KiB header: %v", err)
	}
	defer resp.Body.Close()
	var b bytes.Buffer
	_, _ = b.ReadFrom(resp.Body)
	wantProblem(t, "an 80 KiB header", result{status: resp.StatusCode, header: resp.Header, body: b.Bytes()},
		http.StatusRequestHeaderFieldsTooLarge, "header_too_large")
}

// rawExchange sends raw on a new connection and reads one answer.
func rawExchange(t *testing.T, addr, raw string) result {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(30 * time.Second))
	if _, err := c.Write([]byte(raw)); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatalf("reading the answer to %q: %v", raw, err)
	}
	defer resp.Body.Close()
	var b bytes.Buffer
	_, _ = b.ReadFrom(resp.Body)
	return result{status: resp.StatusCode, header: resp.Header, body: b.Bytes()}
}

// TestEarlyRefusalsAreProblems: the requests net/http refuses before any
// handler runs (no Host header, an unknown Transfer-Encoding) are
// answered in problem+json with a code and a request id, like every
// other rejection, not in net/http's text/plain.
func TestEarlyRefusalsAreProblems(t *testing.T) {
	t.Parallel()
	g := startGateway(t)
	wantProblem(t, "no Host header", rawExchange(t, g.addr, "GET /healthz HTTP/1.1\r\n\r\n"),
		http.StatusBadRequest, "invalid_argument")
	r := rawExchange(t, g.addr, "POST /healthz HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n")
	wantProblem(t, "Transfer-Encoding: gzip", r, http.StatusNotImplemented, "invalid_argument")
	if r := rawExchange(t, g.addr, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"); r.status != http.StatusOK {
		t.Errorf("a plain request after them: %d %s", r.status, r.body)
	}
}

// TestMetricsListener (issue 12): /metrics needs no token, so it is not
// on the API listener (404 problem+json there) but on --metrics-addr, a
// loopback port of its own; its series name no tenant unless
// --metrics-tenant-labels is set; and --metrics-addr main puts it back on
// the API listener for whoever asks for that.
func TestMetricsListener(t *testing.T) {
	t.Parallel()
	g := startGateway(t)
	g.open(g.admin(), serviceTarget("worker"), "stdio")
	wantProblem(t, "/metrics on the API listener", do(t, http.MethodGet, g.URL+"/metrics", nil, nil), http.StatusNotFound, "not_found")
	r := do(t, http.MethodGet, g.metricsURL, nil, nil)
	if r.status != http.StatusOK || !strings.Contains(string(r.body), "\nnimbus_sessions_open 1\n") {
		t.Errorf("metrics listener: %d, want nimbus_sessions_open 1 in\n%.2000s", r.status, r.body)
	}
	for _, tenant := range []string{`"demo"`, `"other"`} {
		if strings.Contains(string(r.body), tenant) {
			t.Errorf("the metrics name tenant %s without --metrics-tenant-labels", tenant)
		}
	}
	wantProblem(t, "the API on the metrics listener",
		do(t, http.MethodGet, strings.TrimSuffix(g.metricsURL, "/metrics")+"/v1/tenants/demo/sessions", nil, nil), http.StatusNotFound, "not_found")

	labeled := startGateway(t, "--metrics-tenant-labels")
	labeled.open(labeled.admin(), serviceTarget("worker"), "stdio")
	if r := do(t, http.MethodGet, labeled.metricsURL, nil, nil); !strings.Contains(string(r.body), `nimbus_sessions_open{tenant="demo"} 1`) {
		t.Errorf("with --metrics-tenant-labels: %d, want nimbus_sessions_open{tenant=\"demo\"} 1 in\n%.2000s", r.status, r.body)
	}

	onAPI := startGateway(t, "--metrics-addr", "main")
	if r := do(t, http.MethodGet, onAPI.URL+"/metrics", nil, nil); r.status != http.StatusOK || !strings.Contains(string(r.body), "nimbus_http_requests_total") {
		t.Errorf("with --metrics-addr main, /metrics on the API listener: %d %.300s", r.status, r.body)
	}
}

// cmdline is the gateway process's command line, as any process on the
// host reads it.
func (g *gateway) cmdline() string {
	g.t.Helper()
	p, err := procfs.NewProc(g.pid())
	if err != nil {
		g.t.Fatal(err)
	}
	args, err := p.CmdLine()
	if err != nil {
		g.t.Fatal(err)
	}
	return strings.Join(args, " ")
}

// TestStoreSecretNotInArgv (issue 12): the PostgreSQL password (and the
// connect keyset) can come from the environment (NIMBUS_STORE,
// NIMBUS_CONNECT_KEYS) or a file (--store-file, --connect-keys FILE);
// then /proc/<pid>/cmdline of the gateway does not contain them, the
// gateway works on that store with those keys, and it warns of nothing.
// Given on the command line instead, each draws a warning that names
// the flag and not the secret.
func TestStoreSecretNotInArgv(t *testing.T) {
	t.Parallel()
	secret := "pw-" + strconv.FormatInt(time.Now().UnixNano(), 36)
	withPassword := func(pgURL string) string {
		u, err := url.Parse(pgURL)
		if err != nil {
			t.Fatal(err)
		}
		// pgtest's server trusts loopback, so any password is accepted:
		// the point is where the gateway reads it from.
		u.User = url.UserPassword(u.User.Username(), secret)
		return u.String()
	}
	keyset := `{"signing":"k1","keys":{"k1":"` + base64.StdEncoding.EncodeToString([]byte(secret+"-connect-key-material-32b")) + `"}}`
	keyMaterial := base64.StdEncoding.EncodeToString([]byte(secret + "-connect-key-material-32b"))

	// works opens a session with stdio and echoes through it: the store
	// took the write, the connect URL verified with the keyset.
	works := func(g *gateway, what string) {
		t.Helper()
		s := g.open(g.admin(), serviceTarget("worker"), "stdio")
		c, err := client.DialStdio(context.Background(), s.Status.Connect["stdio"])
		if err != nil {
			t.Fatalf("%s: stdio: %v", what, err)
		}
		defer c.Close()
		echoes(t, c, what)
		for _, leak := range []string{secret, keyMaterial} {
			if strings.Contains(g.cmdline(), leak) {
				t.Errorf("%s: /proc/%d/cmdline holds a secret: %s", what, g.pid(), g.cmdline())
			}
			if strings.Contains(g.log(), leak) {
				t.Errorf("%s: the gateway log holds a secret", what)
			}
		}
	}
	inPostgres := func(pgURL, what string) {
		t.Helper()
		db, err := pgx.Connect(context.Background(), pgURL)
		if err != nil {
			t.Fatal(err)
		}
		defer db.Close(context.Background())
		var n int
		if err := db.QueryRow(context.Background(), `SELECT count(*) FROM sessions`).Scan(&n); err != nil || n != 1 {
			t.Errorf("%s: %d sessions in PostgreSQL (%v), want 1", what, n, err)
		}
	}

	pgEnv := pgtest.Start(t)
	fromEnv := startGatewayEnv(t, tempDir(t), []string{"NIMBUS_STORE=" + withPassword(pgEnv), "NIMBUS_CONNECT_KEYS=" + keyset})
	works(fromEnv, "from the environment")
	inPostgres(pgEnv, "from the environment")

	pgFile := pgtest.Start(t)
	dir := tempDir(t)
	storeFile, keysFile := filepath.Join(dir, "store-url"), filepath.Join(dir, "connect-keys.json")
	for f, v := range map[string]string{storeFile: withPassword(pgFile) + "\n", keysFile: keyset} {
		if err := os.WriteFile(f, []byte(v), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	fromFile := startGatewayIn(t, dir, "--store-file", storeFile, "--connect-keys", keysFile)
	works(fromFile, "from files")
	inPostgres(pgFile, "from files")

	for _, g := range []*gateway{fromEnv, fromFile} {
		if strings.Contains(g.log(), "secret is on the command line") {
			t.Errorf("a warning about argv secrets with none in argv:\n%s", g.log())
		}
	}

	inArgv := startGateway(t, "--store", withPassword(pgtest.Start(t)), "--connect-keys", keyset)
	logs := inArgv.log()
	for _, flag := range []string{`"flag":"--store"`, `"flag":"--connect-keys"`} {
		if !strings.Contains(logs, "secret is on the command line") || !strings.Contains(logs, flag) {
			t.Errorf("no warning naming %s for a secret in argv:\n%s", flag, logs)
		}
	}
	if strings.Contains(logs, secret) || strings.Contains(logs, keyMaterial) {
		t.Errorf("the warning holds the secret:\n%s", logs)
	}
}

// tempDir is a new data directory under tmpRoot, for startGatewayIn.
func tempDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp(tmpRoot, "gw-")
	if err != nil {
		t.Fatal(err)
	}
	return dir
}

// mountTmpfs mounts a tmpfs of size on a new directory under tmpRoot and
// unmounts it at cleanup (after the cleanups registered later, such as a
// gateway's stop). It skips unless the test runs as root.
func mountTmpfs(t *testing.T, size string) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("a full disk is made with a small tmpfs, and mounting one needs root")
	}
	dir := tempDir(t)
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size="+size, "tmpfs", dir).CombinedOutput(); err != nil {
		t.Skipf("cannot mount a tmpfs here: %v %s", err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("umount", dir).CombinedOutput(); err != nil {
			t.Errorf("umount %s: %v %s", dir, err, out)
		}
	})
	return dir
}

// freeBytes is the free space of dir's file system.
func freeBytes(t *testing.T, dir string) int64 {
	t.Helper()
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		t.Fatal(err)
	}
	return int64(st.Bavail) * st.Bsize
}

// fill writes a file in dir until its file system is full.
func fill(t *testing.T, dir string) string {
	t.Helper()
	name := filepath.Join(dir, "filler")
	f, err := os.Create(name)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, 64<<10)
	for i := 0; i < 1<<14; i++ { // 1 GiB at most
		if _, err := f.Write(buf); err != nil {
			if !errors.Is(err, syscall.ENOSPC) {
				t.Fatalf("filling %s: %v", dir, err)
			}
			return name
		}
	}
	t.Fatalf("%s did not fill up", dir)
	return ""
}

// TestFullDisk (issue 12): the data directory (store) and the sandbox
// roots (--sandbox-root-dir) on two small file systems of their own.
//   - Uploads stop before the sandboxes' file system is full
//     (--min-free-bytes 4MiB): an announced 14 MiB write is refused at
//     once, an HTTP PUT of 14 MiB announced with Expect: 100-continue
//     gets 507 problem+json resource_exhausted without sending its body,
//     and a WebSocket write of 14 MiB of unknown size is refused on the
//     way; no temp file stays and the reserve is still free; a small
//     upload still works, and so does the store (/readyz 200, opens).
//   - With the store's file system full, /readyz answers 503
//     unavailable (details.check store_space) though the store still
//     reads, every open is 201 or 503 unavailable, never another
//     answer; once space is freed, /readyz is 200 again and opens work.
func TestFullDisk(t *testing.T) {
	t.Parallel()
	dataDir, sbDir := mountTmpfs(t, "16m"), mountTmpfs(t, "16m")
	g := startGatewayIn(t, dataDir, "--sandbox-root-dir", sbDir, "--min-free-bytes", "4MiB")
	adm := g.admin()
	s := g.open(adm, serviceTarget("worker"), "files")
	root := filepath.Join(sbDir, "demo", "sbx-cat")
	if fi, err := os.Stat(root); err != nil || !fi.IsDir() {
		t.Fatalf("the sandbox root is not under --sandbox-root-dir: %v", err)
	}

	const big = 14 << 20
	f := dialFiles(t, s.Status.Connect["files"])
	defer f.c.CloseNow()
	if code := f.request(map[string]any{"op": "write", "path": "announced.bin", "size": big}); code != "resource_exhausted" {
		t.Errorf("announced 14 MiB write: %q, want resource_exhausted", code)
	}
	chunk := make([]byte, 4+1<<20)
	code := f.request(map[string]any{"op": "write", "path": "streamed.bin"}, func(id uint32) {
		binary.BigEndian.PutUint32(chunk, id)
		for i := 0; i < big>>20; i++ {
			if err := f.c.Write(context.Background(), websocket.MessageBinary, chunk); err != nil {
				t.Fatal(err)
			}
		}
		end, _ := json.Marshal(map[string]any{"id": id, "op": "end"})
		if err := f.c.Write(context.Background(), websocket.MessageText, end); err != nil {
			t.Fatal(err)
		}
	})
	if code != "resource_exhausted" {
		t.Errorf("streamed 14 MiB write: %q, want resource_exhausted", code)
	}

	tr := &http.Transport{ExpectContinueTimeout: 10 * time.Second}
	defer tr.CloseIdleConnections()
	body := &countingReader{r: bytes.NewReader(make([]byte, big))}
	req, err := http.NewRequest(http.MethodPut, filesURL(t, s, "put.bin"), body)
	if err != nil {
		t.Fatal(err)
	}
	req.ContentLength = big
	req.Header.Set("Expect", "100-continue")
	resp, err := (&http.Client{Transport: tr, Timeout: 30 * time.Second}).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	rb, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	wantProblem(t, "PUT of 14 MiB", result{status: resp.StatusCode, header: resp.Header, body: rb}, http.StatusInsufficientStorage, "resource_exhausted")
	if n := body.n.Load(); n > 0 {
		t.Errorf("the refused PUT was sent %d bytes of its body", n)
	}

	if left := partFiles(root); len(left) > 0 {
		t.Errorf("temp files left by refused uploads: %v", left)
	}
	if free := freeBytes(t, sbDir); free < 4<<20 {
		t.Errorf("%d bytes free on the sandboxes' file system, below the 4 MiB reserve", free)
	}
	if r := do(t, http.MethodPut, filesURL(t, s, "small.txt"), strings.NewReader("fits"), nil); r.status != http.StatusCreated {
		t.Errorf("a small upload: %d %s", r.status, r.body)
	}
	if r := do(t, http.MethodGet, g.URL+"/readyz", nil, nil); r.status != http.StatusOK {
		t.Errorf("/readyz with the sandboxes full: %d %s", r.status, r.body)
	}
	g.open(adm, serviceTarget("worker"), "stdio")

	filler := fill(t, dataDir)
	r := g.readyzUntil(http.StatusServiceUnavailable, "store_space")
	wantProblem(t, "/readyz with the store's disk full", r, http.StatusServiceUnavailable, "unavailable")
	if _, details := r.problem(); details["check"] != "store_space" {
		t.Errorf("/readyz with the store's disk full: details %v, want check store_space", details)
	}
	if _, err := adm.List(context.Background(), client.ListOptions{PageSize: 1}); err != nil && !isCode(err, 503, "unavailable") {
		t.Errorf("a list with the disk full: %v", err)
	}
	for i := 0; i < 5; i++ {
		_, err := adm.Open(context.Background(), client.OpenRequest{Target: serviceTarget("worker"), Channels: []string{"stdio"}})
		if err != nil && !isCode(err, 503, "unavailable") {
			t.Errorf("open %d with the disk full: %v, want 201 or 503 unavailable", i, err)
		}
	}

	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	if r := g.readyzUntil(http.StatusOK, ""); r.status != http.StatusOK {
		t.Errorf("/readyz once space is freed: %d %s", r.status, r.body)
	}
	g.open(adm, serviceTarget("worker"), "stdio")
}

// readyzUntil asks /readyz until it answers status (and, if check is not
// "", a problem with that details.check), for up to 10 s: a write probe's
// answer stands for a second (proxy), so a change of the store shows
// within about that. It returns the last answer.
func (g *gateway) readyzUntil(status int, check string) result {
	g.t.Helper()
	for i := 0; ; i++ {
		r := do(g.t, http.MethodGet, g.URL+"/readyz", nil, nil)
		_, details := r.problem()
		if (r.status == status && (check == "" || details["check"] == check)) || i == 100 {
			return r
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// logUntil waits up to 10 s for the gateway's log to contain all of want
// (it arrives through a pipe, after the answer) and reports whether it
// did.
func (g *gateway) logUntil(want ...string) bool {
	for i := 0; i < 100; i++ {
		l, all := g.log(), true
		for _, w := range want {
			all = all && strings.Contains(l, w)
		}
		if all {
			return true
		}
		time.Sleep(100 * time.Millisecond)
	}
	return false
}

// countingReader counts the bytes read from r.
type countingReader struct {
	r io.Reader
	n atomic.Int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n.Add(int64(n))
	return n, err
}

// TestUnwritableStoreNotReady (issue 12): with the SQLite database made
// unwritable under a running gateway (chattr +i, as in TestReadOnlyStore)
// the store still reads, yet /readyz answers 503 unavailable
// (details.check store_write); a refused open (no grant) whose audit
// event cannot be stored is answered 503 unavailable, not 403, and the
// loss is logged at error level and counted in
// nimbus_audit_write_failures_total. Writable again, /readyz is 200 and
// the same refusal is 403. Then the same /readyz check on PostgreSQL
// turned read-only, which Ping alone does not notice.
func TestUnwritableStoreNotReady(t *testing.T) {
	t.Parallel()
	if _, err := exec.LookPath("chattr"); err != nil {
		t.Skip("chattr not installed")
	}
	g := startGateway(t)
	immutableBlocksOpenFiles(t, g.dir)
	noGrant := clientFor(g, "demo", g.token("demo", false, nil, nil))
	var files []string
	for _, f := range []string{"nimbus.db", "nimbus.db-wal", "nimbus.db-shm"} {
		if _, err := os.Stat(filepath.Join(g.dir, f)); err == nil {
			files = append(files, filepath.Join(g.dir, f))
		}
	}
	if out, err := exec.Command("chattr", append([]string{"+i"}, files...)...).CombinedOutput(); err != nil {
		t.Skipf("chattr +i is not supported here: %v %s", err, out)
	}
	frozen := true
	unfreeze := func() {
		if frozen {
			frozen = false
			if out, err := exec.Command("chattr", append([]string{"-i"}, files...)...).CombinedOutput(); err != nil {
				t.Errorf("chattr -i: %v %s", err, out)
			}
		}
	}
	t.Cleanup(unfreeze)

	r := g.readyzUntil(http.StatusServiceUnavailable, "store_write")
	wantProblem(t, "/readyz on an unwritable store", r, http.StatusServiceUnavailable, "unavailable")
	if _, details := r.problem(); details["check"] != "store_write" {
		t.Errorf("/readyz on an unwritable store: details %v, want check store_write", details)
	}
	if _, err := noGrant.Open(context.Background(), client.OpenRequest{Target: serviceTarget("worker"), Channels: []string{"stdio"}}); !isCode(err, 503, "unavailable") {
		t.Errorf("a refused open whose audit event is lost: %v, want 503 unavailable", err)
	}
	if !g.logUntil(`"level":"error","ts"`, `"msg":"audit: storing a denied event failed"`) {
		t.Errorf("the lost audit event is not logged as an error")
	}
	if m := do(t, http.MethodGet, g.metricsURL, nil, nil); !strings.Contains(string(m.body), `nimbus_audit_write_failures_total{action="session.open"} 1`) {
		t.Errorf("the lost audit event is not counted:\n%.3000s", m.body)
	}

	unfreeze()
	if r := g.readyzUntil(http.StatusOK, ""); r.status != http.StatusOK {
		t.Errorf("/readyz once the store is writable: %d %s", r.status, r.body)
	}
	if _, err := noGrant.Open(context.Background(), client.OpenRequest{Target: serviceTarget("worker"), Channels: []string{"stdio"}}); !isCode(err, 403, "permission_denied") {
		t.Errorf("a refused open, recorded: %v, want 403 permission_denied", err)
	}

	pgURL := pgtest.Start(t)
	pg := startGateway(t, "--store", pgURL)
	db, err := pgx.Connect(context.Background(), pgURL)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close(context.Background())
	name := db.Config().Database
	setReadOnly := func(v string) {
		for _, q := range []string{`SET default_transaction_read_only = off`,
			`ALTER DATABASE ` + pgx.Identifier{name}.Sanitize() + ` SET default_transaction_read_only = ` + v,
			`SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()`} {
			if _, err := db.Exec(context.Background(), q); err != nil {
				t.Fatal(err)
			}
		}
	}
	setReadOnly("on")
	// Ping fails once, as the pool finds its connections cut; then it
	// succeeds, and only the write probe sees the database is read-only.
	r = pg.readyzUntil(http.StatusServiceUnavailable, "store_write")
	wantProblem(t, "/readyz on a read-only PostgreSQL", r, http.StatusServiceUnavailable, "unavailable")
	if _, details := r.problem(); details["check"] != "store_write" {
		t.Errorf("/readyz on a read-only PostgreSQL: details %v, want check store_write", details)
	}
	setReadOnly("off")
	if r := pg.readyzUntil(http.StatusOK, ""); r.status != http.StatusOK {
		t.Errorf("/readyz once PostgreSQL is writable: %d %s", r.status, r.body)
	}
}
