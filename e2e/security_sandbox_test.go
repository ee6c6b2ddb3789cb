package e2e

import (
	"bufio"
	"context"
	"fmt"
	"hash/fnv"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nimbus/gateway/client"
)

// Issue 12, the sandbox items: user ids kept across restarts, a
// per-sandbox RLIMIT_NPROC, and an orphan sweep that misses nothing.

// TestSecuritySandboxUIDsKeptAcrossRestart: a tenant admin names a
// sandbox so that, under the old allocation (fnv64a(tenant/id) mod the
// block's size, the next free id on a collision, nothing stored), it
// takes another tenant's id at the next restart, which starts sandboxes in
// (tenant, id) order. Now each sandbox's id is in the store: after the
// restart both run as before, and the attacker still cannot read the
// victim's 0600 file in a directory both can reach.
func TestSecuritySandboxUIDsKeptAcrossRestart(t *testing.T) {
	t.Parallel()
	dir := sandboxUserDir(t)
	const first, size = 251000, 8
	victim, attacker := "sbx-v", ""
	for i := range 200 {
		id := "sbx-a" + strconv.Itoa(i)
		firstRun := oldUIDs([]string{"demo/sbx-cat", "demo/sbx-tty", "other/sbx-other", "other/" + victim, "demo/" + id}, size)
		restart := oldUIDs(sortedKeys(firstRun), size)
		if restart["demo/"+id] == firstRun["other/"+victim] {
			attacker = id
			break
		}
	}
	if attacker == "" {
		t.Fatal("no name takes the victim's id under the old allocation in 200 tries")
	}
	shared, err := os.MkdirTemp(tmpRoot, "sbx-shared-")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(shared, 0o1777); err != nil { // like /tmp
		t.Fatal(err)
	}
	g := startGatewayIn(t, dir, "--sandbox-user", fmt.Sprintf("%d-%d", first, first+size-1))
	other := clientFor(g, "other", g.token("other", true, nil, []string{victim}))
	demo := clientFor(g, "demo", g.token("demo", true, nil, []string{attacker}))
	ctx := context.Background()
	for _, c := range []struct {
		cl *client.Client
		id string
	}{{other, victim}, {demo, attacker}} { // the victim first
		if err := c.cl.Do(ctx, http.MethodPost, "/v1/tenants/"+c.cl.Tenant+"/sandboxes",
			map[string]any{"id": c.id, "command": []string{"/bin/sh"}}, nil); err != nil {
			t.Fatalf("create %s: %v", c.id, err)
		}
	}
	// sh reads its commands from stdin: run one, and return its output.
	run := func(c *client.Client, id, cmd string) string {
		t.Helper()
		s := g.open(c, client.SandboxTarget(id), "stdio")
		sh, err := client.DialStdio(ctx, s.Status.Connect["stdio"])
		if err != nil {
			t.Fatal(err)
		}
		defer sh.Close()
		end := "end-" + strconv.FormatInt(time.Now().UnixNano(), 36)
		if _, err := sh.Write([]byte(cmd + "; echo " + end + "\n")); err != nil {
			t.Fatal(err)
		}
		return readUntilOutput(t, sh, end)
	}
	uidOf := func(out string) string {
		m := regexp.MustCompile(`uid=(\d+)`).FindStringSubmatch(out)
		if m == nil {
			t.Fatalf("no uid in %q", out)
		}
		return m[1]
	}
	secret := filepath.Join(shared, "victim-secret")
	victimUID := uidOf(run(other, victim, "umask 077; echo victim-secret > "+secret+"; echo uid=$(id -u)"))
	attackerUID := uidOf(run(demo, attacker, "echo uid=$(id -u)"))
	if victimUID == attackerUID {
		t.Fatalf("both sandboxes run as %s", victimUID)
	}

	g.stop()
	g.start()
	if got := uidOf(run(other, victim, "echo uid=$(id -u)")); got != victimUID {
		t.Errorf("the victim runs as %s after the restart, %s before", got, victimUID)
	}
	out := run(demo, attacker, "echo uid=$(id -u); cat "+secret+" 2>/dev/null || echo read-denied")
	if got := uidOf(out); got != attackerUID {
		t.Errorf("the attacker runs as %s after the restart, %s before (the victim's is %s)", got, attackerUID, victimUID)
	}
	if strings.Contains(out, "victim-secret") || !strings.Contains(out, "read-denied") {
		t.Errorf("the attacker read the victim's 0600 file after the restart: %q", out)
	}
}

