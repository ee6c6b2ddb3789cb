package store

import (
	"context"
	"errors"
	"strings"

	"github.com/nimbus/gateway/problem"
	"modernc.org/sqlite"
	sqlite3 "modernc.org/sqlite/lib"
)

// storeErr maps a database failure to the catalog, once, at the boundary.
// A *problem.Error passes through unchanged. Failures that mean the database
// cannot be reached or written (read-only file, full disk, I/O error, lock
// held past busy_timeout) are Unavailable, which /readyz and clients can act
// on; anything else is Internal, a bug to find in the logs.
func storeErr(err error, detail string) error {
	if err == nil {
		return nil
	}
	var pe *problem.Error
	if errors.As(err, &pe) {
		return pe
	}
	if unavailable(err) {
		return problem.Wrap(problem.Unavailable, err, "store unavailable: "+detail)
	}
	return problem.Wrap(problem.Internal, err, detail)
}

// unavailable reports whether err is one of the SQLite result codes of an
// unusable database. Extended codes (SQLITE_IOERR_WRITE, SQLITE_READONLY_DBMOVED
// …) are matched by their primary code in the low byte.
func unavailable(err error) bool {
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return true
	}
	var se *sqlite.Error
	if errors.As(err, &se) {
		switch se.Code() & 0xff {
		case sqlite3.SQLITE_READONLY, sqlite3.SQLITE_FULL, sqlite3.SQLITE_IOERR,
			sqlite3.SQLITE_CANTOPEN, sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED,
			sqlite3.SQLITE_PERM:
			return true
		}
	}
	// Some paths (e.g. a failed connection setup) surface only the message.
	return strings.Contains(err.Error(), "database is locked")
}

// errClosed is returned by every method called after Close.
func errClosed() error {
	return problem.New(problem.Unavailable, "store is closed")
}
