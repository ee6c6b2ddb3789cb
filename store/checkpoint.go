package store

import (
	"context"
	"database/sql"
	"time"
)

// checkpointEvery is the least time between two WAL checkpoints: often
// enough to keep the WAL small, rarely enough that their fsyncs stay cheap.
const checkpointEvery = 250 * time.Millisecond

// checkpoint is the checkpointer goroutine. SQLite's automatic checkpoint
// runs inside the COMMIT that crosses 1000 WAL pages, so one open in a few
// hundred paid for copying the WAL into the database and two fsyncs (a
// 15 ms p99 at concurrency 1). The writer disables it (wal_autocheckpoint=0)
// and kicks this goroutine after each commit instead; a PASSIVE checkpoint
// on its own connection runs alongside the writer and readers without
// blocking either.
func (s *SQLite) checkpoint() {
	defer close(s.ckptDone)
	ctx := context.Background()
	pause := time.NewTimer(0)
	defer pause.Stop()
	for {
		select {
		case <-s.kick:
		case <-s.quit:
			return
		}
		// Best effort: a failed checkpoint leaves the WAL longer, and the
		// next kick tries again; the data is safe in the WAL either way.
		_, _ = s.ckpt.ExecContext(ctx, `PRAGMA wal_checkpoint(PASSIVE)`)
		pause.Reset(checkpointEvery)
		select {
		case <-pause.C:
		case <-s.quit:
			return
		}
	}
}

// kickCheckpoint asks for a checkpoint without waiting; one pending kick is
// enough.
func (s *SQLite) kickCheckpoint() {
	select {
	case s.kick <- struct{}{}:
	default:
	}
}

// openCheckpointer opens the checkpointer's single connection.
func openCheckpointer(path string, o options) (*sql.DB, error) {
	db, err := sql.Open("sqlite", dsn(path, o, false))
	if err != nil {
		return nil, err
	}
	db.SetMaxOpenConns(1)
	db.SetMaxIdleConns(1)
	return db, db.Ping()
}