// oldUIDs is the allocation the gateway made before issue 12, as offsets
// in a block of size n: each key in order takes its hash's slot, or the
// next free one.
func oldUIDs(order []string, n int) map[string]int {
	out, taken := map[string]int{}, map[int]bool{}
	for _, k := range order {
		h := fnv.New64a()
		_, _ = h.Write([]byte(k))
		slot := int(h.Sum64() % uint64(n))
		for taken[slot] {
			slot = (slot + 1) % n
		}
		out[k], taken[slot] = slot, true
	}
	return out
}

func sortedKeys(m map[string]int) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

// TestSecuritySandboxNProc: with --sandbox-nproc each sandbox's user may
// have that many processes and threads. A workload forking without end
// gets EAGAIN at the limit, and meanwhile the gateway keeps serving: its
// health check, another sandbox's stdio, and parallel files transfers in
// the forking sandbox itself (which run in the gateway, not as the
// sandbox's user). Before, a workload shared the gateway's pid budget
// and, with 240 sleeps and 40 transfers, took it down (pthread_create
// failed).
func TestSecuritySandboxNProc(t *testing.T) {
	t.Parallel()
	if _, err := exec.LookPath("perl"); err != nil {
		t.Skip("the forking workload is a perl script")
	}
	// RLIMIT_NPROC is the process runtime's limit; a container's is its
	// pids cgroup (--sandbox-pids, TestContainerForkBombStopsAtPids and
	// TestRuncForkBombAndOOM).
	g := startGatewayIn(t, sandboxUserDir(t), "--sandbox-user", "252000-252009", "--sandbox-nproc", "16", "--sandbox-runtime", "process")
	g.createSandbox("sbx-forker", false, "perl", "-e", `$| = 1; my $n = 0; for (1..200) { my $p = fork(); `+
		`if (!defined $p) { print "fork failed: ", ($!{EAGAIN} ? "EAGAIN" : "$!"), "\n"; last } `+
		`if ($p == 0) { sleep 600; exit 0 } $n++ } print "forked $n end\n"; sleep 600`)
	c := g.adminFor("sbx-forker")
	ctx := context.Background()
	s := g.open(c, client.SandboxTarget("sbx-forker"), "stdio", "files")
	st, err := client.DialStdio(ctx, s.Status.Connect["stdio"])
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	out := readUntilOutput(t, st, " end\n")
	if !strings.Contains(out, "fork failed: EAGAIN") {
		t.Errorf("the workload's forks: %q, want EAGAIN at the limit", out)
	}
	if m := regexp.MustCompile(`forked (\d+) end\n`).FindStringSubmatch(out); m == nil {
		t.Errorf("no count of children in %q", out)
	} else if n, _ := strconv.Atoi(m[1]); n < 1 || n >= 16 {
		t.Errorf("forked %d children under a limit of 16", n)
	}

	// The sandbox's user is at its limit now; the gateway is not.
	resp, err := httpClient.Get(g.URL + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Errorf("/healthz: %d", resp.StatusCode)
	}
	cat := g.open(g.admin(), serviceTarget("worker"), "stdio")
	cs, err := client.DialStdio(ctx, cat.Status.Connect["stdio"])
	if err != nil {
		t.Fatal(err)
	}
	echoes(t, cs, "another-sandbox-still-served")
	cs.Close()
	// 40 transfers, on two sessions: a session may hold 32 connections.
	files := []string{s.Status.Connect["files"], g.open(c, client.SandboxTarget("sbx-forker"), "files").Status.Connect["files"]}
	var wg sync.WaitGroup
	errs := make(chan error, 40)
	for i := range 40 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			url := files[i%2]
			name := fmt.Sprintf("f%d.txt", i)
			body := strings.Repeat("x", 64<<10)
			if _, err := c.Put(ctx, url, name, strings.NewReader(body), int64(len(body)), nil); err != nil {
				errs <- fmt.Errorf("put %s: %w", name, err)
				return
			}
			var got strings.Builder
			if _, err := c.Download(ctx, url, name, &got, 0, nil); err != nil || got.Len() != len(body) {
				errs <- fmt.Errorf("download %s: %d bytes, %v", name, got.Len(), err)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

// TestSecuritySandboxOrphansFastRestart: a gateway SIGKILLed and started
// again at once, while the dead one is still a zombie (its parent has not
// reaped it, so its pid and start time still read as alive), kills every
// workload process the dead one left: a child that ran `cd /` (the sweep
// looked only under the sandboxes directory), one that dropped the
// gateway mark from its environment, and one that left the workload's
// session with setsid. Before, all three survived such a restart.
func TestSecuritySandboxOrphansFastRestart(t *testing.T) {
	t.Parallel()
	// The sweep of orphaned child processes; a container cannot outlive
	// its gateway (TestRuncContainersDieWithGateway).
	g := startGateway(t, "--sandbox-runtime", "process")
	g.stop() // its arguments are reused below, by a run whose parent does not reap it

	// The gateway as the child of a shell that then becomes `sleep`, which
	// never reaps: once SIGKILLed, it stays a zombie.
	logf := filepath.Join(t.TempDir(), "gateway.log")
	parent := exec.Command("/bin/sh", append([]string{"-c", `"$0" "$@" >/dev/null 2>>"$NIMBUS_E2E_LOG" & echo $!; exec sleep 600`, gatewayBin}, g.args...)...)
	parent.Dir = g.dir
	parent.Env = append(os.Environ(), "NIMBUS_E2E_LOG="+logf)
	parent.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	stdout, err := parent.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := parent.Start(); err != nil {
		t.Fatal(err)
	}
	sc := bufio.NewScanner(stdout)
	if !sc.Scan() {
		t.Fatal("no gateway pid")
	}
	gwPID, err := strconv.Atoi(sc.Text())
	if err != nil {
		t.Fatalf("gateway pid %q", sc.Text())
	}
	var orphans []int
	pidsFile := filepath.Join(g.sandboxRoot("demo", "sbx-escape"), "pids")
	t.Cleanup(func() {
		_ = syscall.Kill(gwPID, syscall.SIGKILL)
		_ = parent.Process.Kill()
		_ = parent.Wait() // the zombie gateway goes to init, which reaps it
		// The survivors of a failed sweep, and the children of the
		// restarted run's workload (one that left its session with setsid
		// outlives the gateway's clean stop, and only its next start
		// kills it).
		b, _ := os.ReadFile(pidsFile)
		for _, f := range strings.Fields(string(b)) {
			if pid, err := strconv.Atoi(f); err == nil {
				orphans = append(orphans, pid)
			}
		}
		for _, pid := range orphans {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	})
	for i := 0; ; i++ {
		if resp, err := httpClient.Get(g.URL + "/readyz"); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				break
			}
		}
		if i > 1000 {
			b, _ := os.ReadFile(logf)
			t.Fatalf("the unreaped gateway is not ready after 10 s:\n%s", b)
		}
		time.Sleep(10 * time.Millisecond)
	}

	g.createSandbox("sbx-escape", false, "/bin/sh", "-c",
		`(cd / && exec sleep 600) & echo $! > pids; `+
			`env -u NIMBUS_GATEWAY sleep 600 & echo $! >> pids; `+
			`setsid sleep 600 & echo $! >> pids; exec cat`)
	for i := 0; len(orphans) < 3; i++ {
		if i > 1000 {
			t.Fatalf("the workload did not write its children's pids: %v", orphans)
		}
		time.Sleep(10 * time.Millisecond)
		b, _ := os.ReadFile(pidsFile)
		orphans = orphans[:0]
		for _, f := range strings.Fields(string(b)) {
			if pid, err := strconv.Atoi(f); err == nil {
				orphans = append(orphans, pid)
			}
		}
	}
	for _, pid := range orphans {
		if !alive(pid) {
			t.Fatalf("child %d of the workload is not running", pid)
		}
	}

	if err := syscall.Kill(gwPID, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	for i := 0; alive(gwPID); i++ { // a zombie is not alive
		if i > 1000 {
			t.Fatal("the gateway did not die of SIGKILL")
		}
		time.Sleep(5 * time.Millisecond)
	}
	if _, err := os.Stat(fmt.Sprintf("/proc/%d", gwPID)); err != nil {
		t.Fatalf("the dead gateway is not a zombie: %v", err)
	}
	g.start()
	var left []int
	deadline := time.Now().Add(5 * time.Second)
	for {
		left = left[:0]
		for _, pid := range orphans {
			if alive(pid) {
				left = append(left, pid)
			}
		}
		if len(left) == 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if len(left) > 0 {
		t.Errorf("workload processes of the SIGKILLed gateway survived the fast restart: %v of %v", left, orphans)
	}
}
