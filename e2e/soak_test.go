package e2e

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nimbus/gateway/client"
)

// Soak tolerances: how far the gateway may stay above its post-warm-up
// baseline once the churn stopped and it settled.
const (
	// soakRate is the churn's pace: cycles a second over all workers.
	soakRate = 10
	// goroutineSlack: a few connections of the HTTP server (keep-alive,
	// the metrics scrape itself) come and go; a leak of even one
	// goroutine per cycle is hundreds.
	goroutineSlack = 10
	// fdSlack: the same few sockets, plus SQLite's WAL/shm. A leaked file
	// or pipe per cycle is hundreds.
	fdSlack = 10
	// rssSlack: the Go runtime returns freed memory to the OS lazily (the
	// scavenger) and the heap may grow to twice the live data before a GC
	// (GOGC=100); the store's page cache warms as rows are added. 48 MiB
	// covers both on a gateway of about 30 MiB, while a leak of a
	// connection's buffers per cycle (≥ 64 KiB × 600 cycles a minute)
	// does not fit in it.
	rssSlack = 48 << 20
)

// usage is one reading of the gateway's resources.
type usage struct {
	goroutines, fds, children int
	rss                       int64
}

func (u usage) String() string {
	return fmt.Sprintf("goroutines %d, fds %d, children %d, RSS %.1f MiB", u.goroutines, u.fds, u.children, float64(u.rss)/(1<<20))
}

// measure reads the gateway's goroutines (its /metrics), open file
// descriptors, child processes and resident memory (/proc).
func (g *gateway) measure() usage {
	g.t.Helper()
	httpClient.CloseIdleConnections() // their server-side goroutines are not the gateway's own
	pid := g.pid()
	var u usage
	r := do(g.t, http.MethodGet, g.metricsURL, nil, nil)
	for _, l := range strings.Split(string(r.body), "\n") {
		if v, ok := strings.CutPrefix(l, "go_goroutines "); ok {
			u.goroutines, _ = strconv.Atoi(strings.TrimSpace(v))
		}
	}
	httpClient.CloseIdleConnections()
	fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		g.t.Fatal(err)
	}
	u.fds = len(fds)
	u.children = len(childrenOf(pid))
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		g.t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "VmRSS:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			u.rss = kb << 10
		}
	}
	return u
}

// TestSoak churns sessions at soakRate cycles a second for -soak (default
// one minute): each cycle opens a session with stdio and files, attaches,
// echoes a line through the workload, uploads and downloads a file,
// closes the session (the attached client gets 4410) and, every 20th
// cycle, also creates and deletes a sandbox of its own. Afterwards the
// gateway's goroutines, file descriptors, children and RSS must return
// to their post-warm-up baseline within the tolerances above.
func TestSoak(t *testing.T) {
	t.Parallel()
	g := startGateway(t)
	adm := clientFor(g, "demo", g.token("demo", true, []string{"worker"}, soakSandboxes()))
	var seq atomic.Int64
	cycle := func() error { return soakCycle(g, adm, int(seq.Add(1))) }

	for i := 0; i < 20; i++ { // warm-up: pools, caches, the first page of the store
		if err := cycle(); err != nil {
			t.Fatalf("warm-up: %v", err)
		}
	}
	time.Sleep(2 * time.Second)
	base := g.measure()
	t.Logf("soak: baseline after warm-up: %v", base)

	ctx, cancel := context.WithTimeout(context.Background(), *soakFor)
	defer cancel()
	tick := time.NewTicker(time.Second / soakRate)
	defer tick.Stop()
	var (
		wg     sync.WaitGroup
		errMu  sync.Mutex
		errs   []error
		cycles atomic.Int64
	)
	peak := base
	for w := 0; w < 4; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-ctx.Done():
					return
				case <-tick.C:
				}
				if err := cycle(); err != nil {
					errMu.Lock()
					errs = append(errs, err)
					errMu.Unlock()
				}
				cycles.Add(1)
			}
		}()
	}
	sampler := time.NewTicker(5 * time.Second)
	func() {
		defer sampler.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-sampler.C:
				u := g.measure()
				peak.goroutines, peak.fds = max(peak.goroutines, u.goroutines), max(peak.fds, u.fds)
				peak.children, peak.rss = max(peak.children, u.children), max(peak.rss, u.rss)
			}
		}
	}()
	wg.Wait()
	if len(errs) > 0 {
		t.Errorf("%d of %d cycles failed; first: %v", len(errs), cycles.Load(), errs[0])
	}

	// Settle: closes finish, workloads of deleted sandboxes are reaped.
	var after usage
	ok := func(u usage) bool {
		return u.goroutines <= base.goroutines+goroutineSlack && u.fds <= base.fds+fdSlack &&
			u.children <= base.children && u.rss <= base.rss+rssSlack
	}
	for i := 0; i < 30; i++ {
		if after = g.measure(); ok(after) {
			break
		}
		time.Sleep(500 * time.Millisecond)
	}
	t.Logf("soak: %d cycles in %v (%.1f/s), %d failed", cycles.Load(), *soakFor, float64(cycles.Load())/soakFor.Seconds(), len(errs))
	t.Logf("soak: before %v", base)
	t.Logf("soak: peak   %v", peak)
	t.Logf("soak: after  %v", after)
	if !ok(after) {
		t.Errorf("the gateway did not return to its baseline (tolerance: goroutines +%d, fds +%d, children +0, RSS +%d MiB):\nbefore %v\nafter  %v",
			goroutineSlack, fdSlack, rssSlack>>20, base, after)
	}
}

