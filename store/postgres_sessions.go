package store

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/nimbus/gateway/lease"
	"github.com/nimbus/gateway/problem"
)

// Every write below is a single statement: atomic on its own (autocommit),
// and one round trip, which is what keeps an open's latency to one network
// exchange with the server. Parameters of INSERT … SELECT are cast, since
// PostgreSQL cannot infer their types from the target columns there.

// pgNowMs is the database's clock in unix ms: ended_at is stamped with it
// so that every replica's catch-up reads one clock. clock_timestamp, not
// now(): the time the row is written, after any lock wait, close to commit.
const pgNowMs = `(extract(epoch FROM clock_timestamp()) * 1000)::bigint`

const (
	pgSessionValues = `@id::text, @tenant_id::text, @created_at::bigint, @created_by::text,
		@target_service::text, @target_sandbox::text, @channels::text, @requested_ttl_ms::bigint,
		@ttl_ms::bigint, @expires_at::bigint, @snapshot::text, @state::text, @closed_at::bigint,
		@close_reason::text, @closed_by::text, @owner::text`
	pgEventColumns = `id, time, tenant_id, principal, action, outcome,
		session_id, target, code, request_id, remote_addr`
	pgEventValues = `@ev_id::text, @ev_time::bigint, @ev_tenant_id::text, @ev_principal::text,
		@ev_action::text, @ev_outcome::text, @ev_session_id::text, @ev_target::text, @ev_code::text,
		@ev_request_id::text, @ev_remote_addr::text`

	// pgCreateSession inserts a session and its open event.
	pgCreateSession = `WITH ins AS (
		INSERT INTO sessions (` + sessionColumns + `) VALUES (` + pgSessionValues + `) RETURNING id
	)
	INSERT INTO audit (` + pgEventColumns + `) SELECT ` + pgEventValues + ` FROM ins`

	// pgCreateSessionIf does the same only when the service still has the
	// generation, and reports the generation it found (NULL: deleted) and
	// whether it inserted. It runs after pgLockServiceShared, in the same
	// transaction (see CreateSession).
	pgCreateSessionIf = `WITH gen AS (
		SELECT generation FROM services WHERE tenant_id = @cond_tenant AND name = @cond_service
	), ins AS (
		INSERT INTO sessions (` + sessionColumns + `)
		SELECT ` + pgSessionValues + `
		WHERE EXISTS (SELECT 1 FROM gen WHERE generation = @cond_generation)
		RETURNING id
	), ev AS (
		INSERT INTO audit (` + pgEventColumns + `) SELECT ` + pgEventValues + ` FROM ins
	)
	SELECT (SELECT generation FROM gen), EXISTS (SELECT 1 FROM ins)`
)

// CreateSession implements lease.Store: the session, its event and the
// precondition in one round trip.
//
// The precondition must hold at commit: a PutService committing between
// the check and the insert would let an open authorized against the old
// definition through. PutService and DeleteService hold the service's
// advisory lock exclusively (lockService); an open holds it shared, and
// checks the generation in a later statement of the same transaction, whose
// snapshot is taken once the lock is granted, so it sees any change that
// committed while it waited, and no change can commit until it has. Opens
// do not block each other. (SELECT … FOR SHARE on the service row would do
// the same, but every concurrent open of one service then rewrites that
// row's lock word as a new MultiXact, WAL-logged: a quarter or more of an
// open's cost at concurrency 50 in our runs.) The two statements go in one
// pgx.Batch: one Sync, so one implicit transaction (the shared lock is held
// until the insert commits), in one round trip.
func (s *Postgres) CreateSession(ctx context.Context, sess *lease.Session, ev lease.Event, cond *lease.Precondition) error {
	if s.closed() {
		return errClosed()
	}
	args, err := sessionArgs(sess)
	if err != nil {
		return pgErr(err, "encode session "+sess.ID)
	}
	eventArgs(args, withEventID(ev))
	if cond == nil {
		_, err := s.pool.Exec(ctx, pgCreateSession, args)
		return pgErr(err, "insert session "+sess.ID)
	}
	args["cond_tenant"], args["cond_service"], args["cond_generation"] = cond.TenantID, cond.Service, cond.Generation
	var (
		gen      *int64
		inserted bool
		batch    pgx.Batch
	)
	batch.Queue(pgLockServiceShared, serviceLock, serviceKey(cond.TenantID, cond.Service))
	batch.Queue(pgCreateSessionIf, args).QueryRow(func(row pgx.Row) error { return row.Scan(&gen, &inserted) })
	if err := s.pool.SendBatch(ctx, &batch).Close(); err != nil {
		return pgErr(err, "insert session "+sess.ID)
	}
	switch {
	case inserted:
		return nil
	case gen == nil:
		return problem.New(problem.TargetChanged, "service %s changed (generation %d → deleted)",
			cond.Service, cond.Generation).With("service", cond.Service)
	default:
		return problem.New(problem.TargetChanged, "service %s changed (generation %d → %d)",
			cond.Service, cond.Generation, *gen).With("service", cond.Service)
	}
}

