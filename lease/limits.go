package lease

import (
	"context"
	"sync"
	"time"
)

// openCounts answers "how many sessions does this tenant hold open" for
// the limit of SPEC §4.1 step 6 without counting them in the store on
// every open: counting is linear in the open sessions, and profiling showed
// it as a quarter of an open's cost. A tenant's count is read from the
// store at most once per refresh, and opens and closes on this gateway
// adjust it in between. Expiries and other replicas' changes show at the
// next refresh, so the limit can be off by what changed in that window —
// the same slack a check-then-insert against the store already has.
type openCounts struct {
	// Static after construction.
	store   Store
	refresh time.Duration

	// Guarded by mu.
	mu     sync.Mutex
	counts map[string]*tenantCount
}

type tenantCount struct {
	n      int
	readAt time.Time
}

func newOpenCounts(s Store, refresh time.Duration) *openCounts {
	return &openCounts{store: s, refresh: refresh, counts: map[string]*tenantCount{}}
}

// get returns the tenant's open sessions as of now.
func (c *openCounts) get(ctx context.Context, tenant string, now time.Time) (int, error) {
	c.mu.Lock()
	tc, ok := c.counts[tenant]
	if ok && now.Sub(tc.readAt) < c.refresh && !now.Before(tc.readAt) {
		n := tc.n
		c.mu.Unlock()
		return n, nil
	}
	c.mu.Unlock()
	n, err := c.store.CountOpen(ctx, tenant, now)
	if err != nil {
		return 0, err
	}
	c.mu.Lock()
	c.counts[tenant] = &tenantCount{n: n, readAt: now}
	c.mu.Unlock()
	return n, nil
}

// add adjusts a tenant's cached count by delta (+1 open, -1 close).
func (c *openCounts) add(tenant string, delta int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if tc, ok := c.counts[tenant]; ok {
		tc.n = max(0, tc.n+delta)
	}
}
