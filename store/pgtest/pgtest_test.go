package pgtest_test

import (
	"context"
	"os"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/nimbus/gateway/store/pgtest"
)

func TestStartGivesIsolatedDatabases(t *testing.T) {
	a, b := pgtest.Start(t), pgtest.Start(t)
	if a == b {
		t.Fatalf("two Starts returned the same database %s", a)
	}
	conn, err := pgx.Connect(t.Context(), a)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = conn.Close(context.Background()) }()
	if _, err := conn.Exec(t.Context(), `CREATE TABLE only_in_a (x int)`); err != nil {
		t.Fatal(err)
	}
	other, err := pgx.Connect(t.Context(), b)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = other.Close(context.Background()) }()
	var found bool
	if err := other.QueryRow(t.Context(), `SELECT to_regclass('only_in_a') IS NOT NULL`).Scan(&found); err != nil || found {
		t.Errorf("table of one database visible in the other: %v, %v", found, err)
	}
}

// TestMain shows the TestMain-friendly Stop: the server goes at once rather
// than when the binary exits.
func TestMain(m *testing.M) {
	code := m.Run()
	pgtest.Stop()
	os.Exit(code)
}