// GetSession implements lease.Store.
func (s *Postgres) GetSession(ctx context.Context, tenantID, id string) (*lease.Session, error) {
	if s.closed() {
		return nil, errClosed()
	}
	sess, err := scanSession(s.pool.QueryRow(ctx, `SELECT `+sessionColumns+` FROM sessions
		WHERE id = $1 AND tenant_id = $2`, id, tenantID))
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, sessionNotFound(id)
	}
	if err != nil {
		return nil, pgErr(err, "get session "+id)
	}
	return sess, nil
}

// ListSessions implements lease.Store, as SQLite's: q.State is evaluated at
// q.Now (the current time when zero); the cursor's Filter is left to the
// caller.
func (s *Postgres) ListSessions(ctx context.Context, q lease.ListQuery) ([]*lease.Session, *lease.Cursor, error) {
	if s.closed() {
		return nil, nil, errClosed()
	}
	now := q.Now
	if now.IsZero() {
		now = s.now()
	}
	var w pgWhere
	w.add(`tenant_id = %s`, q.TenantID)
	switch q.State {
	case "":
	case lease.Open:
		w.add(`state = 'open' AND expires_at > %s`, ms(now))
	case lease.Expired:
		w.add(`(state = 'expired' OR (state = 'open' AND expires_at <= %s))`, ms(now))
	case lease.Closed:
		w.add(`state = 'closed'`)
	default:
		return nil, nil, problem.New(problem.InvalidArgument, "state must be open, closed or expired").With("field", "state")
	}
	if q.After != nil {
		w.add(`(created_at, id) < (%s, %s)`, ms(q.After.Time), q.After.ID)
	}
	size := lease.PageSize(q.PageSize)
	limit := w.arg(size + 1) // one more tells whether a next page exists
	rows, err := s.pool.Query(ctx, `SELECT `+sessionColumns+` FROM sessions WHERE `+w.String()+`
		ORDER BY created_at DESC, id DESC LIMIT `+limit, w.args...)
	if err != nil {
		return nil, nil, pgErr(err, "list sessions")
	}
	out, err := collectSessions(rows)
	if err != nil {
		return nil, nil, pgErr(err, "list sessions")
	}
	if len(out) <= size {
		return out, nil, nil
	}
	out = out[:size]
	last := out[size-1]
	return out, &lease.Cursor{Time: last.CreatedAt, ID: last.ID}, nil
}

// pgCloseSession closes the session when it is open at @at, records the
// event unless the session is expired at @at, and returns the session as it
// now stands and whether this statement closed it. FOR UPDATE serializes
// concurrent closes of one session: the second waits, re-reads the row
// closed by the first and only records its event (the first reason stands).
var pgCloseSession = `WITH cur AS (
		SELECT ` + sessionColumns + ` FROM sessions WHERE id = @id AND tenant_id = @tenant_id FOR UPDATE
	), upd AS (
		UPDATE sessions s SET state = 'closed', closed_at = @at, close_reason = @reason, closed_by = @by,
			ended_at = ` + pgNowMs + `
		FROM cur WHERE s.id = cur.id AND cur.state = 'open' AND cur.expires_at > @at
		RETURNING ` + qualified("s", sessionColumns) + `
	), ev AS (
		INSERT INTO audit (` + pgEventColumns + `) SELECT ` + pgEventValues + ` FROM cur
		WHERE cur.state = 'closed' OR (cur.state = 'open' AND cur.expires_at > @at::bigint)
	)
	SELECT ` + sessionColumns + `, true FROM upd
	UNION ALL
	SELECT ` + sessionColumns + `, false FROM cur WHERE NOT EXISTS (SELECT 1 FROM upd)`

