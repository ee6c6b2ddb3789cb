package proxy

import (
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/gorilla/mux"

	"github.com/nimbus/gateway/authn"
	"github.com/nimbus/gateway/lease"
	"github.com/nimbus/gateway/problem"
	"github.com/nimbus/gateway/targets"
)

// openSession is POST /v1/tenants/{tenant}/sessions: it authenticates
// (SPEC §4.1 step 1), decodes (step 2), and leaves the rest of the steps,
// in their order, to lease.Sessions.Open.
func (s *Server) openSession(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	p, err := s.authenticate(r)
	if err != nil {
		// Not audited in the tenant's store: an unauthenticated caller must
		// not be able to write into it. The access log keeps the attempt.
		s.metrics.openDenied.WithLabelValues(string(problem.CodeOf(err))).Inc()
		s.writeError(w, r, err)
		return
	}
	ev := s.event(r, p, lease.ActionOpen)
	sess, connect, kind, err := s.open(w, r, p, ev)
	if err != nil {
		s.metrics.openDenied.WithLabelValues(string(problem.CodeOf(err))).Inc()
		ev.Outcome, ev.Code = outcomeOf(err), string(problem.CodeOf(err))
		s.writeError(w, r, s.recordDenied(r.Context(), ev, err))
		return
	}
	s.logAudit(ev.withSession(sess))
	s.metrics.opened.WithLabelValues(string(kind)).Inc()
	s.metrics.openLatency.Observe(time.Since(start).Seconds())
	w.Header().Set("Location", r.URL.Path+"/"+sess.ID)
	writeJSON(w, http.StatusCreated, renderSession(sess, s.now(), connect))
}

// open decodes the body and opens the session through lease, minting its
// connect URLs just before the commit.
func (s *Server) open(w http.ResponseWriter, r *http.Request, p *authn.Principal, ev *auditEvent) (*lease.Session, map[string]string, targets.Kind, error) {
	if s.draining.Load() {
		return nil, nil, "", errDraining
	}
	body, err := readBody(w, r)
	if err != nil {
		return nil, nil, "", err
	}
	req, err := DecodeOpenRequest(body)
	if err != nil {
		return nil, nil, "", err
	}
	ev.Target = req.Target.String()
	var connect map[string]string
	sess, kind, err := s.lease.Open(r.Context(), lease.OpenRequest{
		TenantID: p.Tenant, Principal: p.Subject, Target: req.Target, Channels: req.Channels,
		RequestedTTLMs: req.RequestedTTLMs,
		Authorize:      func(t lease.Target) error { return authorizeTarget(p, t) },
		Prepare: func(sess *lease.Session) (err error) {
			connect, err = s.connectURLs(r, sess)
			return err
		},
		BeforeCommit: s.beforeCommit,
	}, ev.Event)
	if err != nil {
		return nil, nil, "", err
	}
	ev.Outcome = lease.Success
	return sess, connect, kind, nil
}

func (s *Server) getSession(w http.ResponseWriter, r *http.Request) {
	p, err := s.authenticate(r)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	ev := s.event(r, p, lease.ActionGet)
	ev.SessionID = mux.Vars(r)["id"]
	sess, err := s.sessions.GetSession(r.Context(), p.Tenant, ev.SessionID)
	if err == nil {
		ev.Target = sess.Target.String()
	}
	if err := s.recordLookup(r.Context(), ev, err); err != nil {
		s.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, renderSession(sess, s.now(), nil))
}

func (s *Server) listSessions(w http.ResponseWriter, r *http.Request) {
	p, err := s.authenticate(r)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	ev := s.event(r, p, lease.ActionList)
	q, err := listQuery(r.URL.Query(), p.Tenant, lease.Millis(s.now()))
	var items []*lease.Session
	var next *lease.Cursor
	if err == nil {
		items, next, err = s.sessions.ListSessions(r.Context(), q)
	}
	if err := s.recordLookup(r.Context(), ev, err); err != nil {
		s.writeError(w, r, err)
		return
	}
	now := s.now()
	out := struct {
		Items         []sessionJSON `json:"items"`
		NextPageToken string        `json:"nextPageToken,omitempty"`
	}{Items: make([]sessionJSON, 0, len(items))}
	for _, it := range items {
		out.Items = append(out.Items, renderSession(it, now, nil))
	}
	if next != nil {
		next.Filter = string(q.State)
		out.NextPageToken = next.Encode()
	}
	writeJSON(w, http.StatusOK, out)
}

// listQuery parses ?state=&pageSize=&pageToken=.
func listQuery(v url.Values, tenant string, now time.Time) (lease.ListQuery, error) {
	q := lease.ListQuery{TenantID: tenant, Now: now, State: lease.State(v.Get("state"))}
	if q.State != "" && !q.State.Valid() {
		return q, invalid("state", "state must be open, closed or expired")
	}
	size, err := pageSize(v)
	if err != nil {
		return q, err
	}
	q.PageSize = size
	q.After, err = lease.DecodeCursor(v.Get("pageToken"), string(q.State))
	return q, err
}

// pageSize parses ?pageSize=, 1–500; absent means the default.
func pageSize(v url.Values) (int, error) {
	raw := v.Get("pageSize")
	if raw == "" {
		return lease.PageSize(0), nil
	}
	n, err := strconv.Atoi(raw)
	if err != nil || n < 1 || n > 500 {
		return 0, invalid("pageSize", "pageSize must be an integer from 1 to 500")
	}
	return n, nil
}

