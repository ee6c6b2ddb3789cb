package e2e

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nimbus/gateway/client"
)

// needRunc skips where the gateway cannot pick the runc runtime (not
// root, no runc), except in CI, which installs it: there it fails.
func needRunc(t *testing.T) {
	t.Helper()
	_, err := exec.LookPath("runc")
	if err == nil && os.Geteuid() == 0 {
		return
	}
	if os.Getenv("CI") != "" {
		t.Fatalf("the runc tests need root and runc (CI installs runc): euid %d, %v", os.Geteuid(), err)
	}
	t.Skipf("the runc tests need root and runc: euid %d, %v", os.Geteuid(), err)
}

// runcList lists the containers of the gateway on dir, as runc sees them.
func runcList(t *testing.T, dir string) []string {
	t.Helper()
	out, err := exec.Command("runc", "--root", filepath.Join(dir, "containers", "runc"), "list", "-q").Output()
	if err != nil {
		t.Fatalf("runc list: %v", err)
	}
	return strings.Fields(string(out))
}

// TestRuncContainersDieWithGateway: the containers of a SIGKILLed gateway
// end with it (their init sees the control pipe close), and the next
// gateway on the data directory removes what runc still records of them.
func TestRuncContainersDieWithGateway(t *testing.T) {
	needRunc(t)
	t.Parallel()
	g := startGateway(t, "--sandbox-runtime", "runc")
	g.createSandbox("sbx-long", false, "sh", "-c", "sleep 600 & sleep 600")
	first, last := harnessBlock(g.addr)
	// init, sh and its two sleeps, once sh has forked them.
	for i := 0; len(procsOf(first, last)) < 4; i++ {
		if i == 250 {
			t.Fatalf("processes in the sandboxes' block: %v, want the workload's four", procsOf(first, last))
		}
		time.Sleep(20 * time.Millisecond)
	}
	g.kill9()
	deadline := time.Now().Add(10 * time.Second)
	for len(procsOf(first, last)) > 0 {
		if time.Now().After(deadline) {
			t.Fatalf("container processes outlived their gateway: %v", procsOf(first, last))
		}
		time.Sleep(20 * time.Millisecond)
	}
	if len(runcList(t, g.dir)) == 0 {
		t.Fatal("runc records none of the dead gateway's containers: nothing left for the restart to test")
	}
	g.start()
	if !g.logUntil("removed containers left by a gateway that died") {
		t.Errorf("the restart did not say it removed the leftovers:\n%s", g.log())
	}
	// What runs now are the restarted sandboxes' new containers only.
	for _, id := range runcList(t, g.dir) {
		if !strings.HasPrefix(id, "demo.") && !strings.HasPrefix(id, "other.") {
			t.Errorf("unexpected container %s", id)
		}
	}
}

// healthProbe asks /healthz every 20 ms until stop, and returns the
// latencies; an error or a non-200 answer fails the test.
func healthProbe(t *testing.T, g *gateway, stop <-chan struct{}) func() []time.Duration {
	var mu sync.Mutex
	var lat []time.Duration
	done := make(chan struct{})
	go func() {
		defer close(done)
		tick := time.NewTicker(20 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tick.C:
			}
			start := time.Now()
			resp, err := httpClient.Get(g.URL + "/healthz")
			if err != nil {
				t.Errorf("/healthz: %v", err)
				return
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				t.Errorf("/healthz: %d", resp.StatusCode)
			}
			mu.Lock()
			lat = append(lat, time.Since(start))
			mu.Unlock()
		}
	}()
	return func() []time.Duration {
		<-done
		mu.Lock()
		defer mu.Unlock()
		return lat
	}
}

func p99(lat []time.Duration) time.Duration {
	if len(lat) == 0 {
		return 0
	}
	s := slices.Clone(lat)
	slices.Sort(s)
	return s[(len(s)*99)/100]
}

