package store

import (
	"context"
	"errors"
	"io"
	"net"
	"strings"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/nimbus/gateway/problem"
)

// pgErr maps a PostgreSQL failure to the catalog, once, at the boundary,
// as storeErr does for SQLite. A *problem.Error passes through unchanged.
// Failures that mean the database cannot be reached or written are
// Unavailable; anything else is Internal, a bug to find in the logs.
func pgErr(err error, detail string) error {
	if err == nil {
		return nil
	}
	var pe *problem.Error
	if errors.As(err, &pe) {
		return pe
	}
	if pgUnavailable(err) {
		return problem.Wrap(problem.Unavailable, err, "store unavailable: "+detail)
	}
	return problem.Wrap(problem.Internal, err, detail)
}

// pgUnavailable reports whether err says the database cannot serve now,
// rather than that the request was wrong.
func pgUnavailable(err error) bool {
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return true
	}
	var pg *pgconn.PgError
	if errors.As(err, &pg) {
		switch {
		case pg.Code == "25006": // read_only_sql_transaction: a read-only database or a standby
			return true
		case strings.HasPrefix(pg.Code, "08"): // connection_exception
			return true
		case strings.HasPrefix(pg.Code, "53"): // insufficient_resources: disk_full, out_of_memory, too_many_connections
			return true
		case strings.HasPrefix(pg.Code, "57P"): // admin_shutdown, crash_shutdown, cannot_connect_now
			return true
		case pg.Code == "40001", pg.Code == "40P01": // serialization_failure, deadlock_detected: retryable
			return true
		case pg.Code == "55P03", pg.Code == "57014": // lock_not_available, query_canceled (statement_timeout)
			return true
		}
		return false
	}
	var ce *pgconn.ConnectError
	if errors.As(err, &ce) {
		return true
	}
	var ne net.Error
	if errors.As(err, &ne) {
		return true
	}
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, net.ErrClosed) {
		return true
	}
	// A connection that died mid-query; pgconn marks what never reached the
	// server as safe to retry.
	return pgconn.SafeToRetry(err) || pgconn.Timeout(err) || strings.Contains(err.Error(), "conn closed") ||
		strings.Contains(err.Error(), "closed pool")
}

// pgCode is the SQLSTATE of err, "" when it is not a server error.
func pgCode(err error) string {
	var pg *pgconn.PgError
	if errors.As(err, &pg) {
		return pg.Code
	}
	return ""
}