func (s *Server) closeSession(w http.ResponseWriter, r *http.Request) {
	p, err := s.authenticate(r)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	ev := s.event(r, p, lease.ActionClose)
	ev.SessionID = mux.Vars(r)["id"]
	sess, closedNow, err := s.close(w, r, p, ev)
	if err != nil {
		ev.Outcome, ev.Code = outcomeOf(err), string(problem.CodeOf(err))
		s.writeError(w, r, s.recordDenied(r.Context(), ev, err))
		return
	}
	s.logAudit(ev.Event)
	if closedNow { // an idempotent repeat closes nothing
		s.metrics.closed.Inc()
	}
	writeJSON(w, http.StatusOK, renderSession(sess, s.now(), nil))
}

// maxReason bounds a close reason; it is stored and sent in close frames,
// whose reason must fit in 123 bytes with the "session closed: " prefix.
const maxReason = 100

// close closes the session of ev; closedNow is false when it was already
// closed (the idempotent case).
func (s *Server) close(w http.ResponseWriter, r *http.Request, p *authn.Principal, ev *auditEvent) (sess *lease.Session, closedNow bool, err error) {
	body, err := readBody(w, r)
	if err != nil {
		return nil, false, err
	}
	var req struct {
		Reason string `json:"reason"`
	}
	if len(strings.TrimSpace(string(body))) > 0 {
		if err := decodeStrict(body, &req); err != nil {
			return nil, false, err
		}
	}
	if req.Reason == "" {
		req.Reason = "closed"
	}
	if len(req.Reason) > maxReason {
		return nil, false, invalid("reason", "reason must be at most 100 bytes")
	}
	return s.lease.Close(r.Context(), lease.CloseRequest{
		TenantID: p.Tenant, ID: ev.SessionID, Reason: req.Reason, By: p.Subject, At: lease.Millis(s.now()),
	}, func(t lease.Target) error { return authorizeTarget(p, t) }, &ev.Event)
}

// mintConnect is POST …/sessions/{id}/connect: fresh URLs for an open
// session, e.g. after the client lost the ones from the open.
func (s *Server) mintConnect(w http.ResponseWriter, r *http.Request) {
	p, err := s.authenticate(r)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	ev := s.event(r, p, lease.ActionConnectURL)
	ev.SessionID = mux.Vars(r)["id"]
	sess, connect, err := s.mint(r, p, ev)
	if err != nil {
		ev.Outcome, ev.Code = outcomeOf(err), string(problem.CodeOf(err))
	}
	if aerr := s.recordLookup(r.Context(), ev, err); aerr != nil {
		s.writeError(w, r, aerr)
		return
	}
	writeJSON(w, http.StatusOK, renderSession(sess, s.now(), connect))
}

func (s *Server) mint(r *http.Request, p *authn.Principal, ev *auditEvent) (*lease.Session, map[string]string, error) {
	sess, err := s.sessions.GetSession(r.Context(), p.Tenant, ev.SessionID)
	if err != nil {
		return nil, nil, err
	}
	ev.Target = sess.Target.String()
	if err := authorizeTarget(p, sess.Target); err != nil {
		return nil, nil, err
	}
	if st := sess.StateAt(s.now()); st != lease.Open {
		return nil, nil, errNotOpen(sess.ID, st)
	}
	connect, err := s.connectURLs(r, sess)
	return sess, connect, err
}

func errNotOpen(id string, st lease.State) error {
	return problem.New(problem.SessionNotOpen, "session %s is %s", id, st).With("state", st)
}

// connectURLs signs one URL per channel of sess (SPEC §5): a bearer
// credential for one session and one channel that dies with the session.
// A session whose backends live on one replica gets URLs of that replica
// (its --public-url); any replica also relays to it.
func (s *Server) connectURLs(r *http.Request, sess *lease.Session) (map[string]string, error) {
	base := s.wsBase(r)
	if sess.Owner != "" {
		base = wsURL(sess.Owner)
	}
	out := make(map[string]string, len(sess.Channels))
	for _, c := range sess.Channels {
		tok, err := s.connectKeys.Sign(authn.ConnectClaims{
			SessionID: sess.ID, Tenant: sess.TenantID, Channel: string(c), ExpiresAt: sess.ExpiresAt,
		})
		if err != nil {
			return nil, problem.Wrap(problem.Internal, err, "signing a connect URL failed")
		}
		out[string(c)] = base + "/v1/connect/" + sess.ID + "/" + string(c) + "?token=" + url.QueryEscape(tok)
	}
	return out, nil
}

// wsBase is the ws(s)://host of minted URLs: --public-url when set, else
// the Host the client used, so URLs work through whatever name it dialled.
func (s *Server) wsBase(r *http.Request) string {
	if s.publicURL != "" {
		return wsURL(s.publicURL)
	}
	scheme := "ws"
	if r.TLS != nil || strings.EqualFold(r.Header.Get("X-Forwarded-Proto"), "https") {
		scheme = "wss"
	}
	return scheme + "://" + r.Host
}

// wsURL turns an http(s) base URL into the ws(s) one.
func wsURL(base string) string {
	u := strings.TrimRight(base, "/")
	switch {
	case strings.HasPrefix(u, "https://"):
		return "wss://" + strings.TrimPrefix(u, "https://")
	case strings.HasPrefix(u, "http://"):
		return "ws://" + strings.TrimPrefix(u, "http://")
	}
	return u
}

// decodeJSON is decodeStrict over a size-limited request body.
func decodeJSON(w http.ResponseWriter, r *http.Request, v any) error {
	body, err := readBody(w, r)
	if err != nil {
		return err
	}
	return decodeStrict(body, v)
}
