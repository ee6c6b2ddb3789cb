package store_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/nimbus/gateway/lease"
	"github.com/nimbus/gateway/problem"
	"github.com/nimbus/gateway/store"
	"github.com/nimbus/gateway/store/pgtest"
	"github.com/nimbus/gateway/store/storetest"
	"github.com/nimbus/gateway/targets"
)

func TestPostgresConformance(t *testing.T) {
	storetest.Run(t, func(t *testing.T) storetest.Stores {
		return openPGStores(t, pgtest.Start(t))
	})
}

// openPGStores opens url and closes it at cleanup; Reopen closes it first.
func openPGStores(t *testing.T, url string) storetest.Stores {
	t.Helper()
	s := openPG(t, url)
	return storetest.Stores{
		Sessions: s,
		Catalog:  s,
		Reopen: func(t *testing.T) storetest.Stores {
			if err := s.Close(); err != nil {
				t.Fatalf("Close: %v", err)
			}
			return openPGStores(t, url)
		},
	}
}

func openPG(t testing.TB, url string) *store.Postgres {
	t.Helper()
	s, err := store.OpenPostgres(t.Context(), url)
	if err != nil {
		t.Fatalf("OpenPostgres: %v", err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

// execSQL runs one statement on its own connection to url.
func execSQL(t *testing.T, url, sql string) {
	t.Helper()
	conn, err := pgx.Connect(t.Context(), url)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = conn.Close(context.Background()) }()
	if _, err := conn.Exec(t.Context(), sql); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
}

func TestPostgresConcurrentMigrations(t *testing.T) {
	t.Parallel()
	url := pgtest.Start(t)
	const replicas = 4
	var wg sync.WaitGroup
	stores := make([]*store.Postgres, replicas)
	errs := make([]error, replicas)
	start := make(chan struct{})
	for i := range replicas {
		wg.Go(func() {
			<-start
			stores[i], errs[i] = store.OpenPostgres(t.Context(), url)
		})
	}
	close(start)
	wg.Wait()
	for i, s := range stores {
		if errs[i] != nil {
			t.Errorf("replica %d: OpenPostgres: %v", i, errs[i])
			continue
		}
		t.Cleanup(func() { _ = s.Close() })
		if v, err := s.SchemaVersionForTest(t.Context()); err != nil || v != store.PostgresMigrationsForTest {
			t.Errorf("replica %d: schema version %d, %v; want %d", i, v, err, store.PostgresMigrationsForTest)
		}
	}
	if t.Failed() {
		return
	}
	// Each applied once: every replica writes and sees the others' writes.
	for i, s := range stores {
		if err := s.CreateSession(t.Context(), session(fmt.Sprintf("ses_%d", i)), openEvent(session("x")), nil); err != nil {
			t.Fatalf("replica %d: CreateSession: %v", i, err)
		}
	}
	if n, err := stores[0].CountOpen(t.Context(), "demo", time.Now()); err != nil || n != replicas {
		t.Errorf("CountOpen = %d, %v; want %d", n, err, replicas)
	}
}

func TestPostgresReadOnlyIsUnavailable(t *testing.T) {
	t.Parallel()
	url := pgtest.Start(t)
	rw := openPG(t, url)
	open := session(lease.NewID())
	if err := rw.CreateSession(t.Context(), open, openEvent(open), nil); err != nil {
		t.Fatal(err)
	}
	execSQL(t, url, `DO $$ BEGIN EXECUTE format('ALTER DATABASE %I SET default_transaction_read_only = on', current_database()); END $$`)

	// New connections are read-only; a current schema is only read, so the
	// store still opens, and reads still work.
	ro := openPG(t, url)
	if _, err := ro.GetSession(t.Context(), "demo", open.ID); err != nil {
		t.Fatalf("GetSession on a read-only database: %v", err)
	}
	s := session(lease.NewID())
	writes := map[string]error{
		"CreateSession": ro.CreateSession(t.Context(), s, openEvent(s), nil),
		"CreateSession with precondition": ro.CreateSession(t.Context(), s, openEvent(s),
			&lease.Precondition{TenantID: "demo", Service: "worker", Generation: 1}),
		"AppendAudit": ro.AppendAudit(t.Context(), openEvent(s)),
	}
	_, writes["CloseSession"] = ro.CloseSession(t.Context(), lease.CloseRequest{TenantID: "demo", ID: open.ID, At: time.Now()}, openEvent(open))
	_, writes["ExpireSession"] = ro.ExpireSession(t.Context(), "demo", open.ID, open.ExpiresAt, openEvent(open))
	_, _, writes["PutService"] = ro.PutService(t.Context(), targets.Service{TenantID: "demo", Name: "w", Kind: targets.KindBuiltin})
	_, writes["CreateSandbox"] = ro.CreateSandbox(t.Context(), targets.Sandbox{TenantID: "demo", ID: "sbx", Command: []string{"sh"}})
	for name, err := range writes {
		if problem.CodeOf(err) != problem.Unavailable {
			t.Errorf("%s on a read-only database: %v (code %q), want unavailable", name, err, problem.CodeOf(err))
		}
	}
}

func TestPostgresErrorMapping(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		err  error
		want problem.Code
	}{
		{&pgconn.PgError{Code: "25006"}, problem.Unavailable}, // read_only_sql_transaction
		{&pgconn.PgError{Code: "53100"}, problem.Unavailable}, // disk_full
		{&pgconn.PgError{Code: "53300"}, problem.Unavailable}, // too_many_connections
		{&pgconn.PgError{Code: "57P01"}, problem.Unavailable}, // admin_shutdown
		{&pgconn.PgError{Code: "08006"}, problem.Unavailable}, // connection_failure
		{&pgconn.PgError{Code: "40001"}, problem.Unavailable}, // serialization_failure
		{fmt.Errorf("read: %w", io.ErrUnexpectedEOF), problem.Unavailable},
		{context.DeadlineExceeded, problem.Unavailable},
		{&pgconn.PgError{Code: "23505"}, problem.Internal}, // unique_violation: a bug
		{&pgconn.PgError{Code: "42601"}, problem.Internal}, // syntax_error
		{errors.New("boom"), problem.Internal},
		{problem.New(problem.NotFound, "x"), problem.NotFound},
	} {
		if got := problem.CodeOf(store.PGErrForTest(tc.err)); got != tc.want {
			t.Errorf("pgErr(%v) = %q, want %q", tc.err, got, tc.want)
		}
	}
}

func TestPostgresServerGoneIsUnavailable(t *testing.T) {
	t.Parallel()
	// Nothing listens there: the store cannot open.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	_ = l.Close()
	_, err = store.OpenPostgres(t.Context(), fmt.Sprintf("postgres://postgres@127.0.0.1:%d/x?connect_timeout=2", port))
	if problem.CodeOf(err) != problem.Unavailable {
		t.Errorf("OpenPostgres of an unreachable server: %v, want unavailable", err)
	}

	// The server drops every connection of an open store (a restart, a
	// failover): calls fail as Unavailable, never Internal, until pgx has
	// reconnected.
	url := pgtest.Start(t)
	s := openPG(t, url)
	open := session(lease.NewID())
	if err := s.CreateSession(t.Context(), open, openEvent(open), nil); err != nil {
		t.Fatal(err)
	}
	execSQL(t, url, `SELECT pg_terminate_backend(pid) FROM pg_stat_activity
		WHERE datname = current_database() AND pid <> pg_backend_pid()`)
	for range 5 {
		if _, err := s.GetSession(t.Context(), "demo", open.ID); err != nil && problem.CodeOf(err) != problem.Unavailable {
			t.Fatalf("GetSession after the server dropped the connection: %v, want unavailable", err)
		}
	}
	if _, err := s.GetSession(t.Context(), "demo", open.ID); err != nil {
		t.Errorf("GetSession after reconnecting: %v", err)
	}
}

// TestPostgresMigrationKeepsSandboxes is TestMigrationKeepsSandboxes on
// PostgreSQL.
func TestPostgresMigrationKeepsSandboxes(t *testing.T) {
	t.Parallel()
	url := pgtest.Start(t)
	execSQL(t, url, `CREATE TABLE schema_migrations (version integer PRIMARY KEY, applied_at bigint NOT NULL)`)
	for _, q := range store.PostgresMigrationsUpToForTest(3) {
		execSQL(t, url, q)
	}
	execSQL(t, url, `INSERT INTO schema_migrations (version, applied_at) VALUES (1, 0), (2, 0), (3, 0)`)
	execSQL(t, url, `INSERT INTO sandboxes (tenant_id, id, state, generation, command, tty, env, root, error, updated_at, uid)
		VALUES ('demo', 'old', 'failed', 4, '["sh"]', false, 'null', '/r', 'exit status 1', 1000, 200001)`)

	s := openPG(t, url)
	if v, err := s.SchemaVersionForTest(t.Context()); err != nil || v != store.PostgresMigrationsForTest {
		t.Fatalf("schema version %d, %v; want %d", v, err, store.PostgresMigrationsForTest)
	}
	got, err := s.GetSandbox(t.Context(), "demo", "old")
	if err != nil || got.State != targets.Failed || got.Generation != 4 || got.Error != "exit status 1" || got.UID != 200001 ||
		got.Resources != (targets.Resources{}) || got.Network != "" || got.Reason != "" {
		t.Fatalf("upgraded sandbox = %+v, %v", got, err)
	}
}

func TestPostgresCreateSandboxRace(t *testing.T) {
	t.Parallel()
	url := pgtest.Start(t)
	replicas := []*store.Postgres{openPG(t, url), openPG(t, url)}
	const n = 16
	var wg sync.WaitGroup
	errs := make([]error, n)
	start := make(chan struct{})
	for i := range n {
		wg.Go(func() {
			<-start
			_, errs[i] = replicas[i%2].CreateSandbox(t.Context(), targets.Sandbox{TenantID: "demo", ID: "sbx-race", Command: []string{"sh"}})
		})
	}
	close(start)
	wg.Wait()
	created := 0
	for _, err := range errs {
		switch problem.CodeOf(err) {
		case "":
			created++
		case problem.AlreadyExists:
		default:
			t.Errorf("CreateSandbox: %v, want success or already_exists", err)
		}
	}
	if created != 1 {
		t.Errorf("%d of %d concurrent creates succeeded, want exactly 1", created, n)
	}
}

// TestPostgresPreconditionWaitsForServiceChange holds an uncommitted change
// of the service's generation, under the service's lock as PutService does,
// while an open checks
// its precondition: the open must wait for it and then fail, not pass on the
// old generation and commit alongside the change.
func TestPostgresPreconditionWaitsForServiceChange(t *testing.T) {
	t.Parallel()
	url := pgtest.Start(t)
	s := openPG(t, url)
	if _, _, err := s.PutService(t.Context(), targets.Service{TenantID: "demo", Name: "worker", Kind: targets.KindBuiltin, Dynamic: true}); err != nil {
		t.Fatal(err)
	}
	conn, err := pgx.Connect(t.Context(), url)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = conn.Close(context.Background()) }()
	tx, err := conn.Begin(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if err := store.LockServiceForTest(t.Context(), tx, "demo", "worker"); err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(t.Context(), `UPDATE services SET generation = 2 WHERE tenant_id = 'demo' AND name = 'worker'`); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	sess := session(lease.NewID())
	go func() {
		done <- s.CreateSession(t.Context(), sess, openEvent(sess), &lease.Precondition{TenantID: "demo", Service: "worker", Generation: 1})
	}()
	select {
	case err := <-done:
		t.Fatalf("CreateSession returned %v while the service change was uncommitted; want it to wait", err)
	case <-time.After(200 * time.Millisecond):
	}
	if err := tx.Commit(t.Context()); err != nil {
		t.Fatal(err)
	}
	if err := <-done; problem.CodeOf(err) != problem.TargetChanged {
		t.Fatalf("CreateSession = %v, want target_changed", err)
	}
	if _, err := s.GetSession(t.Context(), "demo", sess.ID); problem.CodeOf(err) != problem.NotFound {
		t.Errorf("session of the failed open was stored: %v", err)
	}
}

func TestPostgresClosedStore(t *testing.T) {
	t.Parallel()
	s := openPG(t, pgtest.Start(t))
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	sess := session(lease.NewID())
	for name, err := range map[string]error{
		"Ping":          s.Ping(t.Context()),
		"CreateSession": s.CreateSession(t.Context(), sess, openEvent(sess), nil),
		"WatchEnds":     s.WatchEnds(t.Context(), func(lease.SessionEnd) {}),
	} {
		if problem.CodeOf(err) != problem.Unavailable {
			t.Errorf("%s after Close: %v, want unavailable", name, err)
		}
	}
}