// CloseSession implements lease.Store. A close that ends the session is
// announced to every replica's WatchEnds at commit (migration 2's trigger).
func (s *Postgres) CloseSession(ctx context.Context, c lease.CloseRequest, ev lease.Event) (*lease.Session, error) {
	if s.closed() {
		return nil, errClosed()
	}
	at := fromMs(ms(c.At))
	args := pgx.NamedArgs{"id": c.ID, "tenant_id": c.TenantID, "at": ms(at), "reason": c.Reason, "by": c.By}
	eventArgs(args, withEventID(ev))
	var closedNow bool
	sess, err := scanSession(extraScan{s.pool.QueryRow(ctx, pgCloseSession, args), []any{&closedNow}})
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, sessionNotFound(c.ID)
	}
	if err != nil {
		return nil, pgErr(err, "close session "+c.ID)
	}
	if !closedNow && sess.StateAt(at) == lease.Expired {
		// Nothing was written: the event's condition is the same one.
		return nil, problem.New(problem.SessionNotOpen, "session %s is expired", c.ID).With("state", string(lease.Expired))
	}
	return sess, nil
}

// pgExpireSession records the expiry and its event when the session is
// still open and due; it returns one row when it did.
var pgExpireSession = `WITH upd AS (
		UPDATE sessions SET state = 'expired', ended_at = ` + pgNowMs + `
		WHERE id = @id AND tenant_id = @tenant_id AND state = 'open' AND expires_at <= @at
		RETURNING id
	), ev AS (
		INSERT INTO audit (` + pgEventColumns + `) SELECT ` + pgEventValues + ` FROM upd
	)
	SELECT count(*) FROM upd`

// ExpireSession implements lease.Store. The conditional UPDATE makes it safe
// against a concurrent close and against several Expirers (one per replica):
// exactly one of them records the expiry, and it is announced to every
// replica's WatchEnds.
func (s *Postgres) ExpireSession(ctx context.Context, tenantID, id string, at time.Time, ev lease.Event) (bool, error) {
	if s.closed() {
		return false, errClosed()
	}
	args := pgx.NamedArgs{"id": id, "tenant_id": tenantID, "at": ms(at)}
	eventArgs(args, withEventID(ev))
	var n int
	if err := s.pool.QueryRow(ctx, pgExpireSession, args).Scan(&n); err != nil {
		return false, pgErr(err, "expire session "+id)
	}
	return n > 0, nil
}

// DueSessions implements lease.Store. A limit of zero or less means 100.
func (s *Postgres) DueSessions(ctx context.Context, limit int) ([]*lease.Session, error) {
	if s.closed() {
		return nil, errClosed()
	}
	if limit <= 0 {
		limit = 100
	}
	rows, err := s.pool.Query(ctx, `SELECT `+sessionColumns+` FROM sessions
		WHERE state = 'open' ORDER BY expires_at, id LIMIT $1`, limit)
	if err != nil {
		return nil, pgErr(err, "due sessions")
	}
	out, err := collectSessions(rows)
	if len(out) == 0 {
		out = nil // as SQLite: no due sessions is a nil slice
	}
	return out, pgErr(err, "due sessions")
}

// CountOpen implements lease.Store.
func (s *Postgres) CountOpen(ctx context.Context, tenantID string, now time.Time) (int, error) {
	if s.closed() {
		return 0, errClosed()
	}
	var n int
	err := s.pool.QueryRow(ctx, `SELECT count(*) FROM sessions
		WHERE tenant_id = $1 AND state = 'open' AND expires_at > $2`, tenantID, ms(now)).Scan(&n)
	return n, pgErr(err, "count open sessions")
}

