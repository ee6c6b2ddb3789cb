package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net/url"
	"os"
	"runtime"
	"strings"
	"sync"
	"time"

	"github.com/nimbus/gateway/lease"
	"github.com/nimbus/gateway/targets"
	_ "modernc.org/sqlite" // registers the "sqlite" driver (pure Go, no cgo).
)

var (
	_ lease.Store   = (*SQLite)(nil)
	_ targets.Store = (*SQLite)(nil)
)

// busyTimeout is how long a connection waits for a lock held by another
// process (a second gateway on the same file, a backup) before the write
// fails as Unavailable.
const busyTimeout = 5 * time.Second

// SQLite is the single-node store: sessions, audit and catalog in one SQLite
// file in WAL mode. Every write goes through one writer goroutine that
// group-commits whatever is queued (see writer.go), so concurrent opens
// share a transaction instead of queueing on SQLite's single write lock;
// reads use a separate pool and never wait for writers.
//
// All methods are safe for concurrent use. After Close every method returns
// Unavailable.
type SQLite struct {
	// Static after construction.
	write *sql.DB // exactly one connection, owned by run
	read  *sql.DB // query_only pool
	reads readStmts
	now   func() time.Time
	stmts map[string]*sql.Stmt // prepared on write; see writeQueries
	ops   chan *writeOp
	quit  chan struct{} // closed by Close: run drains ops and exits
	done  chan struct{} // closed by run when it has exited

	// The checkpointer (checkpoint.go), static after construction.
	ckpt     *sql.DB       // its one connection
	kick     chan struct{} // buffered(1); the writer signals commits
	ckptDone chan struct{} // closed by checkpoint when it has exited

	closeOnce sync.Once
	closeErr  error
}

// OpenSQLite opens (creating if needed) the database at path, applies any
// pending migrations and starts the writer. path is a file path, not a DSN;
// ":memory:" is not supported because readers and the writer use separate
// connections.
func OpenSQLite(path string) (*SQLite, error) {
	return openSQLite(path, options{})
}

// options are test-only knobs; the zero value is production.
type options struct {
	readOnly    bool          // open the writer with mode=ro (tests of Unavailable)
	busyTimeout time.Duration // zero means busyTimeout
}

func openSQLite(path string, o options) (*SQLite, error) {
	if path == "" || path == ":memory:" || strings.HasPrefix(path, "file:") {
		return nil, fmt.Errorf("store: OpenSQLite needs a file path, got %q", path)
	}
	if o.busyTimeout <= 0 {
		o.busyTimeout = busyTimeout
	}
	// A new database is created owner-only (SQLite gives its -wal and
	// -shm files the database file's mode): it holds every tenant's
	// sessions and audit trail, and the data directory may be passable to
	// workloads running as another user.
	if f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600); err == nil {
		f.Close()
	}
	write, err := sql.Open("sqlite", dsn(path, o, false))
	if err != nil {
		return nil, storeErr(err, "open "+path)
	}
	// One connection: SQLite admits one writer at a time anyway, and a
	// single connection makes the writer's prepared statements reusable.
	write.SetMaxOpenConns(1)
	write.SetMaxIdleConns(1)
	write.SetConnMaxLifetime(0)
	write.SetConnMaxIdleTime(0)
	if err := migrate(context.Background(), write); err != nil {
		_ = write.Close()
		return nil, storeErr(err, "migrate "+path)
	}

	stmts, err := prepareWrites(context.Background(), write)
	if err != nil {
		_ = write.Close()
		return nil, storeErr(err, "prepare "+path)
	}

	read, err := sql.Open("sqlite", dsn(path, o, true))
	if err != nil {
		_ = write.Close()
		return nil, storeErr(err, "open "+path)
	}
	n := max(4, runtime.GOMAXPROCS(0))
	read.SetMaxOpenConns(n)
	read.SetMaxIdleConns(n)
	if err := read.Ping(); err != nil {
		_ = write.Close()
		_ = read.Close()
		return nil, storeErr(err, "open "+path)
	}

	ckpt, err := openCheckpointer(path, o)
	if err != nil {
		_ = write.Close()
		_ = read.Close()
		return nil, storeErr(err, "open "+path)
	}

	s := &SQLite{
		ckpt:     ckpt,
		kick:     make(chan struct{}, 1),
		ckptDone: make(chan struct{}),
		write:    write,
		read:     read,
		stmts:    stmts,
		now:      time.Now,
		ops:      make(chan *writeOp, maxBatch),
		quit:     make(chan struct{}),
		done:     make(chan struct{}),
	}
	go s.run()
	go s.checkpoint()
	return s, nil
}

// Close stops the writer after it has committed every write already
// submitted, then closes the database. It is safe to call more than once.
func (s *SQLite) Close() error {
	s.closeOnce.Do(func() {
		close(s.quit)
		<-s.done
		<-s.ckptDone
		var errs []error
		for _, st := range s.stmts {
			errs = append(errs, st.Close())
		}
		// The writer's connection closes last: as the last connection to
		// the file it checkpoints the whole WAL and removes it.
		s.reads.close()
		errs = append(errs, s.ckpt.Close(), s.read.Close(), s.write.Close())
		s.closeErr = errors.Join(errs...)
	})
	return s.closeErr
}

