package proxy

import (
	"context"

	"github.com/nimbus/gateway/channels"
	"github.com/nimbus/gateway/lease"
)

// WatchEnds makes session ends committed by any replica sharing the store
// cut this gateway's connections of those sessions (SPEC §5: a close on one
// replica disconnects the session everywhere). It returns once n listens,
// and keeps watching until ctx ends. Ends of this replica's own closes
// arrive too; handling them again is harmless.
func (s *Server) WatchEnds(ctx context.Context, n lease.Notifier) error {
	return n.WatchEnds(ctx, s.lease.End)
}

// sessionEnded is told of every session end (lease.Sessions.OnEnd), after
// what the session held was given back: it cuts the session's local
// connections with the close code of how it ended and feeds the
// expiry-lag metric. It only signals connections (their handlers close
// them), so it returns at once.
func (s *Server) sessionEnded(end lease.SessionEnd) {
	if !end.RecordedAt.IsZero() {
		s.metrics.expiryLag.Observe(end.RecordedAt.Sub(end.At).Seconds())
	}
	var cause *channels.CloseError
	switch end.State {
	case lease.Expired:
		cause = causeExpired
	default:
		cause = causeClosed(end.Reason)
	}
	s.conns.closeSession(end.SessionID, cause)
}