// TestRuncForkBombAndOOM (SPEC §9.2): a fork bomb stops at the pids limit,
// a memory hog is OOM-killed, the stdio client gets exit with reason oom
// and the sandbox reads failed with status.reason oom; /healthz answers
// all along (its p99 is logged).
func TestRuncForkBombAndOOM(t *testing.T) {
	needRunc(t)
	t.Parallel()
	g := startGateway(t, "--sandbox-runtime", "runc", "--sandbox-pids", "64", "--sandbox-memory", "64Mi")
	adm := g.adminFor("sbx-bomb", "sbx-hog")
	ctx := context.Background()

	stop := make(chan struct{})
	latencies := healthProbe(t, g, stop)
	g.createSandbox("sbx-bomb", false, "bash", "-c", `bomb() { bomb | bomb & }; bomb; wait`)
	s := g.open(adm, client.SandboxTarget("sbx-bomb"), "stdio")
	c, err := client.DialStdio(ctx, s.Status.Connect["stdio"])
	if err != nil {
		t.Fatal(err)
	}
	echoesOutput(t, c, "Resource temporarily unavailable")
	c.Close()
	var got struct {
		Status struct {
			Usage *struct {
				PIDs int `json:"pids"`
			} `json:"usage"`
		} `json:"status"`
	}
	if err := adm.Do(ctx, http.MethodGet, "/v1/tenants/demo/sandboxes/sbx-bomb", nil, &got); err != nil {
		t.Fatal(err)
	}
	if got.Status.Usage == nil || got.Status.Usage.PIDs > 64 || got.Status.Usage.PIDs == 0 {
		t.Errorf("the bomb's status.usage: %+v, want 1..64 pids", got.Status.Usage)
	}
	// The bomb keeps hitting its limit while /healthz is probed.
	time.Sleep(2 * time.Second)
	if err := adm.Do(ctx, http.MethodDelete, "/v1/tenants/demo/sandboxes/sbx-bomb", nil, nil); err != nil {
		t.Fatal(err)
	}
	close(stop)
	bombLat := latencies()

	stop = make(chan struct{})
	latencies = healthProbe(t, g, stop)
	g.createSandbox("sbx-hog", false, "sh", "-c", "read go; exec tail /dev/zero")
	s = g.open(adm, client.SandboxTarget("sbx-hog"), "stdio")
	c, err = client.DialStdio(ctx, s.Status.Connect["stdio"])
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	time.Sleep(time.Second) // /healthz probed before the hog too
	if _, err := c.Write([]byte("go\n")); err != nil {
		t.Fatal(err)
	}
	rctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	for {
		if _, _, err = c.Next(rctx); err != nil {
			break
		}
	}
	code, sig, ok := c.Exit()
	if !errors.Is(err, io.EOF) || !ok || sig != "SIGKILL" || c.ExitReason() != "oom" {
		t.Errorf("the hog's exit: %v code %d signal %q reason %q, want SIGKILL for oom", err, code, sig, c.ExitReason())
	}
	var sb struct {
		State  string `json:"state"`
		Status struct {
			Reason string `json:"reason"`
		} `json:"status"`
	}
	for range 200 {
		if err := adm.Do(ctx, http.MethodGet, "/v1/tenants/demo/sandboxes/sbx-hog", nil, &sb); err != nil {
			t.Fatal(err)
		}
		if sb.State == "failed" {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if sb.State != "failed" || sb.Status.Reason != "oom" {
		t.Errorf("the hog's sandbox: %+v, want failed with status.reason oom", sb)
	}
	close(stop)
	hogLat := latencies()
	t.Logf("/healthz during the fork bomb: %d answers, p99 %v; during the OOM kill: %d answers, p99 %v",
		len(bombLat), p99(bombLat), len(hogLat), p99(hogLat))
	fmt.Fprintf(os.Stderr, "runc limits: healthz p99 %v (fork bomb), %v (oom)\n", p99(bombLat), p99(hogLat))
}

// echoesOutput reads c until its output contains want.
func echoesOutput(t *testing.T, c *client.Stdio, want string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var out []byte
	for !strings.Contains(string(out), want) {
		_, data, err := c.Next(ctx)
		if err != nil {
			t.Fatalf("waiting for %q: %v (got %q)", want, err, out)
		}
		out = append(out, data...)
	}
}
