package proxy_test

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/nimbus/gateway/client"
)

// BenchmarkOpen measures session opens on a sandbox target over a real
// loopback socket with the real SQLite store, at concurrency 1 and 50,
// beside GET /healthz on the same server as the baseline of the HTTP
// round trip itself. It reports p50 and p99 latency in µs.
func BenchmarkOpen(b *testing.B) {
	for _, conc := range []int{1, 50} {
		b.Run("healthz/c="+itoa(conc), func(b *testing.B) { benchLatency(b, conc, false) })
		b.Run("open/c="+itoa(conc), func(b *testing.B) { benchLatency(b, conc, true) })
	}
}

func benchLatency(b *testing.B, conc int, open bool) {
	e := newBenchEnv(b)
	tok := e.token("demo", "bench", []string{"worker"}, nil, false)
	body, _ := json.Marshal(workerOpen("stdio"))
	tr := &http.Transport{MaxIdleConnsPerHost: conc, MaxConnsPerHost: conc}
	defer tr.CloseIdleConnections()
	hc := &http.Client{Transport: tr}
	one := func() time.Duration {
		var req *http.Request
		if open {
			req, _ = http.NewRequest(http.MethodPost, e.URL+"/v1/tenants/demo/sessions", bytes.NewReader(body))
			req.Header.Set("Authorization", "Bearer "+tok)
		} else {
			req, _ = http.NewRequest(http.MethodGet, e.URL+"/healthz", nil)
		}
		start := time.Now()
		resp, err := hc.Do(req)
		if err != nil {
			b.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		d := time.Since(start)
		if want := map[bool]int{true: 201, false: 200}[open]; resp.StatusCode != want {
			b.Fatalf("status %d", resp.StatusCode)
		}
		return d
	}
	// Warm the connections.
	for i := 0; i < conc; i++ {
		one()
	}
	lat := make([]time.Duration, b.N)
	var wg sync.WaitGroup
	next := make(chan int, b.N)
	for i := 0; i < b.N; i++ {
		next <- i
	}
	close(next)
	b.ResetTimer()
	for w := 0; w < conc; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				lat[i] = one()
			}
		}()
	}
	wg.Wait()
	b.StopTimer()
	slices.Sort(lat)
	b.ReportMetric(float64(lat[len(lat)*50/100].Microseconds()), "p50-µs")
	b.ReportMetric(float64(lat[min(len(lat)-1, len(lat)*99/100)].Microseconds()), "p99-µs")
}

func itoa(n int) string {
	b, _ := json.Marshal(n)
	return string(b)
}

// BenchmarkFiles moves 256 MiB per op through the gateway's files channel
// (HTTP face: upload, download) and, as the baseline of the same run, by a
// direct local copy of the same bytes (io.Copy file → file, fsync'd as
// the gateway's upload is).
func BenchmarkFiles(b *testing.B) {
	const size = 256 << 20
	e := newEnv(b, envOptions{quiet: true})
	tok := e.sandbox("sbx-bench", false, "/bin/cat")
	_, urls := e.openURL(tok, "sbx-bench", 0, "files")
	c := client.New(e.URL, "demo", tok)
	ctx := context.Background()
	src := filepath.Join(b.TempDir(), "src.bin")
	f, err := os.Create(src)
	if err != nil {
		b.Fatal(err)
	}
	if _, err := io.Copy(f, io.LimitReader(newPRNG(9), size)); err != nil {
		b.Fatal(err)
	}
	f.Close()

	b.Run("local-copy", func(b *testing.B) {
		b.SetBytes(size)
		for i := 0; i < b.N; i++ {
			in, _ := os.Open(src)
			out, _ := os.Create(filepath.Join(e.sandboxRoot("sbx-bench"), "copy.bin"))
			if _, err := io.Copy(out, in); err != nil {
				b.Fatal(err)
			}
			out.Sync()
			out.Close()
			in.Close()
		}
	})
	b.Run("gateway-upload", func(b *testing.B) {
		b.SetBytes(size)
		for i := 0; i < b.N; i++ {
			in, _ := os.Open(src)
			if err := c.Upload(ctx, urls["files"], "up.bin", in, size, nil); err != nil {
				b.Fatal(err)
			}
			in.Close()
		}
	})
	b.Run("gateway-download", func(b *testing.B) {
		b.SetBytes(size)
		for i := 0; i < b.N; i++ {
			if _, err := c.Download(ctx, urls["files"], "up.bin", io.Discard, 0, nil); err != nil {
				b.Fatal(err)
			}
		}
	})
}
