package store_test

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/nimbus/gateway/problem"
	"github.com/nimbus/gateway/store"
	"github.com/nimbus/gateway/store/pgtest"
)

// writableChecker is what /readyz asks of either store.
type writableChecker interface {
	Ping(context.Context) error
	CheckWritable(context.Context) error
}

// wantUnwritable: the store answers reads (Ping) but CheckWritable says
// Unavailable, what /readyz must see (issue 12).
func wantUnwritable(t *testing.T, what string, s writableChecker) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := s.Ping(ctx); err != nil {
		t.Errorf("%s: Ping: %v (the store still reads)", what, err)
	}
	if err := s.CheckWritable(ctx); problem.CodeOf(err) != problem.Unavailable {
		t.Errorf("%s: CheckWritable = %v, want unavailable", what, err)
	}
}

// TestCheckWritableReadOnly: a database SQLite will not write, and a
// closed store, fail CheckWritable; a writable one passes it.
func TestCheckWritableReadOnly(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "nimbus.db")
	s, err := store.OpenSQLite(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.CheckWritable(t.Context()); err != nil {
		t.Fatalf("CheckWritable on a writable store: %v", err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.CheckWritable(t.Context()); problem.CodeOf(err) != problem.Unavailable {
		t.Errorf("CheckWritable after Close = %v, want unavailable", err)
	}
	ro, err := store.OpenReadOnlyForTest(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ro.Close() })
	wantUnwritable(t, "read-only", ro)
	if left, _ := filepath.Glob(filepath.Join(filepath.Dir(path), ".nimbus-probe-*")); len(left) > 0 {
		t.Errorf("probe files left behind: %v", left)
	}
}

// TestCheckWritableFullDisk puts the database on an 8 MiB tmpfs and fills
// it: Ping still succeeds, CheckWritable fails; once space is freed it
// passes again. Needs root (mount).
func TestCheckWritableFullDisk(t *testing.T) {
	t.Parallel()
	dir := smallTmpfs(t, "8m")
	s, err := store.OpenSQLite(filepath.Join(dir, "nimbus.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	if err := s.CheckWritable(t.Context()); err != nil {
		t.Fatalf("CheckWritable with room: %v", err)
	}
	filler := fillDisk(t, dir)
	wantUnwritable(t, "full disk", s)
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	if err := s.CheckWritable(t.Context()); err != nil {
		t.Errorf("CheckWritable once space is freed: %v", err)
	}
}

// TestCheckWritablePostgres: a database turned read-only (as a failover
// to a standby does) still answers Ping, and fails CheckWritable until
// it is writable again.
func TestCheckWritablePostgres(t *testing.T) {
	t.Parallel()
	url := pgtest.Start(t)
	s := openPG(t, url)
	if err := s.CheckWritable(t.Context()); err != nil {
		t.Fatalf("CheckWritable: %v", err)
	}
	readOnly := func(on bool) {
		v := "off"
		if on {
			v = "on"
		}
		conn, err := pgx.Connect(t.Context(), url)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close(context.Background())
		name := conn.Config().Database
		// The session's own default first: it connected to a database
		// that may be read-only already.
		for _, q := range []string{`SET default_transaction_read_only = off`, `ALTER DATABASE ` + pgx.Identifier{name}.Sanitize() + ` SET default_transaction_read_only = ` + v,
			`SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()`} {
			if _, err := conn.Exec(t.Context(), q); err != nil {
				t.Fatal(err)
			}
		}
	}
	readOnly(true)
	// The pool notices its connections were cut on first use.
	_ = s.Ping(t.Context())
	wantUnwritable(t, "read-only database", s)
	readOnly(false)
	_ = s.CheckWritable(t.Context())
	if err := s.CheckWritable(t.Context()); err != nil {
		t.Errorf("CheckWritable once writable again: %v", err)
	}
}

// smallTmpfs mounts a tmpfs of size under a new temp dir and unmounts it
// at cleanup; it skips unless the test may mount (root).
func smallTmpfs(t *testing.T, size string) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("mounting a small tmpfs to fill needs root")
	}
	dir := t.TempDir()
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size="+size, "tmpfs", dir).CombinedOutput(); err != nil {
		t.Skipf("cannot mount a tmpfs here: %v %s", err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("umount", dir).CombinedOutput(); err != nil {
			t.Errorf("umount %s: %v %s", dir, err, out)
		}
	})
	return dir
}

// fillDisk writes a file in dir until the file system is full and
// returns its path.
func fillDisk(t *testing.T, dir string) string {
	t.Helper()
	name := filepath.Join(dir, "filler")
	f, err := os.Create(name)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, 64<<10)
	for i := 0; i < 1<<16; i++ { // bounded: 4 GiB at most
		if _, err := f.Write(buf); err != nil {
			if !errors.Is(err, syscall.ENOSPC) && !strings.Contains(err.Error(), "no space") {
				t.Fatalf("filling %s: %v", dir, err)
			}
			return name
		}
	}
	t.Fatalf("%s did not fill up", dir)
	return ""
}
