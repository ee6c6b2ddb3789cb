package store

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/nimbus/gateway/lease"
	"github.com/nimbus/gateway/problem"
)

// sessionColumns is the column list every session query selects, in the
// order scanSession reads.
const sessionColumns = `id, tenant_id, created_at, created_by, target_service, target_sandbox,
	channels, requested_ttl_ms, ttl_ms, expires_at, snapshot,
	state, closed_at, close_reason, closed_by, owner`

// The statements of session writes, prepared once on the writer connection.
const (
	qInsertSession = `INSERT INTO sessions (` + sessionColumns + `)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`
	qServiceGeneration = `SELECT generation FROM services WHERE tenant_id = ? AND name = ?`
	qSelectSession     = `SELECT ` + sessionColumns + ` FROM sessions WHERE id = ? AND tenant_id = ?`
	qCloseSession      = `UPDATE sessions SET state = 'closed', closed_at = ?, close_reason = ?, closed_by = ?
		WHERE id = ?`
	qExpireSession = `UPDATE sessions SET state = 'expired'
		WHERE id = ? AND tenant_id = ? AND state = 'open' AND expires_at <= ?`
)

// CreateSession implements lease.Store. The precondition is read under the
// write lock, in the same transaction as the insert, so a PutService cannot
// slip in between the check and the commit.
func (s *SQLite) CreateSession(ctx context.Context, sess *lease.Session, ev lease.Event, cond *lease.Precondition) error {
	// Encode outside the writer: the batch holds the write lock.
	channels, err := json.Marshal(sess.Channels)
	if err != nil {
		return storeErr(err, "encode channels")
	}
	snapshot, err := json.Marshal(sess.Snapshot)
	if err != nil {
		return storeErr(err, "encode snapshot")
	}
	var service, sandbox, requested, closedAt any
	if sess.Target.Service != nil {
		service = sess.Target.Service.Name
	}
	if sess.Target.Sandbox != nil {
		sandbox = sess.Target.Sandbox.ID
	}
	if sess.RequestedTTLMs != nil {
		requested = *sess.RequestedTTLMs
	}
	if sess.ClosedAt != nil {
		closedAt = ms(*sess.ClosedAt)
	}
	args := []any{
		sess.ID, sess.TenantID, ms(sess.CreatedAt), sess.CreatedBy, service, sandbox,
		string(channels), requested, sess.TTL.Milliseconds(), ms(sess.ExpiresAt), string(snapshot),
		string(sess.State), closedAt, nullString(sess.CloseReason), nullString(sess.ClosedBy), sess.Owner,
	}
	ev = withEventID(ev)
	return s.exec(ctx, func(ctx context.Context, tx *wtx) error {
		if cond != nil {
			if err := checkPrecondition(ctx, tx, cond); err != nil {
				return err
			}
		}
		if _, err := tx.ExecContext(ctx, qInsertSession, args...); err != nil {
			return storeErr(err, "insert session "+sess.ID)
		}
		return insertEvents(ctx, tx, ev)
	})
}

// checkPrecondition fails with TargetChanged unless the service still has
// the generation the open was authorized against (SPEC §4.1 step 8).
func checkPrecondition(ctx context.Context, tx *wtx, cond *lease.Precondition) error {
	var gen int64
	err := tx.QueryRowContext(ctx, qServiceGeneration, cond.TenantID, cond.Service).Scan(&gen)
	switch {
	case errors.Is(err, sql.ErrNoRows):
		return problem.New(problem.TargetChanged, "service %s changed (generation %d → deleted)",
			cond.Service, cond.Generation).With("service", cond.Service)
	case err != nil:
		return storeErr(err, "read service generation")
	case gen != cond.Generation:
		return problem.New(problem.TargetChanged, "service %s changed (generation %d → %d)",
			cond.Service, cond.Generation, gen).With("service", cond.Service)
	}
	return nil
}

// GetSession implements lease.Store.
func (s *SQLite) GetSession(ctx context.Context, tenantID, id string) (*lease.Session, error) {
	if s.closed() {
		return nil, errClosed()
	}
	row := s.queryRow(ctx, qSelectSession, id, tenantID)
	sess, err := scanSession(row)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, sessionNotFound(id)
	}
	return sess, storeErr(err, "get session "+id)
}