// soakSandboxes are the ids the soak's own sandboxes cycle through.
func soakSandboxes() []string {
	ids := make([]string, 8)
	for i := range ids {
		ids[i] = "sbx-soak-" + strconv.Itoa(i)
	}
	return ids
}

// soakCycle is one cycle of TestSoak.
func soakCycle(g *gateway, adm *client.Client, n int) error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	target := serviceTarget("worker")
	var sandbox string
	if n%20 == 0 {
		sandbox = soakSandboxes()[(n/20)%8]
		if err := adm.Do(ctx, http.MethodPost, "/v1/tenants/demo/sandboxes",
			map[string]any{"id": sandbox, "command": []string{"/bin/cat"}}, nil); err != nil {
			return fmt.Errorf("create %s: %w", sandbox, err)
		}
		target = client.SandboxTarget(sandbox)
		defer func() {
			_ = adm.Do(context.Background(), http.MethodDelete, "/v1/tenants/demo/sandboxes/"+sandbox, nil, nil)
		}()
	}
	s, err := adm.Open(ctx, client.OpenRequest{Target: target, Channels: []string{"stdio", "files"}})
	if err != nil {
		return fmt.Errorf("open: %w", err)
	}
	st, err := client.DialStdio(ctx, s.Status.Connect["stdio"])
	if err != nil {
		return fmt.Errorf("attach: %w", err)
	}
	defer st.Close()
	line := fmt.Sprintf("soak-%d-%s", n, rand.Text()[:8])
	if _, err := st.Write([]byte(line + "\n")); err != nil {
		return fmt.Errorf("stdin: %w", err)
	}
	var got []byte
	for !bytes.Contains(got, []byte(line)) {
		_, b, err := st.Next(ctx)
		if err != nil {
			return fmt.Errorf("echo of %s: %w", line, err)
		}
		got = append(got, b...)
	}

	payload := make([]byte, 64<<10)
	_, _ = rand.Read(payload)
	name := fmt.Sprintf("soak/%d.bin", n)
	if _, err := adm.Put(ctx, s.Status.Connect["files"], name, bytes.NewReader(payload), int64(len(payload)), nil); err != nil {
		return fmt.Errorf("upload: %w", err)
	}
	var down bytes.Buffer
	if _, err := adm.Download(ctx, s.Status.Connect["files"], name, &down, 0, nil); err != nil {
		return fmt.Errorf("download: %w", err)
	}
	if !bytes.Equal(down.Bytes(), payload) {
		return fmt.Errorf("download of %s differs", name)
	}
	if err := adm.Remove(ctx, s.Status.Connect["files"], name, false); err != nil {
		return fmt.Errorf("remove: %w", err)
	}

	if _, err := adm.Close(ctx, s.Metadata.ID, "soak"); err != nil {
		return fmt.Errorf("close: %w", err)
	}
	for {
		_, _, err := st.Next(ctx)
		if err == io.EOF {
			return fmt.Errorf("stdio ended normally after close, want 4410")
		}
		if err != nil {
			if code, _ := st.CloseStatus(); code != 4410 {
				return fmt.Errorf("stdio closed with %d after close, want 4410 (%v)", code, err)
			}
			return nil
		}
	}
}