// Ping reports whether the database can be read, for /readyz: Unavailable
// once closed or when the file cannot be reached.
func (s *SQLite) Ping(ctx context.Context) error {
	select {
	case <-s.quit:
		return errClosed()
	default:
	}
	var one int
	return storeErr(s.read.QueryRowContext(ctx, `SELECT 1`).Scan(&one), "ping")
}

// dsn builds the URI for path. Pragmas go in _pragma parameters so that
// every connection the pool opens gets them, not just the first.
// _txlock=immediate makes BEGIN take the write lock up front: a deferred
// transaction that reads then writes can fail with SQLITE_BUSY without
// waiting for busy_timeout.
func dsn(path string, o options, reader bool) string {
	q := url.Values{}
	q.Add("_pragma", fmt.Sprintf("busy_timeout(%d)", o.busyTimeout.Milliseconds()))
	q.Add("_pragma", "foreign_keys(1)")
	q.Add("_pragma", "synchronous(NORMAL)")
	// Savepoint journals in memory, not temp files: with one savepoint per
	// op, temp-file writes were a fifth of the writer's CPU.
	q.Add("_pragma", "temp_store(MEMORY)")
	// 64 MiB of page cache per connection (default 2 MiB): the indexes on
	// random session ids are touched at random, and a miss is a pread
	// inside the batch.
	q.Add("_pragma", "cache_size(-65536)")
	if reader {
		// The file is already in WAL mode (journal_mode persists); a reader
		// that never writes cannot take the write lock by mistake.
		q.Add("_pragma", "query_only(1)")
	} else {
		q.Add("_pragma", "journal_mode(WAL)")
		// The checkpointer goroutine checkpoints, off the commit path.
		q.Add("_pragma", "wal_autocheckpoint(0)")
		q.Set("_txlock", "immediate")
	}
	if o.readOnly {
		q.Set("mode", "ro")
	}
	return "file:" + (&url.URL{Path: path}).EscapedPath() + "?" + q.Encode()
}

// migrations are the schema, in order; version i+1 is migrations[i]. Append
// only: a released step is never edited, since databases already carry it.
var migrations = []string{
	// 1: sessions, audit, catalog.
	`
CREATE TABLE sessions (
	id               TEXT    PRIMARY KEY,
	tenant_id        TEXT    NOT NULL,
	created_at       INTEGER NOT NULL, -- unix ms UTC, like every time here
	created_by       TEXT    NOT NULL,
	target_service   TEXT,             -- exactly one of target_service,
	target_sandbox   TEXT,             -- target_sandbox is not NULL
	channels         TEXT    NOT NULL, -- JSON array
	requested_ttl_ms INTEGER,
	ttl_ms           INTEGER NOT NULL,
	expires_at       INTEGER NOT NULL,
	snapshot         TEXT    NOT NULL, -- JSON lease.Snapshot
	state            TEXT    NOT NULL CHECK (state IN ('open', 'closed', 'expired')),
	closed_at        INTEGER,
	close_reason     TEXT,
	closed_by        TEXT,
	owner            TEXT    NOT NULL DEFAULT ''
);
-- ListSessions: keyset pages newest first.
CREATE INDEX sessions_tenant_created ON sessions (tenant_id, created_at DESC, id DESC);
-- DueSessions: the Expirer's work list.
CREATE INDEX sessions_state_expires ON sessions (state, expires_at);
-- CountOpen, on every open's limit check.
CREATE INDEX sessions_tenant_state_expires ON sessions (tenant_id, state, expires_at);

CREATE TABLE audit (
	-- Insertion order. Not AUTOINCREMENT: that costs a sqlite_sequence
	-- write per event, and rowids only get reused after the newest row is
	-- deleted, which retention (oldest first) never does.
	seq         INTEGER PRIMARY KEY,
	id          TEXT    NOT NULL, -- random: no index, pages are keyed by (time, id)
	time        INTEGER NOT NULL,
	tenant_id   TEXT    NOT NULL,
	principal   TEXT    NOT NULL,
	action      TEXT    NOT NULL,
	outcome     TEXT    NOT NULL,
	session_id  TEXT    NOT NULL DEFAULT '',
	target      TEXT    NOT NULL DEFAULT '',
	code        TEXT    NOT NULL DEFAULT '',
	request_id  TEXT    NOT NULL DEFAULT '',
	remote_addr TEXT    NOT NULL DEFAULT ''
);
-- ListAudit newest first, unfiltered and by session or action. Every index
-- on a random key (an event id) costs a random page write per event, so
-- only the session filter, the one that matters, pays for one.
CREATE INDEX audit_tenant_time ON audit (tenant_id, time DESC, id DESC);
CREATE INDEX audit_tenant_session_time ON audit (tenant_id, session_id, time DESC, id DESC);
CREATE INDEX audit_tenant_action_time ON audit (tenant_id, action, time DESC, id DESC);

CREATE TABLE services (
	tenant_id  TEXT    NOT NULL,
	name       TEXT    NOT NULL,
	kind       TEXT    NOT NULL,
	sandbox    TEXT    NOT NULL DEFAULT '',
	url        TEXT    NOT NULL DEFAULT '',
	dynamic    INTEGER NOT NULL DEFAULT 0,
	generation INTEGER NOT NULL,
	updated_at INTEGER NOT NULL,
	PRIMARY KEY (tenant_id, name)
);

CREATE TABLE sandboxes (
	tenant_id  TEXT    NOT NULL,
	id         TEXT    NOT NULL,
	state      TEXT    NOT NULL,
	generation INTEGER NOT NULL,
	command    TEXT    NOT NULL, -- JSON array
	tty        INTEGER NOT NULL DEFAULT 0,
	env        TEXT    NOT NULL, -- JSON array
	root       TEXT    NOT NULL DEFAULT '',
	error      TEXT    NOT NULL DEFAULT '',
	updated_at INTEGER NOT NULL,
	PRIMARY KEY (tenant_id, id)
);
`,
	// 2: the last generation of deleted services, so a re-created service
	// continues its generations instead of starting again at 1. Otherwise an
	// open authorized against the old definition would pass its generation
	// precondition against the new one.
	`
CREATE TABLE service_tombstones (
	tenant_id  TEXT    NOT NULL,
	name       TEXT    NOT NULL,
	generation INTEGER NOT NULL,
	PRIMARY KEY (tenant_id, name)
);
`,
	// 3: each sandbox's user id (0: none). It was a hash of the name in
	// the block, not stored: after a restart a colliding sandbox of another
	// tenant got the id, and with it the first one's files (issue 12).
	// Unique, so no two sandboxes ever hold one.
	`
ALTER TABLE sandboxes ADD COLUMN uid INTEGER NOT NULL DEFAULT 0;
CREATE UNIQUE INDEX sandboxes_uid ON sandboxes (uid) WHERE uid <> 0;
`,
	// 4: each sandbox's limits and network as asked for (SPEC §9.2, §9.3;
	// 0 and '': the gateway's defaults), and how its workload last ended
	// (exited, signaled, oom; '' while it has not), so a restart starts
	// it with the same limits and GET still says why it failed.
	`
ALTER TABLE sandboxes ADD COLUMN memory_bytes INTEGER NOT NULL DEFAULT 0;
ALTER TABLE sandboxes ADD COLUMN pids         INTEGER NOT NULL DEFAULT 0;
ALTER TABLE sandboxes ADD COLUMN cpus         REAL    NOT NULL DEFAULT 0;
ALTER TABLE sandboxes ADD COLUMN network      TEXT    NOT NULL DEFAULT '';
ALTER TABLE sandboxes ADD COLUMN reason       TEXT    NOT NULL DEFAULT '';
`,
}

