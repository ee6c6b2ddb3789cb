package store

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"

	"github.com/nimbus/gateway/problem"
)

// Issue 12: with the disk full, every open answered 503 "database or disk
// is full" while /readyz, which only read from the store, stayed 200, and
// load balancers kept sending traffic. Reading proves nothing about
// writing, and neither does a small write: SQLite appends commits to its
// WAL, which reuses the space it already has after a checkpoint, so a
// heartbeat row can commit on a full disk while an open, whose checkpoint
// must grow the database, fails. What proves that writes will commit is
// (1) room on the file system, shown by allocating it, and (2) a row
// write committed through the same path as an open's.

// Headroom is the space CheckWritable allocates beside a SQLite database
// to prove the file system has room: a full group-committed batch of opens
// (128 sessions and their events, their index pages, and the checkpoint
// that copies them into the database) fits in it several times over.
const Headroom = 4 << 20

// qProbe rewrites the newest schema_migrations row with its own values,
// on the one table every database of either store has, so the probe needs
// no migration. PostgreSQL writes a new row version for it, a real write
// and commit that changes nothing. SQLite does not: a cell overwritten
// with identical bytes leaves its page clean, and the commit writes
// nothing (it committed on a database made immutable), so there the row
// is moved by one and back (qProbeAway, then qProbeBack) in the
// transaction: the page is dirty, the commit must write it, and the data
// are as they were.
const (
	qProbe = `UPDATE schema_migrations SET applied_at = applied_at
	WHERE version = (SELECT MAX(version) FROM schema_migrations)`
	qProbeAway = `UPDATE schema_migrations SET applied_at = applied_at + 1
	WHERE version = (SELECT MAX(version) FROM schema_migrations)`
	qProbeBack = `UPDATE schema_migrations SET applied_at = applied_at - 1
	WHERE version = (SELECT MAX(version) FROM schema_migrations)`
)

// CheckWritable reports whether a write would commit now, for /readyz:
// Unavailable when the store is closed, its file system has less than
// Headroom free (allocated, then freed, in a file beside the database),
// or a row write through the writer, as an open's, fails or does not
// commit before ctx ends. It writes a few KiB to the WAL; call it at most
// about once a second.
func (s *SQLite) CheckWritable(ctx context.Context) error {
	if s.closed() {
		return errClosed()
	}
	var path string
	if err := s.queryRow(ctx, `SELECT file FROM pragma_database_list WHERE name = 'main'`).Scan(&path); err != nil {
		return storeErr(err, "probe: database path")
	}
	if err := checkRoom(filepath.Dir(path), Headroom); err != nil {
		return err
	}
	return s.exec(ctx, func(ctx context.Context, tx *wtx) error {
		if _, err := tx.ExecContext(ctx, qProbeAway); err != nil {
			return err
		}
		_, err := tx.ExecContext(ctx, qProbeBack)
		return err
	})
}

// CheckWritable reports whether a write would commit now, for /readyz:
// Unavailable when the store is closed or a row write (a transaction of
// its own) fails, as it does on a read-only database or a standby
// (Ping still succeeds on both) or with the server's disk full.
func (s *Postgres) CheckWritable(ctx context.Context) error {
	if s.closed() {
		return errClosed()
	}
	_, err := s.pool.Exec(ctx, qProbe)
	return pgErr(err, "probe write")
}

// checkRoom allocates n bytes in a new file in dir and removes it:
// Unavailable when the file system cannot give them (full, over quota,
// read-only). File systems without fallocate are asked for their free
// space instead.
func checkRoom(dir string, n int64) error {
	var rnd [6]byte
	_, _ = rand.Read(rnd[:])
	name := filepath.Join(dir, ".nimbus-probe-"+hex.EncodeToString(rnd[:]))
	f, err := os.OpenFile(name, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return problem.Wrap(problem.Unavailable, err, "store unavailable: cannot create a file beside the database")
	}
	defer os.Remove(name)
	defer f.Close()
	err = unix.Fallocate(int(f.Fd()), 0, 0, n)
	if errors.Is(err, unix.EOPNOTSUPP) {
		var st unix.Statfs_t
		if err = unix.Fstatfs(int(f.Fd()), &st); err == nil && int64(st.Bavail)*st.Bsize < n {
			err = unix.ENOSPC
		}
	}
	if err != nil {
		return problem.Wrap(problem.Unavailable, err, fmt.Sprintf("store unavailable: its file system cannot give %d MiB", n>>20)).
			With("check", "store_space")
	}
	return nil
}
