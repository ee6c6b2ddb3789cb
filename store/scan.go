package store

import "github.com/nimbus/gateway/lease"

// rowIter is what *sql.Rows and pgx.Rows share: both stores read their
// listings through scanRows.
type rowIter interface {
	Next() bool
	Scan(dest ...any) error
	Err() error
}

// scanRows reads every row of rows with scan.
func scanRows[T any](rows rowIter, scan func(rowScanner) (T, error)) ([]T, error) {
	out := []T{}
	for rows.Next() {
		v, err := scan(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, v)
	}
	return out, rows.Err()
}

// scanCounts reads rows of (key, count) into a map.
func scanCounts(rows rowIter) (map[string]int, error) {
	out := map[string]int{}
	for rows.Next() {
		var k string
		var n int
		if err := rows.Scan(&k, &n); err != nil {
			return nil, err
		}
		out[k] = n
	}
	return out, rows.Err()
}

// scanEvent reads one audit row of the columns id, time, tenant_id,
// principal, action, outcome, session_id, target, code, request_id,
// remote_addr.
func scanEvent(row rowScanner) (lease.Event, error) {
	var (
		ev              lease.Event
		t               int64
		action, outcome string
	)
	if err := row.Scan(&ev.ID, &t, &ev.TenantID, &ev.Principal, &action, &outcome,
		&ev.SessionID, &ev.Target, &ev.Code, &ev.RequestID, &ev.RemoteAddr); err != nil {
		return lease.Event{}, err
	}
	ev.Time, ev.Action, ev.Outcome = fromMs(t), lease.Action(action), lease.Outcome(outcome)
	return ev, nil
}

// auditPage cuts a listing fetched with one row more than size into the
// page and the cursor of the next one (nil on the last page).
func auditPage(out []lease.Event, size int) ([]lease.Event, *lease.Cursor) {
	if len(out) <= size {
		return out, nil
	}
	out = out[:size]
	last := out[size-1]
	return out, &lease.Cursor{Time: last.Time, ID: last.ID}
}