// migrate applies the migrations the database does not have yet, all in one
// transaction, so a crash mid-way leaves the previous schema intact. A
// database that is current is only read, so reopening one (even read-only)
// writes nothing.
func migrate(ctx context.Context, db *sql.DB) error {
	if _, err := db.ExecContext(ctx, `CREATE TABLE IF NOT EXISTS schema_migrations (
		version    INTEGER PRIMARY KEY,
		applied_at INTEGER NOT NULL
	)`); err != nil {
		// A read-only handle cannot even run a no-op CREATE ... IF NOT
		// EXISTS when the table is missing; when it exists this succeeds.
		return err
	}
	v, err := schemaVersion(ctx, db)
	if err != nil {
		return err
	}
	if v == len(migrations) {
		return nil
	}
	if v > len(migrations) {
		return fmt.Errorf("database schema version %d is newer than this gateway's %d", v, len(migrations))
	}
	tx, err := db.BeginTx(ctx, nil) // immediate: re-read under the write lock
	if err != nil {
		return err
	}
	defer func() { _ = tx.Rollback() }()
	var cur int
	if err := tx.QueryRowContext(ctx, `SELECT COALESCE(MAX(version), 0) FROM schema_migrations`).Scan(&cur); err != nil {
		return err
	}
	for i := cur; i < len(migrations); i++ {
		if _, err := tx.ExecContext(ctx, migrations[i]); err != nil {
			return fmt.Errorf("migration %d: %w", i+1, err)
		}
		if _, err := tx.ExecContext(ctx, `INSERT INTO schema_migrations (version, applied_at) VALUES (?, ?)`,
			i+1, time.Now().UnixMilli()); err != nil {
			return err
		}
	}
	return tx.Commit()
}

func schemaVersion(ctx context.Context, db *sql.DB) (int, error) {
	var v int
	err := db.QueryRowContext(ctx, `SELECT COALESCE(MAX(version), 0) FROM schema_migrations`).Scan(&v)
	return v, err
}

// ms is how every time is stored: unix milliseconds, UTC.
func ms(t time.Time) int64 { return t.UnixMilli() }

// fromMs is the inverse of ms; with UTC the result compares == to
// lease.Millis of the time written.
func fromMs(v int64) time.Time { return time.UnixMilli(v).UTC() }
