package store

import (
	"context"
	"database/sql"
	"runtime"
)

// maxBatch bounds how many writes share one transaction, so a burst cannot
// hold the write lock (and delay every caller in it) indefinitely.
const maxBatch = 128

// writeOp is one caller's write. fn runs inside the batch's transaction;
// when it fails only its changes are rolled back and only its caller sees
// the error (see commit). fn may run twice, the first run rolled back, so
// it must be a function of the database and its arguments, and set every
// result it reports on every path.
type writeOp struct {
	ctx    context.Context
	fn     func(ctx context.Context, tx *wtx) error
	result chan error // buffered(1): run never blocks on a caller
}

// exec submits fn to the writer and waits for the commit that makes it
// durable (or for its error). A caller whose ctx ends while its write is
// queued gets ctx's error and the write is skipped; once the write has
// started, exec waits for the outcome, so nil always means committed and an
// error always means not written.
func (s *SQLite) exec(ctx context.Context, fn func(ctx context.Context, tx *wtx) error) error {
	op := &writeOp{ctx: ctx, fn: fn, result: make(chan error, 1)}
	select {
	case s.ops <- op:
	case <-s.quit:
		return errClosed()
	case <-ctx.Done():
		return storeErr(ctx.Err(), "write not submitted")
	}
	select {
	case err := <-op.result:
		return err
	case <-s.done:
		// run drains the queue before it exits, so the result is there
		// unless op slipped in after the final drain.
		select {
		case err := <-op.result:
			return err
		default:
			return errClosed()
		}
	}
}

// run is the writer goroutine: it owns the write connection. It takes the
// first queued op, everything else already queued (up to maxBatch), and
// commits them together: one BEGIN/COMMIT (and one WAL append) for the whole
// burst instead of one each, which is what keeps open latency flat at high
// concurrency (SQLite admits one writer at a time).
func (s *SQLite) run() {
	defer close(s.done)
	batch := make([]*writeOp, 0, maxBatch)
	for {
		select {
		case op := <-s.ops:
			if len(batch) > 1 {
				// The callers just answered are busy resubmitting: let
				// them, so they join this batch rather than trickle into
				// a series of small ones.
				runtime.Gosched()
			}
			batch = s.fill(append(batch[:0], op))
			s.commit(batch)
		case <-s.quit:
			// Finish what callers already handed over before Close.
			for {
				batch = s.fill(batch[:0])
				if len(batch) == 0 {
					return
				}
				s.commit(batch)
			}
		}
	}
}

// fill appends the ops already queued, without waiting for more.
func (s *SQLite) fill(batch []*writeOp) []*writeOp {
	for len(batch) < maxBatch {
		select {
		case op := <-s.ops:
			batch = append(batch, op)
		default:
			return batch
		}
	}
	return batch
}

// commit runs batch in one transaction and replies to every op.
//
// It first runs every op straight in the transaction. Savepoints are not
// free: SQLite copies each page an op first touches into the savepoint
// journal, a fifth of an open's cost. Only when an op fails (a stale
// precondition, a close of an expired session) is the batch rolled back and
// run again with one savepoint per op, so that the failed op alone is
// undone. Ops are deterministic functions of the database and their
// arguments, so the second run repeats the first up to the failure.
func (s *SQLite) commit(batch []*writeOp) {
	errs := make([]error, len(batch))
	if !s.runBatch(batch, errs, false) {
		clear(errs)
		s.runBatch(batch, errs, true)
	}
	for i, op := range batch {
		op.result <- errs[i]
	}
	s.kickCheckpoint()
}

