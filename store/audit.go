package store

import (
	"context"
	"strings"

	"github.com/nimbus/gateway/lease"
)

// AppendAudit implements lease.Store. The events commit together: all of
// them or none. An event without an ID gets one.
func (s *SQLite) AppendAudit(ctx context.Context, evs ...lease.Event) error {
	if len(evs) == 0 {
		return nil
	}
	evs = append([]lease.Event(nil), evs...)
	for i := range evs {
		evs[i] = withEventID(evs[i])
	}
	return s.exec(ctx, func(ctx context.Context, tx *wtx) error {
		return insertEvents(ctx, tx, evs...)
	})
}

// ListAudit implements lease.Store. Events are ordered by time, newest
// first, then by id, descending: a total order, so keyset pages over
// events of the same millisecond neither skip nor repeat.
func (s *SQLite) ListAudit(ctx context.Context, q lease.AuditQuery) ([]lease.Event, *lease.Cursor, error) {
	if s.closed() {
		return nil, nil, errClosed()
	}
	var where strings.Builder
	args := []any{q.TenantID}
	where.WriteString(`tenant_id = ?`)
	if q.SessionID != "" {
		where.WriteString(` AND session_id = ?`)
		args = append(args, q.SessionID)
	}
	if q.Action != "" {
		where.WriteString(` AND action = ?`)
		args = append(args, string(q.Action))
	}
	if q.After != nil {
		where.WriteString(` AND (time, id) < (?, ?)`)
		args = append(args, ms(q.After.Time), q.After.ID)
	}
	size := lease.PageSize(q.PageSize)
	args = append(args, size+1)
	rows, err := s.query(ctx, `SELECT id, time, tenant_id, principal, action, outcome,
		session_id, target, code, request_id, remote_addr
		FROM audit WHERE `+where.String()+` ORDER BY time DESC, id DESC LIMIT ?`, args...)
	if err != nil {
		return nil, nil, storeErr(err, "list audit")
	}
	defer rows.Close()
	out, err := scanRows(rows, scanEvent)
	if err != nil {
		return nil, nil, storeErr(err, "list audit")
	}
	page, next := auditPage(out, size)
	return page, next, nil
}

const qInsertEvent = `INSERT INTO audit (id, time, tenant_id, principal, action, outcome,
	session_id, target, code, request_id, remote_addr) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`

// insertEvents writes evs inside tx, the transaction of the change they
// record.
func insertEvents(ctx context.Context, tx *wtx, evs ...lease.Event) error {
	for _, ev := range evs {
		if _, err := tx.ExecContext(ctx, qInsertEvent,
			ev.ID, ms(ev.Time), ev.TenantID, ev.Principal, string(ev.Action), string(ev.Outcome),
			ev.SessionID, ev.Target, ev.Code, ev.RequestID, ev.RemoteAddr); err != nil {
			return storeErr(err, "insert audit event "+ev.ID)
		}
	}
	return nil
}

// withEventID gives ev an id when the caller left it empty, so the unique
// id column cannot reject a second id-less event.
func withEventID(ev lease.Event) lease.Event {
	if ev.ID == "" {
		ev.ID = lease.NewEventID()
	}
	return ev
}
