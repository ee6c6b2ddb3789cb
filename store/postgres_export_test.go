package store

import (
	"context"

	"github.com/jackc/pgx/v5"
)

// SetBeforeReconnectForTest makes every watcher of s call f before each
// reconnect attempt: a test can hold the listener down while it closes a
// session, to exercise the catch-up. Call it before WatchEnds.
func (s *Postgres) SetBeforeReconnectForTest(f func()) { s.beforeReconnect = f }

// KillListenersForTest terminates the server backends of every WatchEnds
// listener on s's database, as a network failure or a server restart
// would, and reports how many it killed.
func (s *Postgres) KillListenersForTest(ctx context.Context) (int, error) {
	var n int
	err := s.pool.QueryRow(ctx, `SELECT count(*) FROM (
		SELECT pg_terminate_backend(pid) FROM pg_stat_activity
		WHERE application_name = $1 AND datname = current_database()) k`, ListenerApplicationName).Scan(&n)
	return n, err
}

// SchemaVersionForTest returns the highest applied migration.
func (s *Postgres) SchemaVersionForTest(ctx context.Context) (int, error) {
	return pgSchemaVersion(ctx, s.pool)
}

// PostgresMigrationsForTest is the number of PostgreSQL migrations this
// build knows.
var PostgresMigrationsForTest = len(pgMigrations)

// PGErrForTest maps err as every Postgres method does.
func PGErrForTest(err error) error { return pgErr(err, "test") }

// LockServiceForTest takes the service's lock in tx as PutService does.
func LockServiceForTest(ctx context.Context, tx pgx.Tx, tenantID, name string) error {
	return lockService(ctx, tx, tenantID, name)
}

// PostgresMigrationsUpToForTest are the first n PostgreSQL migrations, as
// MigrationsUpToForTest.
func PostgresMigrationsUpToForTest(n int) []string { return pgMigrations[:n] }
