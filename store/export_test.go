package store

import (
	"context"
	"time"
)

// OpenReadOnlyForTest opens path with a writer that SQLite itself refuses
// to let write (mode=ro): as root, chmod cannot make a file read-only.
func OpenReadOnlyForTest(path string) (*SQLite, error) {
	return openSQLite(path, options{readOnly: true})
}

// OpenBusyTimeoutForTest opens path with a short busy_timeout, so a lock
// held elsewhere fails a write quickly.
func OpenBusyTimeoutForTest(path string, d time.Duration) (*SQLite, error) {
	return openSQLite(path, options{busyTimeout: d})
}

// SchemaVersionForTest returns the highest applied migration.
func (s *SQLite) SchemaVersionForTest() (int, error) {
	return schemaVersion(context.Background(), s.read)
}

// MigrationsForTest is the number of migrations this build knows.
var MigrationsForTest = len(migrations)

// MigrationsUpToForTest are the first n SQLite migrations: a test builds
// the database of an older gateway with them and checks the upgrade.
func MigrationsUpToForTest(n int) []string { return migrations[:n] }
