package store_test

import (
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nimbus/gateway/lease"
	"github.com/nimbus/gateway/store/pgtest"
	"github.com/nimbus/gateway/targets"
)

// BenchmarkCreateSessionPostgres is BenchmarkCreateSession against
// PostgreSQL: an open's commit (session + audit event + generation
// precondition, one statement) at concurrency 1 and 50, with per-op
// latency percentiles. pgtest runs the server with fsync off, so this
// measures the store's round trips and locking, not the disk.
func BenchmarkCreateSessionPostgres(b *testing.B) {
	for _, n := range []int{1, 50} {
		b.Run(fmt.Sprintf("concurrency=%d", n), func(b *testing.B) {
			s := openPG(b, pgtest.Start(b))
			if _, _, err := s.PutService(b.Context(), targets.Service{TenantID: "demo", Name: "worker", Kind: targets.KindBuiltin, Dynamic: true}); err != nil {
				b.Fatal(err)
			}
			cond := &lease.Precondition{TenantID: "demo", Service: "worker", Generation: 1}
			lat := make([][]time.Duration, n)
			var next atomic.Int64
			var wg sync.WaitGroup
			b.ResetTimer()
			for g := range n {
				wg.Go(func() {
					for next.Add(1) <= int64(b.N) {
						ses := session(lease.NewID())
						start := time.Now()
						if err := s.CreateSession(b.Context(), ses, openEvent(ses), cond); err != nil {
							b.Error(err)
							return
						}
						lat[g] = append(lat[g], time.Since(start))
					}
				})
			}
			wg.Wait()
			b.StopTimer()
			all := slices.Sorted(slices.Values(slices.Concat(lat...)))
			if len(all) > 0 {
				pct := func(p float64) float64 {
					return float64(all[int(p*float64(len(all)-1))]) / float64(time.Millisecond)
				}
				b.ReportMetric(pct(0.50), "p50-ms")
				b.ReportMetric(pct(0.99), "p99-ms")
			}
		})
	}
}
