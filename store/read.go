package store

import (
	"context"
	"database/sql"
	"sync"
)

// readStmts caches the read pool's prepared statements by query text:
// database/sql otherwise prepares every query anew, which profiling showed
// as a fifth of the cost of a session open.
type readStmts struct {
	m sync.Map // query → *sql.Stmt
}

func (r *readStmts) get(ctx context.Context, db *sql.DB, query string) (*sql.Stmt, error) {
	if st, ok := r.m.Load(query); ok {
		return st.(*sql.Stmt), nil
	}
	st, err := db.PrepareContext(ctx, query)
	if err != nil {
		return nil, err
	}
	if prev, loaded := r.m.LoadOrStore(query, st); loaded {
		_ = st.Close()
		return prev.(*sql.Stmt), nil
	}
	return st, nil
}

func (r *readStmts) close() {
	r.m.Range(func(k, v any) bool {
		_ = v.(*sql.Stmt).Close()
		r.m.Delete(k)
		return true
	})
}

// queryRow runs a one-row read on the read pool with a cached statement.
// A prepare failure surfaces from Scan, as with sql.DB.QueryRowContext.
func (s *SQLite) queryRow(ctx context.Context, query string, args ...any) rowScanner {
	st, err := s.reads.get(ctx, s.read, query)
	if err != nil {
		return errRow{err}
	}
	return st.QueryRowContext(ctx, args...)
}

// query runs a read on the read pool with a cached statement.
func (s *SQLite) query(ctx context.Context, query string, args ...any) (*sql.Rows, error) {
	st, err := s.reads.get(ctx, s.read, query)
	if err != nil {
		return nil, err
	}
	return st.QueryContext(ctx, args...)
}

// rowScanner is what *sql.Row offers and the scan helpers take.
type rowScanner interface{ Scan(dest ...any) error }

type errRow struct{ err error }

func (e errRow) Scan(...any) error { return e.err }
