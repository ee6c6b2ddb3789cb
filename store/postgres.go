package store

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nimbus/gateway/lease"
	"github.com/nimbus/gateway/targets"
)

var (
	_ lease.Store    = (*Postgres)(nil)
	_ lease.Notifier = (*Postgres)(nil)
	_ targets.Store  = (*Postgres)(nil)
)

// defaultMaxConns is the pool size when the URL does not set
// pool_max_conns. pgxpool's own default (max(4, NumCPU)) queues opens
// behind each other on small machines while the server mostly waits on
// commits; more connections let PostgreSQL group those commits.
const defaultMaxConns = 16

// Postgres is the store several replicas share: sessions, audit and catalog
// in one PostgreSQL database, and session ends broadcast to every replica
// with LISTEN/NOTIFY (see WatchEnds). Semantics match SQLite exactly; the
// conformance suite in storetest runs against both.
//
// All methods are safe for concurrent use. After Close every method returns
// Unavailable.
type Postgres struct {
	// Static after construction.
	pool       *pgxpool.Pool
	listenConf *pgx.ConnConfig // the pool's settings, for listener connections
	now        func() time.Time
	ctx        context.Context // cancelled by Close: stops every watcher
	cancel     context.CancelFunc

	// Test hooks, set before WatchEnds is called.
	beforeReconnect func() // called by a watcher before each reconnect attempt

	// Guarded by mu.
	mu       sync.Mutex
	isClosed bool
	watchers sync.WaitGroup // Add under mu, so Close's Wait sees every watcher
}

// OpenPostgres connects to the database at url (a postgres:// URL or a
// key=value DSN; pgxpool's pool_* parameters apply), applies any pending
// migrations and returns the store. It fails when the database cannot be
// reached: a replica should not start without its store.
func OpenPostgres(ctx context.Context, url string) (*Postgres, error) {
	cfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		// The URL may carry a password: do not echo it.
		return nil, fmt.Errorf("store: invalid PostgreSQL URL: %w", err)
	}
	if !strings.Contains(url, "pool_max_conns") {
		cfg.MaxConns = defaultMaxConns
	}
	listenConf := cfg.ConnConfig.Copy()
	if listenConf.RuntimeParams == nil {
		listenConf.RuntimeParams = map[string]string{}
	}
	// Operators (and tests) find the listener in pg_stat_activity by name.
	listenConf.RuntimeParams["application_name"] = ListenerApplicationName
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, pgErr(err, "connect")
	}
	if err := migratePostgres(ctx, pool); err != nil {
		pool.Close()
		return nil, pgErr(err, "migrate")
	}
	sctx, cancel := context.WithCancel(context.Background())
	return &Postgres{
		pool:       pool,
		listenConf: listenConf,
		now:        time.Now,
		ctx:        sctx,
		cancel:     cancel,
	}, nil
}

// ListenerApplicationName is the application_name of the connections
// WatchEnds listens on, so they can be found in pg_stat_activity:
//
//	SELECT pid FROM pg_stat_activity WHERE application_name = 'nimbus-listener'
const ListenerApplicationName = "nimbus-listener"

// Close stops every watcher and waits for them (including a WatchEnds fn
// that is running), then closes the pool. It is safe to call more than once.
func (s *Postgres) Close() error {
	s.mu.Lock()
	already := s.isClosed
	s.isClosed = true
	s.mu.Unlock()
	if already {
		return nil
	}
	s.cancel()
	s.watchers.Wait()
	s.pool.Close()
	return nil
}

// Ping reports whether the database answers, for /readyz: Unavailable once
// closed or when the server cannot be reached.
func (s *Postgres) Ping(ctx context.Context) error {
	if s.closed() {
		return errClosed()
	}
	return pgErr(s.pool.Ping(ctx), "ping")
}

func (s *Postgres) closed() bool { return s.ctx.Err() != nil }

// migrationLock is the pg_advisory_xact_lock key under which migrations
// run, so replicas starting together apply them once, one after the other.
// ("nimbus" in ASCII.)
const migrationLock int64 = 0x6e696d627573

