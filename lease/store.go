package lease

import (
	"context"
	"time"
)

// Store persists sessions and their audit events. A change and the event
// recording it commit in one transaction, so the audit trail never misses
// an open or a close that happened, nor records one that did not.
//
// Errors are *problem.Error: NotFound for an unknown session (or one of
// another tenant), TargetChanged for a failed Precondition, SessionNotOpen
// for a close of an expired session, Unavailable when the store cannot
// write. Implementations are safe for concurrent use.
type Store interface {
	// CreateSession inserts s and ev. When cond is not nil it is checked in
	// the same transaction and nothing is written if it fails.
	CreateSession(ctx context.Context, s *Session, ev Event, cond *Precondition) error
	// GetSession returns the stored session; callers read its state with
	// StateAt.
	GetSession(ctx context.Context, tenantID, id string) (*Session, error)
	// ListSessions returns one page, newest first (createdAt, then id,
	// descending), and the cursor of the next page (nil on the last).
	ListSessions(ctx context.Context, q ListQuery) ([]*Session, *Cursor, error)
	// CloseSession closes an open session at c.At with ev. Closing a closed
	// session returns it unchanged (first reason kept) and still records
	// ev; closing one that is expired at c.At is SessionNotOpen.
	CloseSession(ctx context.Context, c CloseRequest, ev Event) (*Session, error)
	// ExpireSession records the expiry of an open session whose expiresAt
	// is at or before at, with ev. It reports false when there was nothing
	// to record (already closed, expired, or not yet due).
	ExpireSession(ctx context.Context, tenantID, id string, at time.Time, ev Event) (bool, error)
	// DueSessions returns up to limit sessions still stored as open, in
	// expiresAt order, earliest first: the Expirer's work list.
	DueSessions(ctx context.Context, limit int) ([]*Session, error)
	// CountOpen counts the tenant's sessions that are open at now.
	CountOpen(ctx context.Context, tenantID string, now time.Time) (int, error)
	// OpenByTenant counts the sessions open at now of every tenant that
	// has any (the open-sessions gauge).
	OpenByTenant(ctx context.Context, now time.Time) (map[string]int, error)
	// AppendAudit stores events that do not accompany a change (denied
	// opens, lookups, connects).
	AppendAudit(ctx context.Context, evs ...Event) error
	// ListAudit returns one page of audit events, newest first.
	ListAudit(ctx context.Context, q AuditQuery) ([]Event, *Cursor, error)
}

// Precondition is checked inside CreateSession's transaction: the named
// service must still have Generation, else TargetChanged (SPEC §4.1 step 8).
type Precondition struct {
	TenantID   string
	Service    string
	Generation int64
}

// CloseRequest asks to close one session.
type CloseRequest struct {
	TenantID string
	ID       string
	Reason   string
	By       string
	At       time.Time
}

// ListQuery selects sessions of one tenant.
type ListQuery struct {
	TenantID string
	// State filters by the state as read at Now ("" = all): open excludes
	// sessions past expiresAt, expired includes them.
	State    State
	Now      time.Time
	PageSize int
	After    *Cursor
}
