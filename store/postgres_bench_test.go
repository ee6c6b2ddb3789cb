package store_test

import (
	"testing"

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
	benchCreateSession(b, func(b *testing.B) lease.Store {
		s := openPG(b, pgtest.Start(b))
		if _, _, err := s.PutService(b.Context(), targets.Service{TenantID: "demo", Name: "worker", Kind: targets.KindBuiltin, Dynamic: true}); err != nil {
			b.Fatal(err)
		}
		return s
	})
}
