package proxy

import (
	"time"

	"context"
	"sync"

	"github.com/nimbus/gateway/channels"
	"github.com/nimbus/gateway/problem"
)

// registry knows every live connection by session, so a close, an expiry
// seen by another replica, or a shutdown can end exactly the connections
// concerned and wait for them to be gone.
type registry struct {
	// Static after construction.
	perSession int

	// Guarded by mu.
	mu        sync.Mutex
	bySession map[string]map[*liveConn]struct{}
	closing   *channels.CloseError // set by closeAll: no new connections

	// wg counts registered connections until they are fully closed.
	wg sync.WaitGroup
}

// liveConn is one registered connection.
type liveConn struct {
	sessionID string
	channel   string
	// cancel ends the connection's context with a *channels.CloseError
	// cause, which its handler turns into the close frame.
	cancel context.CancelCauseFunc
}

func newRegistry(perSession int) *registry {
	if perSession <= 0 {
		perSession = 32
	}
	return &registry{perSession: perSession, bySession: map[string]map[*liveConn]struct{}{}}
}

// add registers lc. It fails with resource_exhausted when the session is
// at its connection limit and unavailable when the gateway is shutting
// down. The returned func unregisters lc; call it exactly once, after the
// connection is closed.
func (r *registry) add(lc *liveConn) (remove func(), err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closing != nil {
		return nil, errDraining
	}
	conns := r.bySession[lc.sessionID]
	if len(conns) >= r.perSession {
		e := problem.New(problem.ResourceExhausted, "session %s has %d live connections, the limit", lc.sessionID, len(conns)).
			With("limit", r.perSession)
		e.RetryAfter = connRetryAfter
		return nil, e
	}
	if conns == nil {
		conns = map[*liveConn]struct{}{}
		r.bySession[lc.sessionID] = conns
	}
	conns[lc] = struct{}{}
	r.wg.Add(1)
	return func() {
		r.mu.Lock()
		// The map holding lc is never dropped while lc is in it, so the
		// current map of the session is the one to delete from.
		cur := r.bySession[lc.sessionID]
		delete(cur, lc)
		if len(cur) == 0 {
			delete(r.bySession, lc.sessionID)
		}
		r.mu.Unlock()
		r.wg.Done()
	}, nil
}

// closeSession ends every connection of a session with cause.
func (r *registry) closeSession(sessionID string, cause *channels.CloseError) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	for lc := range r.bySession[sessionID] {
		lc.cancel(cause)
	}
	return len(r.bySession[sessionID])
}

// closeAll ends every connection with cause and refuses new ones.
func (r *registry) closeAll(cause *channels.CloseError) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.closing = cause
	for _, conns := range r.bySession {
		for lc := range conns {
			lc.cancel(cause)
		}
	}
}

// wait blocks until every registered connection is closed or ctx ends.
func (r *registry) wait(ctx context.Context) error {
	done := make(chan struct{})
	go func() { r.wg.Wait(); close(done) }()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// connRetryAfter is the Retry-After of a session at its connection
// limit: connections end when clients leave, which a few seconds is long
// enough to notice without hammering the gateway.
const connRetryAfter = 5 * time.Second