// runBatch runs batch in one transaction, recording each op's outcome in
// errs. Without savepoints it gives up (reports false, having rolled back)
// at the first failing op of a batch of several; a lone op needs no
// savepoint, the transaction is one.
func (s *SQLite) runBatch(batch []*writeOp, errs []error, savepoints bool) bool {
	// The batch is shared, so no single caller's cancellation may abort
	// it: statements run under a background context.
	ctx := context.Background()
	sqlTx, err := s.write.BeginTx(ctx, nil)
	if err != nil {
		err = storeErr(err, "begin")
		for i := range errs {
			errs[i] = err
		}
		return true
	}
	tx := &wtx{tx: sqlTx, stmts: s.stmts}
	for i, op := range batch {
		if err := op.ctx.Err(); err != nil {
			errs[i] = storeErr(err, "write abandoned")
			continue
		}
		if savepoints {
			if _, err := tx.ExecContext(ctx, qSavepoint); err != nil {
				abort(tx, errs, i, err)
				return true
			}
		}
		if err := op.fn(context.WithoutCancel(op.ctx), tx); err != nil {
			errs[i] = storeErr(err, "write")
			if !savepoints {
				_ = sqlTx.Rollback()
				return len(batch) == 1
			}
			if _, err := tx.ExecContext(ctx, qRollbackTo); err != nil {
				// SQLite rolled the whole transaction back itself (e.g.
				// SQLITE_FULL, SQLITE_IOERR): nothing of the batch stands.
				abort(tx, errs, i+1, err)
				return true
			}
		}
		if savepoints {
			if _, err := tx.ExecContext(ctx, qRelease); err != nil {
				abort(tx, errs, i+1, err)
				return true
			}
		}
	}
	if err := sqlTx.Commit(); err != nil {
		err = storeErr(err, "commit")
		for i := range errs {
			if errs[i] == nil {
				errs[i] = err
			}
		}
	}
	return true
}

// abort rolls the batch back after a failure of the transaction itself:
// ops before from, which had succeeded, and every op from on, get err; ops
// that already failed keep their own error.
func abort(tx *wtx, errs []error, from int, err error) {
	_ = tx.tx.Rollback()
	err = storeErr(err, "write batch")
	for i := range errs {
		if errs[i] == nil || i >= from {
			errs[i] = err
		}
	}
}

// The savepoint statements of a batch.
const (
	qSavepoint  = `SAVEPOINT op`
	qRollbackTo = `ROLLBACK TO op`
	qRelease    = `RELEASE op`
)

// writeQueries are prepared once, at open, on the writer connection: the
// statements of every open and close, so the hot path never re-parses SQL
// (parsing was a fifth of the writer's CPU). Others run unprepared.
var writeQueries = []string{
	qSavepoint, qRollbackTo, qRelease,
	qInsertSession, qServiceGeneration, qSelectSession, qCloseSession, qExpireSession,
	qInsertEvent,
}

// prepareWrites prepares writeQueries on db. It must run before the writer
// starts: db has one connection, which a running batch holds.
func prepareWrites(ctx context.Context, db *sql.DB) (map[string]*sql.Stmt, error) {
	stmts := make(map[string]*sql.Stmt, len(writeQueries))
	for _, q := range writeQueries {
		st, err := db.PrepareContext(ctx, q)
		if err != nil {
			for _, st := range stmts {
				_ = st.Close()
			}
			return nil, err
		}
		stmts[q] = st
	}
	return stmts, nil
}

// wtx is the batch transaction as an op sees it: *sql.Tx's ExecContext
// and QueryRowContext, using the prepared statement of the query when there
// is one.
type wtx struct {
	tx    *sql.Tx
	stmts map[string]*sql.Stmt // read-only after open
}

// ExecContext is tx.ExecContext.
func (w *wtx) ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error) {
	if st, ok := w.stmts[query]; ok {
		return w.tx.StmtContext(ctx, st).ExecContext(ctx, args...)
	}
	return w.tx.ExecContext(ctx, query, args...)
}

// QueryRowContext is tx.QueryRowContext.
func (w *wtx) QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row {
	if st, ok := w.stmts[query]; ok {
		return w.tx.StmtContext(ctx, st).QueryRowContext(ctx, args...)
	}
	return w.tx.QueryRowContext(ctx, query, args...)
}
