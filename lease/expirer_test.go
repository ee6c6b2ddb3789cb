package lease_test

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"go.uber.org/goleak"

	"github.com/nimbus/gateway/lease"
	"github.com/nimbus/gateway/store"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// countingStore counts the expirer's queries.
type countingStore struct {
	lease.Store
	due atomic.Int64
}

func (c *countingStore) DueSessions(ctx context.Context, limit int) ([]*lease.Session, error) {
	c.due.Add(1)
	return c.Store.DueSessions(ctx, limit)
}

func newSession(tenant string, ttl time.Duration) *lease.Session {
	now := lease.Millis(time.Now())
	return &lease.Session{ID: lease.NewID(), TenantID: tenant, CreatedAt: now, CreatedBy: "t",
		Target: lease.Target{Sandbox: &lease.SandboxRef{ID: "sbx"}}, Channels: []lease.Channel{lease.Stdio},
		TTL: ttl, ExpiresAt: now.Add(ttl), State: lease.Open}
}

// TestExpirerSchedules: expiries are recorded close to expiresAt, in
// order, and an idle expirer does not poll: over the whole test it asks
// the store a handful of times, not once a second per session.
//
// It runs in a synctest bubble: the expirer's timer and the test's
// waits are on the bubble's clock, which moves only when every goroutine
// in the bubble is blocked, so a loaded machine cannot make an expiry look
// late or an idle expirer look busy.
func TestExpirerSchedules(t *testing.T) {
	synctest.Test(t, testExpirerSchedules)
}

func testExpirerSchedules(t *testing.T) {
	db, err := store.OpenSQLite(t.TempDir() + "/n.db")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	cs := &countingStore{Store: db}
	var mu sync.Mutex
	lags := map[string]time.Duration{}
	expired := make(chan struct{}, 200)
	e := lease.NewExpirer(cs, lease.ExpirerOptions{Resync: time.Hour, OnExpire: func(s *lease.Session, at time.Time) {
		mu.Lock()
		lags[s.ID] = at.Sub(s.ExpiresAt)
		mu.Unlock()
		expired <- struct{}{}
	}})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); e.Run(ctx) }()
	defer func() { cancel(); <-done }()

	// 100 sessions that expire far in the future, and three soon; the
	// soon ones are opened after the expirer went to sleep, so only
	// Notify can wake it in time.
	for i := 0; i < 100; i++ {
		s := newSession("t", time.Hour)
		if err := db.CreateSession(ctx, s, lease.Event{ID: lease.NewEventID(), Time: s.CreatedAt, TenantID: "t", Action: lease.ActionOpen, Outcome: lease.Success}, nil); err != nil {
			t.Fatal(err)
		}
		e.Notify(s.ExpiresAt)
	}
	// Wait until the expirer has swept and is asleep on its timer.
	synctest.Wait()
	var soon []*lease.Session
	for _, ttl := range []time.Duration{300 * time.Millisecond, 600 * time.Millisecond, 900 * time.Millisecond} {
		s := newSession("t", ttl)
		if err := db.CreateSession(ctx, s, lease.Event{ID: lease.NewEventID(), Time: s.CreatedAt, TenantID: "t", Action: lease.ActionOpen, Outcome: lease.Success}, nil); err != nil {
			t.Fatal(err)
		}
		e.Notify(s.ExpiresAt)
		soon = append(soon, s)
	}
	for range len(soon) {
		select {
		case <-expired:
		case <-time.After(5 * time.Second):
			t.Fatal("the soon sessions were not all expired within 5 s")
		}
	}
	// Past the last expiry, a window in which a polling expirer would
	// still be asking the store. In the bubble this sleep waits for no
	// event: it moves the fake clock 300 ms on once everything is idle.
	time.Sleep(300 * time.Millisecond)
	synctest.Wait()
	mu.Lock()
	defer mu.Unlock()
	if len(lags) != 3 {
		t.Fatalf("%d expiries recorded, want 3", len(lags))
	}
	for _, s := range soon {
		lag, ok := lags[s.ID]
		// Generous bound for a loaded 2-core CI machine; the metric shows
		// the real figure.
		if !ok || lag < 0 || lag > 500*time.Millisecond {
			t.Errorf("session %v expired with lag %v (recorded %v)", s.TTL, lag, ok)
		}
		got, err := db.GetSession(ctx, "t", s.ID)
		if err != nil || got.State != lease.Expired {
			t.Errorf("stored state %v %v", got.State, err)
		}
	}
	if n := cs.due.Load(); n > 20 {
		t.Errorf("the expirer queried the store %d times in about 1.3 s: it is polling", n)
	}
}