// ListSessions implements lease.Store. q.State is evaluated at q.Now (the
// current time when zero), the same way Session.StateAt reads one session.
// The returned cursor's Filter is empty: the caller binds it to its query.
func (s *SQLite) ListSessions(ctx context.Context, q lease.ListQuery) ([]*lease.Session, *lease.Cursor, error) {
	if s.closed() {
		return nil, nil, errClosed()
	}
	now := q.Now
	if now.IsZero() {
		now = s.now()
	}
	var where strings.Builder
	args := []any{q.TenantID}
	where.WriteString(`tenant_id = ?`)
	switch q.State {
	case "":
	case lease.Open:
		where.WriteString(` AND state = 'open' AND expires_at > ?`)
		args = append(args, ms(now))
	case lease.Expired:
		where.WriteString(` AND (state = 'expired' OR (state = 'open' AND expires_at <= ?))`)
		args = append(args, ms(now))
	case lease.Closed:
		where.WriteString(` AND state = 'closed'`)
	default:
		return nil, nil, problem.New(problem.InvalidArgument, "state must be open, closed or expired").With("field", "state")
	}
	if q.After != nil {
		where.WriteString(` AND (created_at, id) < (?, ?)`)
		args = append(args, ms(q.After.Time), q.After.ID)
	}
	size := lease.PageSize(q.PageSize)
	args = append(args, size+1) // one more tells whether a next page exists
	rows, err := s.query(ctx, `SELECT `+sessionColumns+` FROM sessions WHERE `+where.String()+`
		ORDER BY created_at DESC, id DESC LIMIT ?`, args...)
	if err != nil {
		return nil, nil, storeErr(err, "list sessions")
	}
	defer rows.Close()
	out, err := scanRows(rows, scanSession)
	if err != nil {
		return nil, nil, storeErr(err, "list sessions")
	}
	if len(out) <= size {
		return out, nil, nil
	}
	out = out[:size]
	last := out[size-1]
	return out, &lease.Cursor{Time: last.CreatedAt, ID: last.ID}, nil
}

