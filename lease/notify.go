package lease

import (
	"context"
	"time"
)

// SessionEnd is a session that stopped being open: closed through the API or
// expired.
type SessionEnd struct {
	TenantID  string
	SessionID string
	// State is Closed or Expired.
	State State
	// Reason is the close reason ("" for an expiry). Stores may shorten a
	// very long one.
	Reason string
	// At is when the session ended: closedAt for a close, expiresAt for an
	// expiry.
	At time.Time
	// RecordedAt is when this replica's Expirer recorded an expiry (zero
	// for anything else): At to RecordedAt is the expiry's lag.
	RecordedAt time.Time
}

// Notifier is implemented by stores that can tell every replica about
// session ends, so that a close on one replica disconnects the session's
// connections on all of them (SPEC §5). A single-node store need not
// implement it: its own replica already knows.
type Notifier interface {
	// WatchEnds calls fn for every session end committed by any replica,
	// from the moment it returns until ctx ends. After a lost listener
	// connection it reconnects and replays the ends it may have missed (a
	// catch-up query over the ends recorded since the last one seen), so no
	// close is ever missed; duplicates are allowed (fn must be idempotent).
	//
	// fn is called from one goroutine, in commit order as far as the store
	// can tell; it should not block for long, since ends queue behind it.
	WatchEnds(ctx context.Context, fn func(SessionEnd)) error
}
