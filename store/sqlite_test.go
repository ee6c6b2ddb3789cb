package store_test

import (
	"database/sql"
	"errors"
	"path/filepath"
	"testing"
	"time"

	"github.com/nimbus/gateway/lease"
	"github.com/nimbus/gateway/problem"
	"github.com/nimbus/gateway/store"
	"github.com/nimbus/gateway/store/storetest"
	"github.com/nimbus/gateway/targets"
	"modernc.org/sqlite"
	sqlite3 "modernc.org/sqlite/lib"
)

func TestSQLiteConformance(t *testing.T) {
	storetest.Run(t, func(t *testing.T) storetest.Stores {
		return openStores(t, filepath.Join(t.TempDir(), "nimbus.db"))
	})
}

// openStores opens path and closes it at cleanup; Reopen closes it first.
func openStores(t *testing.T, path string) storetest.Stores {
	t.Helper()
	s := openT(t, path)
	return storetest.Stores{
		Sessions: s,
		Catalog:  s,
		Reopen: func(t *testing.T) storetest.Stores {
			if err := s.Close(); err != nil {
				t.Fatalf("Close: %v", err)
			}
			return openStores(t, path)
		},
	}
}

func openT(t *testing.T, path string) *store.SQLite {
	t.Helper()
	s, err := store.OpenSQLite(path)
	if err != nil {
		t.Fatalf("OpenSQLite: %v", err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

func session(id string) *lease.Session {
	now := lease.Millis(time.Now())
	return &lease.Session{
		ID: id, TenantID: "demo", CreatedAt: now, CreatedBy: "alice",
		Target:   lease.Target{Service: &lease.ServiceRef{Name: "worker"}},
		Channels: []lease.Channel{lease.Stdio}, TTL: time.Hour, ExpiresAt: now.Add(time.Hour), State: lease.Open,
	}
}

func openEvent(s *lease.Session) lease.Event {
	return lease.Event{ID: lease.NewEventID(), Time: s.CreatedAt, TenantID: s.TenantID, Principal: "alice",
		Action: lease.ActionOpen, Outcome: lease.Success, SessionID: s.ID}
}

func TestMigrationsIdempotentOnReopen(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "nimbus.db")
	for i := range 3 {
		s, err := store.OpenSQLite(path)
		if err != nil {
			t.Fatalf("open #%d: %v", i+1, err)
		}
		v, err := s.SchemaVersionForTest()
		if err != nil || v != store.MigrationsForTest {
			t.Errorf("open #%d: schema version %d, %v; want %d", i+1, v, err, store.MigrationsForTest)
		}
		if err := s.CreateSession(t.Context(), session(lease.NewID()), openEvent(session("x")), nil); err != nil {
			t.Fatalf("open #%d: CreateSession: %v", i+1, err)
		}
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
	}
	// One row per migration, however often the file was opened.
	db, err := sql.Open("sqlite", path)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var rows, sessions int
	if err := db.QueryRow(`SELECT COUNT(*) FROM schema_migrations`).Scan(&rows); err != nil || rows != store.MigrationsForTest {
		t.Errorf("schema_migrations rows = %d, %v; want %d", rows, err, store.MigrationsForTest)
	}
	if err := db.QueryRow(`SELECT COUNT(*) FROM sessions`).Scan(&sessions); err != nil || sessions != 3 {
		t.Errorf("sessions = %d, %v; want 3 kept across reopens", sessions, err)
	}
	var mode string
	if err := db.QueryRow(`PRAGMA journal_mode`).Scan(&mode); err != nil || mode != "wal" {
		t.Errorf("journal_mode = %q, %v; want wal", mode, err)
	}
}

// TestMigrationKeepsSandboxes: a database of a gateway before migration 4
// (sandbox limits, network, exit reason) opens, and its sandboxes read as
// they were, with the defaults' zero limits, no network and no reason.
func TestMigrationKeepsSandboxes(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "nimbus.db")
	db, err := sql.Open("sqlite", path)
	if err != nil {
		t.Fatal(err)
	}
	stmts := append([]string{`CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, applied_at INTEGER NOT NULL)`},
		store.MigrationsUpToForTest(3)...)
	stmts = append(stmts, `INSERT INTO schema_migrations (version, applied_at) VALUES (1, 0), (2, 0), (3, 0)`,
		`INSERT INTO sandboxes (tenant_id, id, state, generation, command, tty, env, root, error, updated_at, uid)
			VALUES ('demo', 'old', 'failed', 4, '["sh"]', 0, 'null', '/r', 'exit status 1', 1000, 200001)`)
	for _, q := range stmts {
		if _, err := db.Exec(q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}

	s, err := store.OpenSQLite(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	if v, err := s.SchemaVersionForTest(); err != nil || v != store.MigrationsForTest {
		t.Fatalf("schema version %d, %v; want %d", v, err, store.MigrationsForTest)
	}
	got, err := s.GetSandbox(t.Context(), "demo", "old")
	if err != nil || got.State != targets.Failed || got.Generation != 4 || got.Error != "exit status 1" || got.UID != 200001 ||
		got.Resources != (targets.Resources{}) || got.Network != "" || got.Reason != "" {
		t.Fatalf("upgraded sandbox = %+v, %v", got, err)
	}
}

func TestReadOnlyIsUnavailable(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "nimbus.db")
	rw := openT(t, path)
	kept := session(lease.NewID())
	if err := rw.CreateSession(t.Context(), kept, openEvent(kept), nil); err != nil {
		t.Fatal(err)
	}
	if err := rw.Close(); err != nil {
		t.Fatal(err)
	}

	ro, err := store.OpenReadOnlyForTest(path)
	if err != nil {
		t.Fatalf("opening a current database read-only must work (no migration to write): %v", err)
	}
	t.Cleanup(func() { _ = ro.Close() })
	if _, err := ro.GetSession(t.Context(), "demo", kept.ID); err != nil {
		t.Errorf("read on a read-only store: %v", err)
	}
	if err := ro.Ping(t.Context()); err != nil {
		t.Errorf("Ping: %v", err)
	}
	s := session(lease.NewID())
	at := lease.Millis(time.Now())
	for name, err := range map[string]error{
		"CreateSession": ro.CreateSession(t.Context(), s, openEvent(s), nil),
		"AppendAudit":   ro.AppendAudit(t.Context(), openEvent(s)),
		"CloseSession": func() error {
			_, err := ro.CloseSession(t.Context(), lease.CloseRequest{TenantID: "demo", ID: kept.ID, At: at}, openEvent(kept))
			return err
		}(),
		"PutService": func() error {
			_, _, err := ro.PutService(t.Context(), targets.Service{TenantID: "demo", Name: "x", Kind: targets.KindBuiltin})
			return err
		}(),
	} {
		if problem.CodeOf(err) != problem.Unavailable {
			t.Errorf("%s on a read-only database = %v, want unavailable", name, err)
			continue
		}
		var se *sqlite.Error
		if !errors.As(err, &se) || se.Code()&0xff != sqlite3.SQLITE_READONLY {
			t.Errorf("%s: cause %v, want SQLITE_READONLY kept in the chain", name, err)
		}
	}
}

func TestLockedIsUnavailable(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "nimbus.db")
	s, err := store.OpenBusyTimeoutForTest(path, 50*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	// Another process (here: handle) holds the write lock.
	other, err := sql.Open("sqlite", path)
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	conn, err := other.Conn(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := conn.ExecContext(t.Context(), `BEGIN IMMEDIATE`); err != nil {
		t.Fatal(err)
	}
	ses := session(lease.NewID())
	err = s.CreateSession(t.Context(), ses, openEvent(ses), nil)
	if problem.CodeOf(err) != problem.Unavailable {
		t.Errorf("CreateSession while locked = %v, want unavailable", err)
	}
	if _, err := conn.ExecContext(t.Context(), `ROLLBACK`); err != nil {
		t.Fatal(err)
	}
	if err := s.CreateSession(t.Context(), ses, openEvent(ses), nil); err != nil {
		t.Errorf("CreateSession once unlocked: %v", err)
	}
}

func TestClosedIsUnavailable(t *testing.T) {
	t.Parallel()
	s, err := store.OpenSQLite(filepath.Join(t.TempDir(), "nimbus.db"))
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	ses := session(lease.NewID())
	if err := s.CreateSession(t.Context(), ses, openEvent(ses), nil); problem.CodeOf(err) != problem.Unavailable {
		t.Errorf("CreateSession after Close = %v", err)
	}
	if _, err := s.GetSession(t.Context(), "demo", ses.ID); problem.CodeOf(err) != problem.Unavailable {
		t.Errorf("GetSession after Close = %v", err)
	}
	if err := s.Ping(t.Context()); problem.CodeOf(err) != problem.Unavailable {
		t.Errorf("Ping after Close = %v", err)
	}
}

// A failing op in a group commit is rolled back alone: the others of its
// batch commit.
func TestGroupCommitIsolatesFailures(t *testing.T) {
	t.Parallel()
	s := openT(t, filepath.Join(t.TempDir(), "nimbus.db"))
	ctx := t.Context()
	if _, _, err := s.PutService(ctx, targets.Service{TenantID: "demo", Name: "worker", Kind: targets.KindBuiltin}); err != nil {
		t.Fatal(err)
	}
	const n = 200
	errs := make(chan error, n)
	good := make([]string, 0, n)
	for i := range n {
		ses := session(lease.NewID())
		cond := &lease.Precondition{TenantID: "demo", Service: "worker", Generation: 1}
		if i%2 == 1 {
			cond.Generation = 7 // fails
		} else {
			good = append(good, ses.ID)
		}
		go func() { errs <- s.CreateSession(ctx, ses, openEvent(ses), cond) }()
	}
	failed := 0
	for range n {
		if err := <-errs; err != nil {
			if problem.CodeOf(err) != problem.TargetChanged {
				t.Fatalf("unexpected error %v", err)
			}
			failed++
		}
	}
	if failed != n/2 {
		t.Errorf("%d failed, want %d", failed, n/2)
	}
	for _, id := range good {
		if _, err := s.GetSession(ctx, "demo", id); err != nil {
			t.Errorf("session %s of a batch with failures: %v", id, err)
		}
	}
	if c, err := s.CountOpen(ctx, "demo", time.Now()); err != nil || c != n/2 {
		t.Errorf("CountOpen = %d, %v; want %d", c, err, n/2)
	}
	evs, _, err := s.ListAudit(ctx, lease.AuditQuery{TenantID: "demo", PageSize: 500})
	if err != nil || len(evs) != n/2 {
		t.Errorf("audit events = %d, %v; want %d", len(evs), err, n/2)
	}
}