// CloseSession implements lease.Store.
func (s *SQLite) CloseSession(ctx context.Context, c lease.CloseRequest, ev lease.Event) (*lease.Session, error) {
	ev = withEventID(ev)
	at := fromMs(ms(c.At))
	var out *lease.Session
	err := s.exec(ctx, func(ctx context.Context, tx *wtx) error {
		row := tx.QueryRowContext(ctx, qSelectSession, c.ID, c.TenantID)
		sess, err := scanSession(row)
		if errors.Is(err, sql.ErrNoRows) {
			return sessionNotFound(c.ID)
		}
		if err != nil {
			return storeErr(err, "read session "+c.ID)
		}
		switch sess.StateAt(at) {
		case lease.Closed:
			// Idempotent: the first close stands, the retry is audited.
		case lease.Expired:
			return problem.New(problem.SessionNotOpen, "session %s is expired", c.ID).With("state", string(lease.Expired))
		default:
			if _, err := tx.ExecContext(ctx, qCloseSession, ms(at), c.Reason, c.By, c.ID); err != nil {
				return storeErr(err, "close session "+c.ID)
			}
			reason, by := c.Reason, c.By
			sess.State, sess.ClosedAt, sess.CloseReason, sess.ClosedBy = lease.Closed, &at, &reason, &by
		}
		if err := insertEvents(ctx, tx, ev); err != nil {
			return err
		}
		out = sess
		return nil
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// ExpireSession implements lease.Store. The conditional UPDATE makes it safe
// against a concurrent close and against several Expirers: exactly one of
// them records the expiry.
func (s *SQLite) ExpireSession(ctx context.Context, tenantID, id string, at time.Time, ev lease.Event) (bool, error) {
	ev = withEventID(ev)
	var changed bool
	err := s.exec(ctx, func(ctx context.Context, tx *wtx) error {
		res, err := tx.ExecContext(ctx, qExpireSession, id, tenantID, ms(at))
		if err != nil {
			return storeErr(err, "expire session "+id)
		}
		n, err := res.RowsAffected()
		if err != nil {
			return storeErr(err, "expire session "+id)
		}
		if n == 0 {
			changed = false
			return nil
		}
		changed = true
		return insertEvents(ctx, tx, ev)
	})
	return changed && err == nil, err
}

// DueSessions implements lease.Store. A limit of zero or less means 100.
func (s *SQLite) DueSessions(ctx context.Context, limit int) ([]*lease.Session, error) {
	if s.closed() {
		return nil, errClosed()
	}
	if limit <= 0 {
		limit = 100
	}
	rows, err := s.query(ctx, `SELECT `+sessionColumns+` FROM sessions
		WHERE state = 'open' ORDER BY expires_at, id LIMIT ?`, limit)
	if err != nil {
		return nil, storeErr(err, "due sessions")
	}
	defer rows.Close()
	out, err := scanRows(rows, scanSession)
	return out, storeErr(err, "due sessions")
}

// CountOpen implements lease.Store.
func (s *SQLite) CountOpen(ctx context.Context, tenantID string, now time.Time) (int, error) {
	if s.closed() {
		return 0, errClosed()
	}
	var n int
	err := s.queryRow(ctx, `SELECT COUNT(*) FROM sessions
		WHERE tenant_id = ? AND state = 'open' AND expires_at > ?`, tenantID, ms(now)).Scan(&n)
	return n, storeErr(err, "count open sessions")
}

// OpenByTenant implements lease.Store.
func (s *SQLite) OpenByTenant(ctx context.Context, now time.Time) (map[string]int, error) {
	if s.closed() {
		return nil, errClosed()
	}
	rows, err := s.query(ctx, `SELECT tenant_id, COUNT(*) FROM sessions
		WHERE state = 'open' AND expires_at > ? GROUP BY tenant_id`, ms(now))
	if err != nil {
		return nil, storeErr(err, "open sessions by tenant")
	}
	defer rows.Close()
	out, err := scanCounts(rows)
	return out, storeErr(err, "open sessions by tenant")
}

// scanSession reads one row of sessionColumns.
func scanSession(row rowScanner) (*lease.Session, error) {
	var (
		sess                      lease.Session
		createdAt, ttl, expiresAt int64
		service, sandbox          sql.NullString
		channels, snapshot, state string
		requested, closedAt       sql.NullInt64
		closeReason, closedBy     sql.NullString
	)
	if err := row.Scan(&sess.ID, &sess.TenantID, &createdAt, &sess.CreatedBy, &service, &sandbox,
		&channels, &requested, &ttl, &expiresAt, &snapshot,
		&state, &closedAt, &closeReason, &closedBy, &sess.Owner); err != nil {
		return nil, err
	}
	if err := json.Unmarshal([]byte(channels), &sess.Channels); err != nil {
		return nil, fmt.Errorf("session %s: channels: %w", sess.ID, err)
	}
	if err := json.Unmarshal([]byte(snapshot), &sess.Snapshot); err != nil {
		return nil, fmt.Errorf("session %s: snapshot: %w", sess.ID, err)
	}
	sess.CreatedAt = fromMs(createdAt)
	sess.ExpiresAt = fromMs(expiresAt)
	sess.TTL = time.Duration(ttl) * time.Millisecond
	sess.State = lease.State(state)
	if service.Valid {
		sess.Target.Service = &lease.ServiceRef{Name: service.String}
	}
	if sandbox.Valid {
		sess.Target.Sandbox = &lease.SandboxRef{ID: sandbox.String}
	}
	if requested.Valid {
		sess.RequestedTTLMs = &requested.Int64
	}
	if closedAt.Valid {
		t := fromMs(closedAt.Int64)
		sess.ClosedAt = &t
	}
	if closeReason.Valid {
		sess.CloseReason = &closeReason.String
	}
	if closedBy.Valid {
		sess.ClosedBy = &closedBy.String
	}
	return &sess, nil
}

func sessionNotFound(id string) error {
	return problem.New(problem.NotFound, "session %s not found", id)
}

func nullString(p *string) any {
	if p == nil {
		return nil
	}
	return *p
}

// closed reports whether Close has been called; reads check it so that a
// closed store answers Unavailable rather than "sql: database is closed".
func (s *SQLite) closed() bool {
	select {
	case <-s.quit:
		return true
	default:
		return false
	}
}