// pgMigrations are the schema, in order; version i+1 is pgMigrations[i].
// Append only: a released step is never edited, since databases already
// carry it. Times are bigint unix milliseconds, as in SQLite. Keys and ids
// are COLLATE "C": listings order by id bytewise, the same on every server
// whatever its locale (and the same as SQLite).
var pgMigrations = []string{
	// 1: sessions, audit, catalog.
	`
CREATE TABLE sessions (
	id               text COLLATE "C" PRIMARY KEY,
	tenant_id        text COLLATE "C" NOT NULL,
	created_at       bigint NOT NULL,
	created_by       text   NOT NULL,
	target_service   text,            -- exactly one of target_service,
	target_sandbox   text,            -- target_sandbox is not NULL
	channels         text   NOT NULL, -- JSON array
	requested_ttl_ms bigint,
	ttl_ms           bigint NOT NULL,
	expires_at       bigint NOT NULL,
	snapshot         text   NOT NULL, -- JSON lease.Snapshot
	state            text   NOT NULL CHECK (state IN ('open', 'closed', 'expired')),
	closed_at        bigint,
	close_reason     text,
	closed_by        text,
	owner            text   NOT NULL DEFAULT '',
	-- When the session stopped being open, by the database's clock (one
	-- clock for every replica): what a watcher's catch-up scans after a
	-- lost connection. closed_at is the caller's time and expiries have
	-- none, so neither would do.
	ended_at         bigint
);
-- ListSessions: keyset pages newest first.
CREATE INDEX sessions_tenant_created ON sessions (tenant_id, created_at DESC, id DESC);
-- DueSessions: only open sessions are the Expirer's work.
CREATE INDEX sessions_open_expires ON sessions (expires_at, id) WHERE state = 'open';
-- CountOpen, on every open's limit check.
CREATE INDEX sessions_tenant_state_expires ON sessions (tenant_id, state, expires_at);
-- A watcher's catch-up.
CREATE INDEX sessions_ended ON sessions (ended_at) WHERE ended_at IS NOT NULL;

-- No primary key: event ids are random, and an index on them would cost a
-- random page write per event for a lookup nothing does.
CREATE TABLE audit (
	id          text COLLATE "C" NOT NULL,
	time        bigint NOT NULL,
	tenant_id   text COLLATE "C" NOT NULL,
	principal   text NOT NULL,
	action      text COLLATE "C" NOT NULL,
	outcome     text NOT NULL,
	session_id  text COLLATE "C" NOT NULL DEFAULT '',
	target      text NOT NULL DEFAULT '',
	code        text NOT NULL DEFAULT '',
	request_id  text NOT NULL DEFAULT '',
	remote_addr text NOT NULL DEFAULT ''
);
CREATE INDEX audit_tenant_time ON audit (tenant_id, time DESC, id DESC);
CREATE INDEX audit_tenant_session_time ON audit (tenant_id, session_id, time DESC, id DESC);
CREATE INDEX audit_tenant_action_time ON audit (tenant_id, action, time DESC, id DESC);

CREATE TABLE services (
	tenant_id  text COLLATE "C" NOT NULL,
	name       text COLLATE "C" NOT NULL,
	kind       text    NOT NULL,
	sandbox    text    NOT NULL DEFAULT '',
	url        text    NOT NULL DEFAULT '',
	dynamic    boolean NOT NULL DEFAULT false,
	generation bigint  NOT NULL,
	updated_at bigint  NOT NULL,
	PRIMARY KEY (tenant_id, name)
);

-- The last generation of deleted services, so a re-created service
-- continues its generations (see SQLite's migration 2).
CREATE TABLE service_tombstones (
	tenant_id  text COLLATE "C" NOT NULL,
	name       text COLLATE "C" NOT NULL,
	generation bigint NOT NULL,
	PRIMARY KEY (tenant_id, name)
);

CREATE TABLE sandboxes (
	tenant_id  text COLLATE "C" NOT NULL,
	id         text COLLATE "C" NOT NULL,
	state      text    NOT NULL,
	generation bigint  NOT NULL,
	command    text    NOT NULL, -- JSON array
	tty        boolean NOT NULL DEFAULT false,
	env        text    NOT NULL, -- JSON array
	root       text    NOT NULL DEFAULT '',
	error      text    NOT NULL DEFAULT '',
	updated_at bigint  NOT NULL,
	PRIMARY KEY (tenant_id, id)
);
`,
	// 2: every end of a session is announced on nimbus_session_end, in the
	// transaction that records it: NOTIFY is delivered at commit, and only
	// then, so a replica never disconnects for a close that rolled back. A
	// trigger rather than a call in each statement: no write path can forget.
	// The payload stays far below NOTIFY's 8000-byte limit: a reason is cut
	// to 1000 characters.
	`
CREATE FUNCTION nimbus_session_end() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
	PERFORM pg_notify('` + endsChannel + `', json_build_object(
		'tenantId',  NEW.tenant_id,
		'sessionId', NEW.id,
		'state',     NEW.state,
		'reason',    left(COALESCE(NEW.close_reason, ''), 1000),
		'at',        CASE WHEN NEW.state = 'closed' THEN NEW.closed_at ELSE NEW.expires_at END,
		'endedAt',   NEW.ended_at)::text);
	RETURN NULL;
END
$$;
CREATE TRIGGER sessions_end AFTER UPDATE OF state ON sessions
	FOR EACH ROW WHEN (OLD.state = 'open' AND NEW.state <> 'open')
	EXECUTE FUNCTION nimbus_session_end();
`,
	// 3: each sandbox's user id (0: none), unique (see SQLite's migration 3).
	`
ALTER TABLE sandboxes ADD COLUMN uid bigint NOT NULL DEFAULT 0;
CREATE UNIQUE INDEX sandboxes_uid ON sandboxes (uid) WHERE uid <> 0;
`,
	// 4: each sandbox's limits, network and last exit reason (see
	// SQLite's migration 4).
	`
ALTER TABLE sandboxes
	ADD COLUMN memory_bytes bigint           NOT NULL DEFAULT 0,
	ADD COLUMN pids         bigint           NOT NULL DEFAULT 0,
	ADD COLUMN cpus         double precision NOT NULL DEFAULT 0,
	ADD COLUMN network      text             NOT NULL DEFAULT '',
	ADD COLUMN reason       text             NOT NULL DEFAULT '';
`,
}

