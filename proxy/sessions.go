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

// openRetryAfter is the Retry-After of a tenant at its open-session limit:
// sessions end by close or expiry, and a few seconds is long enough not to
// hammer the gateway and short enough to notice a freed slot.
const openRetryAfter = 5 * time.Second

// openSession is POST /v1/tenants/{tenant}/sessions. Its checks run in the
// order of SPEC §4.1, and the first failure wins.
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
	s.openCounts.add(p.Tenant, 1)
	s.metrics.opened.WithLabelValues(string(kind)).Inc()
	s.metrics.openLatency.Observe(time.Since(start).Seconds())
	if s.expirer != nil {
		s.expirer.Notify(sess.ExpiresAt)
	}
	w.Header().Set("Location", r.URL.Path+"/"+sess.ID)
	writeJSON(w, http.StatusCreated, renderSession(sess, s.now(), connect))
}

// open runs steps 2–8 of SPEC §4.1 and commits the session with ev.
func (s *Server) open(w http.ResponseWriter, r *http.Request, p *authn.Principal, ev *auditEvent) (*lease.Session, map[string]string, targets.Kind, error) {
	ctx := r.Context()
	if s.draining.Load() {
		return nil, nil, "", errDraining
	}
	// 2. A well-formed body.
	body, err := readBody(w, r)
	if err != nil {
		return nil, nil, "", err
	}
	req, err := DecodeOpenRequest(body)
	if err != nil {
		return nil, nil, "", err
	}
	ev.Target = req.Target.String()
	ttl, err := s.ttl.Grant(req.RequestedTTLMs)
	if err != nil {
		return nil, nil, "", err
	}
	// 3. Authorization.
	if err := authorizeTarget(p, req.Target); err != nil {
		return nil, nil, "", err
	}
	// 4. The target exists and is ready.
	res, err := s.catalog.Resolve(ctx, p.Tenant, req.Target)
	if err != nil {
		return nil, nil, "", err
	}
	// 5. The target offers every requested channel.
	if err := checkChannels(req.Channels, res.Offered); err != nil {
		return nil, nil, "", err
	}
	now := lease.Millis(s.now())
	// 6. Limits.
	n, err := s.openCounts.get(ctx, p.Tenant, now)
	if err != nil {
		return nil, nil, "", err
	}
	if n >= s.maxOpen {
		e := problem.New(problem.ResourceExhausted, "tenant %s has %d open sessions, the limit", p.Tenant, n).
			With("limit", s.maxOpen)
		e.RetryAfter = openRetryAfter
		return nil, nil, "", e
	}
	// 8 (prepared). The session as it will be committed.
	sess := &lease.Session{
		ID: lease.NewID(), TenantID: p.Tenant, CreatedAt: now, CreatedBy: p.Subject,
		Target: req.Target, Channels: req.Channels, RequestedTTLMs: req.RequestedTTLMs,
		TTL: ttl, ExpiresAt: now.Add(ttl), State: lease.Open,
		Snapshot: lease.Snapshot{Generation: res.Generation, Backend: res.Backend},
	}
	if s.publicURL != "" && (res.Kind == targets.KindSandbox || res.Kind == targets.KindBrowser) {
		// The workload or browser runs on this replica: its connections
		// are served here, and other replicas relay to it.
		sess.Owner = s.publicURL
	}
	if res.Service != nil {
		sess.Snapshot.Service = res.Service.Name
	}
	if res.Sandbox != nil {
		sess.Snapshot.Sandbox = res.Sandbox.ID
	}
	// 7. Provisioning.
	if res.Kind == targets.KindBrowser {
		if err := s.provisionBrowser(ctx, sess); err != nil {
			return nil, nil, "", err
		}
	}
	// 8. Commit, with the generation seen at step 4 as a precondition for
	// dynamic services. A failed commit gives back what step 7 took.
	var cond *lease.Precondition
	if res.Dynamic && res.Service != nil {
		cond = &lease.Precondition{TenantID: p.Tenant, Service: res.Service.Name, Generation: res.Generation}
	}
	if s.beforeCommit != nil {
		s.beforeCommit()
	}
	connect, err := s.connectURLs(r, sess)
	if err != nil {
		return nil, nil, "", err
	}
	ev.Outcome = lease.Success
	if err := s.sessions.CreateSession(ctx, sess, ev.withSession(sess), cond); err != nil {
		if res.Kind == targets.KindBrowser {
			s.releaseBrowser(sess.ID)
		}
		return nil, nil, "", err
	}
	return sess, connect, res.Kind, nil
}

// checkChannels is step 5: every requested channel must be offered.
func checkChannels(want, offered []lease.Channel) error {
	for _, c := range want {
		ok := false
		for _, o := range offered {
			ok = ok || o == c
		}
		if !ok {
			return problem.New(problem.ChannelUnsupported, "the target does not offer channel %q", c).
				With("channel", c).With("offered", offered)
		}
	}
	return nil
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
		s.openCounts.add(p.Tenant, -1)
	}
	if sess.CloseReason != nil {
		s.conns.closeSession(sess.ID, causeClosed(*sess.CloseReason))
	}
	s.releaseBrowser(sess.ID)
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
	cur, err := s.sessions.GetSession(r.Context(), p.Tenant, ev.SessionID)
	if err != nil {
		return nil, false, err
	}
	ev.Target = cur.Target.String()
	if err := authorizeTarget(p, cur.Target); err != nil {
		return nil, false, err
	}
	ev.Outcome = lease.Success
	at := lease.Millis(s.now())
	sess, err = s.sessions.CloseSession(r.Context(), lease.CloseRequest{
		TenantID: p.Tenant, ID: cur.ID, Reason: req.Reason, By: p.Subject, At: at,
	}, ev.Event)
	if err != nil {
		return nil, false, err
	}
	return sess, cur.State == lease.Open, nil
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
