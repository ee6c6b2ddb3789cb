package proxy

import (
	"context"

	"github.com/gorilla/mux"

	"github.com/nimbus/gateway/lease"
	"github.com/nimbus/gateway/problem"
)

// The browser service (SPEC §2, §5.3). Until the browser pool lands, a
// gateway has no browsers: opens on the browser service stop at
// provisioning with 503, as SPEC §4.1 step 7 says.

// provisionBrowser is step 7 of an open on the browser service: it takes a
// browser of the session's own and records it in sess.Snapshot.Backend.
func (s *Server) provisionBrowser(ctx context.Context, sess *lease.Session) error {
	return problem.New(problem.Unavailable, "the browser pool is not running on this gateway")
}

// releaseBrowser ends the browser of a session, if it has one. It is
// called when the session ends (close, expiry) or its open failed.
func (s *Server) releaseBrowser(sessionID string) {}

// attachBrowser finds the browser of a session for the cdp and page
// channels, before the upgrade.
func (s *Server) attachBrowser(sess *lease.Session, ch lease.Channel) (backend, error) {
	return nil, problem.New(problem.Unavailable, "channel %s is not served by this gateway", ch).With("channel", ch)
}

// browserRoutes adds the CDP discovery endpoints.
func (s *Server) browserRoutes(r *mux.Router) {}
