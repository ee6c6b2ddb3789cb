package store_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/nimbus/gateway/lease"
	"github.com/nimbus/gateway/store"
	"github.com/nimbus/gateway/store/pgtest"
)

// ends collects what a watcher delivers.
type ends struct {
	mu  sync.Mutex
	got []lease.SessionEnd
	new chan struct{} // buffered(1): something arrived
}

func newEnds() *ends { return &ends{new: make(chan struct{}, 1)} }

func (e *ends) add(end lease.SessionEnd) {
	e.mu.Lock()
	e.got = append(e.got, end)
	e.mu.Unlock()
	select {
	case e.new <- struct{}{}:
	default:
	}
}

// wait returns the first end of session id, failing t after within.
func (e *ends) wait(t *testing.T, id string, within time.Duration) lease.SessionEnd {
	t.Helper()
	deadline := time.After(within)
	for {
		e.mu.Lock()
		for _, end := range e.got {
			if end.SessionID == id {
				e.mu.Unlock()
				return end
			}
		}
		e.mu.Unlock()
		select {
		case <-e.new:
		case <-deadline:
			t.Fatalf("no end of %s delivered within %v", id, within)
		}
	}
}

// replicas opens two stores on one new database, as two gateways would,
// and watches ends on the second.
func replicas(t *testing.T) (a, b *store.Postgres, got *ends) {
	t.Helper()
	url := pgtest.Start(t)
	a, b = openPG(t, url), openPG(t, url)
	return a, b, newEnds()
}

func closeOn(t *testing.T, s *store.Postgres, id, reason string) lease.CloseRequest {
	t.Helper()
	c := lease.CloseRequest{TenantID: "demo", ID: id, Reason: reason, By: "alice", At: lease.Millis(time.Now())}
	if _, err := s.CloseSession(t.Context(), c, lease.Event{Time: c.At, TenantID: "demo", Principal: "alice",
		Action: lease.ActionClose, Outcome: lease.Success, SessionID: id}); err != nil {
		t.Fatalf("CloseSession(%s): %v", id, err)
	}
	return c
}

func openOn(t *testing.T, s *store.Postgres) *lease.Session {
	t.Helper()
	sess := session(lease.NewID())
	if err := s.CreateSession(t.Context(), sess, openEvent(sess), nil); err != nil {
		t.Fatal(err)
	}
	return sess
}

func TestPostgresWatchEndsAcrossReplicas(t *testing.T) {
	t.Parallel()
	a, b, got := replicas(t)
	if err := b.WatchEnds(t.Context(), got.add); err != nil {
		t.Fatal(err)
	}
	sess := openOn(t, a)
	c := closeOn(t, a, sess.ID, "user asked")
	end := got.wait(t, sess.ID, time.Second)
	want := lease.SessionEnd{TenantID: "demo", SessionID: sess.ID, State: lease.Closed, Reason: "user asked", At: c.At}
	if end != want {
		t.Errorf("delivered %+v, want %+v", end, want)
	}

	// A repeated close changes nothing and announces nothing new.
	closeOn(t, a, sess.ID, "again")
	other := openOn(t, a)
	closeOn(t, a, other.ID, "")
	got.wait(t, other.ID, time.Second)
	got.mu.Lock()
	defer got.mu.Unlock()
	n := 0
	for _, e := range got.got {
		if e.SessionID == sess.ID {
			n++
		}
	}
	if n != 1 {
		t.Errorf("session %s announced %d times, want once", sess.ID, n)
	}
}

func TestPostgresWatchEndsExpiry(t *testing.T) {
	t.Parallel()
	a, b, got := replicas(t)
	if err := b.WatchEnds(t.Context(), got.add); err != nil {
		t.Fatal(err)
	}
	sess := openOn(t, a)
	if ok, err := a.ExpireSession(t.Context(), "demo", sess.ID, sess.ExpiresAt, openEvent(sess)); !ok || err != nil {
		t.Fatalf("ExpireSession = %v, %v", ok, err)
	}
	end := got.wait(t, sess.ID, time.Second)
	want := lease.SessionEnd{TenantID: "demo", SessionID: sess.ID, State: lease.Expired, At: sess.ExpiresAt}
	if end != want {
		t.Errorf("delivered %+v, want %+v", end, want)
	}
}

// TestPostgresWatchEndsCatchUp kills the listener's backend and closes a
// session while the watcher is held before reconnecting: only the catch-up
// can deliver that close.
func TestPostgresWatchEndsCatchUp(t *testing.T) {
	t.Parallel()
	a, b, got := replicas(t)
	down, release := make(chan struct{}), make(chan struct{})
	var once sync.Once
	b.SetBeforeReconnectForTest(func() {
		once.Do(func() {
			close(down)
			<-release
		})
	})
	if err := b.WatchEnds(t.Context(), got.add); err != nil {
		t.Fatal(err)
	}
	before := openOn(t, a)
	closeOn(t, a, before.ID, "before")
	got.wait(t, before.ID, time.Second)

	missed := openOn(t, a)
	if n, err := b.KillListenersForTest(t.Context()); err != nil || n != 1 {
		t.Fatalf("KillListenersForTest = %d, %v; want 1 listener killed", n, err)
	}
	select {
	case <-down:
	case <-time.After(5 * time.Second):
		close(release)
		t.Fatal("the watcher did not notice its listener was killed")
	}
	c := closeOn(t, a, missed.ID, "while down")
	close(release)
	end := got.wait(t, missed.ID, 3*time.Second) // 100 ms backoff, then reconnect and catch up
	want := lease.SessionEnd{TenantID: "demo", SessionID: missed.ID, State: lease.Closed, Reason: "while down", At: c.At}
	if end != want {
		t.Errorf("caught up %+v, want %+v", end, want)
	}

	// And it listens again.
	after := openOn(t, a)
	closeOn(t, a, after.ID, "after")
	got.wait(t, after.ID, time.Second)
}

// TestPostgresWatchEndsStops checks that a watcher ends with its context
// and with Close (goleak in TestMain checks no goroutine is left).
func TestPostgresWatchEndsStops(t *testing.T) {
	t.Parallel()
	a, b, got := replicas(t)
	ctx, cancel := context.WithCancel(t.Context())
	if err := b.WatchEnds(ctx, got.add); err != nil {
		t.Fatal(err)
	}
	if err := a.WatchEnds(t.Context(), func(lease.SessionEnd) {}); err != nil {
		t.Fatal(err)
	}
	cancel()
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	// a's watcher is still running; Close must stop it and wait.
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
}
