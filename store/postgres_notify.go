package store

import (
	"context"
	"encoding/json"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/nimbus/gateway/lease"
)

// The listener's reconnect backoff: doubling from the first to the last.
const (
	minBackoff = 100 * time.Millisecond
	maxBackoff = 2 * time.Second
)

// catchUpMargin is how far before the watermark a catch-up starts. An end
// is stamped (ended_at) while its statement runs and announced when it
// commits, a little later; an end stamped just before the watermark may
// thus commit after it. Statements here are single, short and autocommit,
// so this only has to outlast a stalled commit (an fsync hiccup);
// duplicates are harmless.
const catchUpMargin = 5 * time.Second

// WatchEnds implements lease.Notifier. It listens on a connection of its
// own (not from the pool, whose connections are shared and reset) and
// returns once LISTEN is in effect: an end committed after WatchEnds
// returns is always delivered. When the connection is lost it reconnects
// with backoff (100 ms doubling to 2 s, forever until ctx ends) and, once
// listening again, replays every end stamped since the last watermark
// minus catchUpMargin, so a close committed while it was down is still
// delivered (possibly twice: fn must be idempotent). fn runs on the
// watcher's goroutine, one call at a time.
//
// The watcher stops when ctx ends or the store is closed; Close waits for
// it. An error is returned when the first LISTEN fails.
func (s *Postgres) WatchEnds(ctx context.Context, fn func(lease.SessionEnd)) error {
	s.mu.Lock()
	if s.isClosed {
		s.mu.Unlock()
		return errClosed()
	}
	s.watchers.Add(1)
	s.mu.Unlock()

	ctx, cancel := context.WithCancel(ctx)
	stop := context.AfterFunc(s.ctx, cancel) // Close stops the watcher
	conn, watermark, err := s.listen(ctx)
	if err != nil {
		stop()
		cancel()
		s.watchers.Done()
		return pgErr(err, "listen for session ends")
	}
	go func() {
		defer s.watchers.Done()
		defer cancel()
		defer stop()
		w := &watcher{s: s, fn: fn, watermark: watermark}
		w.run(ctx, conn)
	}()
	return nil
}

// watcher is one WatchEnds loop. Owned by its goroutine, not thread-safe.
type watcher struct {
	s  *Postgres
	fn func(lease.SessionEnd)
	// watermark is a database time (unix ms) before which, minus
	// catchUpMargin, every end has been delivered: the time the current
	// LISTEN took effect, or the latest ended_at received, whichever is
	// later.
	watermark int64
}

// run receives notifications on conn until it fails, then reconnects and
// catches up, until ctx ends.
func (w *watcher) run(ctx context.Context, conn *pgx.Conn) {
	for {
		w.receive(ctx, conn)
		closeConn(conn)
		if ctx.Err() != nil {
			return
		}
		conn = w.reconnect(ctx)
		if conn == nil {
			return
		}
	}
}

// receive delivers notifications until conn fails or ctx ends.
func (w *watcher) receive(ctx context.Context, conn *pgx.Conn) {
	for {
		n, err := conn.WaitForNotification(ctx)
		if err != nil {
			return
		}
		var p endPayload
		if json.Unmarshal([]byte(n.Payload), &p) != nil || p.SessionID == "" {
			continue // not ours: someone else NOTIFYing on our channel
		}
		w.watermark = max(w.watermark, p.EndedAt)
		w.fn(lease.SessionEnd{TenantID: p.TenantID, SessionID: p.SessionID, State: lease.State(p.State),
			Reason: p.Reason, At: fromMs(p.At)})
	}
}

// reconnect listens again, with backoff, and replays the ends that may
// have been missed while it was not listening. It returns nil when ctx
// ends first.
func (w *watcher) reconnect(ctx context.Context) *pgx.Conn {
	backoff := minBackoff
	for {
		if hook := w.s.beforeReconnect; hook != nil {
			hook()
		}
		t := time.NewTimer(backoff)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-t.C:
		}
		backoff = min(2*backoff, maxBackoff)
		conn, listenedAt, err := w.s.listen(ctx)
		if err != nil {
			continue
		}
		// LISTEN is in effect: whatever commits from now on is notified,
		// and the catch-up reads everything committed before.
		if err := w.catchUp(ctx, conn); err != nil {
			closeConn(conn)
			continue
		}
		w.watermark = max(w.watermark, listenedAt)
		return conn
	}
}

// catchUp delivers every end stamped at or after watermark - catchUpMargin.
func (w *watcher) catchUp(ctx context.Context, conn *pgx.Conn) error {
	rows, err := conn.Query(ctx, `SELECT tenant_id, id, state, COALESCE(close_reason, ''),
			CASE WHEN state = 'closed' THEN closed_at ELSE expires_at END, ended_at
		FROM sessions WHERE ended_at >= $1 ORDER BY ended_at, id`,
		w.watermark-catchUpMargin.Milliseconds())
	if err != nil {
		return err
	}
	var ends []lease.SessionEnd
	var latest int64
	for rows.Next() {
		var (
			e         lease.SessionEnd
			state     string
			at, ended int64
		)
		if err := rows.Scan(&e.TenantID, &e.SessionID, &state, &e.Reason, &at, &ended); err != nil {
			rows.Close()
			return err
		}
		e.State, e.At = lease.State(state), fromMs(at)
		ends = append(ends, e)
		latest = max(latest, ended)
	}
	if err := rows.Err(); err != nil {
		return err
	}
	// Delivered only once the whole read succeeded, so a failed catch-up
	// is retried whole rather than half-delivered.
	for _, e := range ends {
		w.fn(e)
	}
	w.watermark = max(w.watermark, latest)
	return nil
}

// listen opens a listener connection and LISTENs on it. It returns the
// database time at which LISTEN was in effect.
func (s *Postgres) listen(ctx context.Context) (*pgx.Conn, int64, error) {
	conn, err := pgx.ConnectConfig(ctx, s.listenConf.Copy())
	if err != nil {
		return nil, 0, err
	}
	if _, err := conn.Exec(ctx, `LISTEN `+endsChannel); err != nil {
		closeConn(conn)
		return nil, 0, err
	}
	var at int64
	if err := conn.QueryRow(ctx, `SELECT `+pgNowMs).Scan(&at); err != nil {
		closeConn(conn)
		return nil, 0, err
	}
	return conn, at, nil
}

// closeConn closes a listener connection without waiting long for a server
// that may be gone.
func closeConn(conn *pgx.Conn) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	_ = conn.Close(ctx)
}

// endPayload is the NOTIFY payload of migration 2's trigger.
type endPayload struct {
	TenantID  string `json:"tenantId"`
	SessionID string `json:"sessionId"`
	State     string `json:"state"`
	Reason    string `json:"reason"`
	At        int64  `json:"at"`
	EndedAt   int64  `json:"endedAt"`
}