// OpenByTenant implements lease.Store.
func (s *Postgres) OpenByTenant(ctx context.Context, now time.Time) (map[string]int, error) {
	if s.closed() {
		return nil, errClosed()
	}
	rows, err := s.pool.Query(ctx, `SELECT tenant_id, count(*) FROM sessions
		WHERE state = 'open' AND expires_at > $1 GROUP BY tenant_id`, ms(now))
	if err != nil {
		return nil, pgErr(err, "open sessions by tenant")
	}
	defer rows.Close()
	out, err := scanCounts(rows)
	return out, pgErr(err, "open sessions by tenant")
}

// sessionArgs are the named arguments of pgSessionValues.
func sessionArgs(sess *lease.Session) (pgx.NamedArgs, error) {
	channels, err := json.Marshal(sess.Channels)
	if err != nil {
		return nil, fmt.Errorf("channels: %w", err)
	}
	snapshot, err := json.Marshal(sess.Snapshot)
	if err != nil {
		return nil, fmt.Errorf("snapshot: %w", err)
	}
	var service, sandbox *string
	if sess.Target.Service != nil {
		service = &sess.Target.Service.Name
	}
	if sess.Target.Sandbox != nil {
		sandbox = &sess.Target.Sandbox.ID
	}
	var closedAt *int64
	if sess.ClosedAt != nil {
		v := ms(*sess.ClosedAt)
		closedAt = &v
	}
	return pgx.NamedArgs{
		"id": sess.ID, "tenant_id": sess.TenantID, "created_at": ms(sess.CreatedAt), "created_by": sess.CreatedBy,
		"target_service": service, "target_sandbox": sandbox, "channels": string(channels),
		"requested_ttl_ms": sess.RequestedTTLMs, "ttl_ms": sess.TTL.Milliseconds(), "expires_at": ms(sess.ExpiresAt),
		"snapshot": string(snapshot), "state": string(sess.State), "closed_at": closedAt,
		"close_reason": sess.CloseReason, "closed_by": sess.ClosedBy, "owner": sess.Owner,
	}, nil
}

// eventArgs adds the named arguments of pgEventValues to args.
func eventArgs(args pgx.NamedArgs, ev lease.Event) {
	args["ev_id"], args["ev_time"], args["ev_tenant_id"], args["ev_principal"] = ev.ID, ms(ev.Time), ev.TenantID, ev.Principal
	args["ev_action"], args["ev_outcome"], args["ev_session_id"] = string(ev.Action), string(ev.Outcome), ev.SessionID
	args["ev_target"], args["ev_code"], args["ev_request_id"], args["ev_remote_addr"] = ev.Target, ev.Code, ev.RequestID, ev.RemoteAddr
}

// collectSessions scans every row of sessionColumns and closes rows.
func collectSessions(rows pgx.Rows) ([]*lease.Session, error) {
	defer rows.Close()
	return scanRows(rows, scanSession)
}

// extraScan scans the columns after the ones its caller asks for into
// extra: scanSession reads sessionColumns, the statement returns more.
type extraScan struct {
	row   pgx.Row
	extra []any
}

func (e extraScan) Scan(dest ...any) error { return e.row.Scan(append(dest, e.extra...)...) }

// qualified prefixes every column of a comma-separated list with table.
func qualified(table, columns string) string {
	parts := strings.Split(columns, ",")
	for i, p := range parts {
		parts[i] = table + "." + strings.TrimSpace(p)
	}
	return strings.Join(parts, ", ")
}

// pgWhere builds a WHERE clause with numbered parameters.
type pgWhere struct {
	clauses []string
	args    []any
}

// add appends clause, whose %s verbs become the parameters of args.
func (w *pgWhere) add(clause string, args ...any) {
	ph := make([]any, len(args))
	for i, a := range args {
		ph[i] = w.arg(a)
	}
	w.clauses = append(w.clauses, fmt.Sprintf(clause, ph...))
}

// arg adds a parameter and returns its placeholder.
func (w *pgWhere) arg(v any) string {
	w.args = append(w.args, v)
	return fmt.Sprintf("$%d", len(w.args))
}

func (w *pgWhere) String() string { return strings.Join(w.clauses, " AND ") }