// endsChannel is the NOTIFY channel of session ends.
const endsChannel = "nimbus_session_end"

// migratePostgres applies the migrations the database does not have yet,
// all in one transaction under migrationLock: a crash mid-way leaves the
// previous schema, and a second replica starting at the same moment waits
// for the first and then finds nothing left to do. A current database is
// only read, so a replica can start against a read-only one.
func migratePostgres(ctx context.Context, pool *pgxpool.Pool) error {
	v, err := pgSchemaVersion(ctx, pool)
	if err != nil {
		return err
	}
	if v == len(pgMigrations) {
		return nil
	}
	if v > len(pgMigrations) {
		return fmt.Errorf("database schema version %d is newer than this gateway's %d", v, len(pgMigrations))
	}
	return pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock($1)`, migrationLock); err != nil {
			return err
		}
		// Under the lock: no concurrent CREATE can race this one.
		if _, err := tx.Exec(ctx, `CREATE TABLE IF NOT EXISTS schema_migrations (
			version    integer PRIMARY KEY,
			applied_at bigint  NOT NULL
		)`); err != nil {
			return err
		}
		var cur int
		if err := tx.QueryRow(ctx, `SELECT COALESCE(MAX(version), 0) FROM schema_migrations`).Scan(&cur); err != nil {
			return err
		}
		if cur > len(pgMigrations) {
			return fmt.Errorf("database schema version %d is newer than this gateway's %d", cur, len(pgMigrations))
		}
		for i := cur; i < len(pgMigrations); i++ {
			if _, err := tx.Exec(ctx, pgMigrations[i]); err != nil {
				return fmt.Errorf("migration %d: %w", i+1, err)
			}
			if _, err := tx.Exec(ctx, `INSERT INTO schema_migrations (version, applied_at) VALUES ($1, $2)`,
				i+1, time.Now().UnixMilli()); err != nil {
				return err
			}
		}
		return nil
	})
}

// pgSchemaVersion is the highest applied migration, 0 on an empty database.
func pgSchemaVersion(ctx context.Context, pool *pgxpool.Pool) (int, error) {
	var exists bool
	if err := pool.QueryRow(ctx, `SELECT to_regclass('schema_migrations') IS NOT NULL`).Scan(&exists); err != nil || !exists {
		return 0, err
	}
	var v int
	err := pool.QueryRow(ctx, `SELECT COALESCE(MAX(version), 0) FROM schema_migrations`).Scan(&v)
	return v, err
}
