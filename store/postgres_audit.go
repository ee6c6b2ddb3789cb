package store

import (
	"context"

	"github.com/nimbus/gateway/lease"
)

// pgAppendAudit inserts a batch of events given as one array per column:
// one statement however many events, so they commit together.
const pgAppendAudit = `INSERT INTO audit (` + pgEventColumns + `)
	SELECT * FROM unnest($1::text[], $2::bigint[], $3::text[], $4::text[], $5::text[], $6::text[],
		$7::text[], $8::text[], $9::text[], $10::text[], $11::text[])`

// AppendAudit implements lease.Store. The events commit together: all of
// them or none. An event without an ID gets one.
func (s *Postgres) AppendAudit(ctx context.Context, evs ...lease.Event) error {
	if s.closed() {
		return errClosed()
	}
	if len(evs) == 0 {
		return nil
	}
	n := len(evs)
	var (
		ids, tenants, principals, actions, outcomes = make([]string, n), make([]string, n), make([]string, n), make([]string, n), make([]string, n)
		sessions, targets, codes, requests, remotes = make([]string, n), make([]string, n), make([]string, n), make([]string, n), make([]string, n)
		times                                       = make([]int64, n)
	)
	for i, ev := range evs {
		ev = withEventID(ev)
		ids[i], times[i], tenants[i], principals[i] = ev.ID, ms(ev.Time), ev.TenantID, ev.Principal
		actions[i], outcomes[i], sessions[i] = string(ev.Action), string(ev.Outcome), ev.SessionID
		targets[i], codes[i], requests[i], remotes[i] = ev.Target, ev.Code, ev.RequestID, ev.RemoteAddr
	}
	_, err := s.pool.Exec(ctx, pgAppendAudit, ids, times, tenants, principals, actions, outcomes,
		sessions, targets, codes, requests, remotes)
	return pgErr(err, "append audit")
}

// ListAudit implements lease.Store: newest first, then by id descending, a
// total order, so keyset pages neither skip nor repeat.
func (s *Postgres) ListAudit(ctx context.Context, q lease.AuditQuery) ([]lease.Event, *lease.Cursor, error) {
	if s.closed() {
		return nil, nil, errClosed()
	}
	var w pgWhere
	w.add(`tenant_id = %s`, q.TenantID)
	if q.SessionID != "" {
		w.add(`session_id = %s`, q.SessionID)
	}
	if q.Action != "" {
		w.add(`action = %s`, string(q.Action))
	}
	if q.After != nil {
		w.add(`(time, id) < (%s, %s)`, ms(q.After.Time), q.After.ID)
	}
	size := lease.PageSize(q.PageSize)
	limit := w.arg(size + 1)
	rows, err := s.pool.Query(ctx, `SELECT `+pgEventColumns+` FROM audit WHERE `+w.String()+`
		ORDER BY time DESC, id DESC LIMIT `+limit, w.args...)
	if err != nil {
		return nil, nil, pgErr(err, "list audit")
	}
	defer rows.Close()
	out, err := scanRows(rows, scanEvent)
	if err != nil {
		return nil, nil, pgErr(err, "list audit")
	}
	page, next := auditPage(out, size)
	return page, next, nil
}
