package proxy

import (
	"context"
	"errors"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/coder/websocket"
	"github.com/gorilla/mux"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/nimbus/gateway/channels"
	"github.com/nimbus/gateway/lease"
	"github.com/nimbus/gateway/problem"
	"github.com/nimbus/gateway/targets"
)

// The browser service (SPEC §2, §5.3): each session on it holds a
// Chromium of its own from the pool, from the open (step 7) until the
// session ends. The cdp channel is that browser's browser-level CDP, the
// page channel the page-level CDP of one page created at open; the
// DevTools discovery endpoints (/json/version…) answer with URLs that
// point back at the gateway.

// attachBrowser connects to the session's browser for the cdp channel
// (a browser-level session on its DevTools pipe) or the page channel (a
// session on its page), before the upgrade: a dead browser is a 502.
func (s *Server) attachBrowser(sess *lease.Session, ch lease.Channel) (backend, error) {
	b, err := s.sessionBrowser(sess)
	if err != nil {
		return nil, err
	}
	switch ch {
	case lease.CDP:
		return s.dialBrowser(sess, b, string(ch), "")
	case lease.Page:
		page := b.PageID()
		if page == "" {
			return nil, problem.New(problem.BadGateway, "session %s has no page", sess.ID)
		}
		return s.dialBrowser(sess, b, string(ch), page)
	}
	return nil, problem.New(problem.ChannelUnsupported, "the browser service does not offer channel %s", ch)
}

// sessionBrowser is the live browser recorded in sess's snapshot.
func (s *Server) sessionBrowser(sess *lease.Session) (*targets.Browser, error) {
	if s.browsers == nil {
		return nil, problem.New(problem.Unavailable, "the browser service is not running on this gateway")
	}
	// The pool's own record of which browser the session holds: a
	// session of another gateway process (before a restart) has none.
	b, ok := s.browsers.Lookup(sess.ID)
	if !ok {
		return nil, problem.New(problem.BadGateway, "the browser of session %s is gone", sess.ID)
	}
	select {
	case <-b.Done():
		return nil, problem.New(problem.BadGateway, "the browser of session %s has died", sess.ID)
	default:
	}
	return b, nil
}

// dialBrowser opens a connection to b's DevTools: browser-level when
// targetID is "", else to that target of b (a target of any other browser
// is not found).
func (s *Server) dialBrowser(sess *lease.Session, b *targets.Browser, ch, targetID string) (*cdpBackend, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	up, err := b.Connect(ctx, targetID)
	var ce *targets.CDPError
	if errors.As(err, &ce) && targetID != "" {
		return nil, problem.New(problem.NotFound, "the browser of session %s has no target %s", sess.ID, targetID)
	}
	if err != nil {
		return nil, problem.Wrap(problem.BadGateway, err, "the browser of session "+sess.ID+" did not answer")
	}
	return &cdpBackend{s: s, browser: b, up: up, channel: ch, expiresAt: sess.ExpiresAt}, nil
}

// cdpBackend is a client attached to its session's browser.
type cdpBackend struct {
	// Static after attach.
	s         *Server
	browser   *targets.Browser
	up        *targets.CDPConn
	channel   string
	expiresAt time.Time
}

// protocols: CDP clients ask for no subprotocol.
func (b *cdpBackend) protocols() []string { return nil }

func (b *cdpBackend) serve(ctx context.Context, conn *websocket.Conn) error {
	// A browser that dies closes its pipe, which ends the connection's
	// Read; this also covers one whose death is seen first through its
	// process (Done).
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	stop := context.AfterFunc(b.browser.Context(), func() { cancel(errBrowserGone) })
	defer stop()
	err := channels.RelayCDP(ctx, conn, b.up, channels.CDPOptions{
		OnBytes: func(dir string, n int) { b.s.metrics.bytes.WithLabelValues(b.channel, dir).Add(float64(n)) },
	})
	// The pool kills a browser at its session's expiresAt, the instant
	// the connection's deadline fires too: whichever is seen first, the
	// client is told the session expired.
	if ce, ok := channels.AsClose(err); ok && ce.Code == channels.StatusTargetUnavailable && !time.Now().Before(b.expiresAt) {
		err = causeExpired
	}
	return err
}

func (b *cdpBackend) release() { _ = b.up.Close() }

var errBrowserGone = channels.Close(channels.StatusTargetUnavailable, "target unavailable")

// browserRoutes adds the CDP discovery endpoints and the page-level
// endpoints that /json/list points at; the metrics of the pool come
// along.
func (s *Server) browserRoutes(r *mux.Router) {
	for _, p := range channels.CDPDiscoveryPaths() {
		r.HandleFunc("/v1/connect/{session}/cdp"+p, s.cdpDiscovery).Methods(http.MethodGet)
	}
	// Playwright before 1.46 appended "/json/version/" to the endpoint
	// string, query included: …/cdp?token=T/json/version/.
	r.HandleFunc("/v1/connect/{session}/cdp", s.cdpDiscovery).Methods(http.MethodGet).
		MatcherFunc(func(r *http.Request, _ *mux.RouteMatch) bool { return !isUpgrade(r) })
	r.HandleFunc("/v1/connect/{session}/cdp/devtools/page/{target}", s.connectPage).Methods(http.MethodGet)
	if s.browsers != nil {
		s.registry.MustRegister(browserCollector{s.browsers})
	}
}

// cdpDiscovery is GET /v1/connect/{session}/cdp/json/…, authorized by the
// session's cdp connect token: Chromium's answer with every
// webSocketDebuggerUrl pointing back at the gateway, signed with the same
// token, so that connectOverCDP("http://…/cdp?token=…") works.
func (s *Server) cdpDiscovery(w http.ResponseWriter, r *http.Request) {
	sid := mux.Vars(r)["session"]
	tok := connectToken(r)
	if strings.HasSuffix(r.URL.Path, "/cdp") {
		var suffix string
		if tok, suffix = cutDiscoverySuffix(tok); suffix == "" {
			s.writeError(w, r, problem.New(problem.InvalidArgument, "this is a WebSocket endpoint; use an upgrade, or /json/version"))
			return
		}
		r = r.Clone(r.Context())
		r.URL.Path += suffix
		q := r.URL.Query()
		q.Set("token", tok)
		r.URL.RawQuery = q.Encode() // as it would be forwarded to the owner
	}
	claims, err := s.connectKeys.VerifyFor(tok, sid, string(lease.CDP))
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	sess, err := s.sessions.GetSession(r.Context(), claims.Tenant, sid)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	if st := sess.StateAt(s.now()); st != lease.Open {
		s.writeError(w, r, errNotOpen(sess.ID, st))
		return
	}
	if s.isRemote(sess) {
		// The browser runs on the replica that opened the session.
		s.proxyToOwner(w, r, sess)
		return
	}
	b, err := s.sessionBrowser(sess)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	base := s.wsBase(r) + "/v1/connect/" + sid + "/cdp"
	q := "?token=" + url.QueryEscape(tok)
	wsURL := func(targetID string) string {
		if targetID == "" {
			return base + q
		}
		return base + "/devtools/page/" + targetID + q
	}
	if err := channels.CDPDiscovery(w, r, b, wsURL); err != nil {
		s.writeError(w, r, err)
	}
}

// cutDiscoverySuffix splits a token that a client glued a discovery path
// to (see browserRoutes).
func cutDiscoverySuffix(tok string) (string, string) {
	for _, suffix := range channels.CDPDiscoveryPaths() {
		if t, ok := strings.CutSuffix(tok, suffix); ok {
			return t, suffix
		}
	}
	return tok, ""
}

// connectPage is GET /v1/connect/{session}/cdp/devtools/page/{target},
// the page-level endpoints /json/list points at, authorized by the cdp
// token: a connection to one target of the session's own browser (a
// target of any other browser is not found). It is the connect handler
// with another backend.
func (s *Server) connectPage(w http.ResponseWriter, r *http.Request) {
	sid, target := mux.Vars(r)["session"], mux.Vars(r)["target"]
	if !validTargetID(target) {
		s.writeError(w, r, problem.New(problem.NotFound, "no target %q", target))
		return
	}
	// Authorized by the session's cdp token, like the browser-level URL
	// whose /json/list named this page.
	s.serveConnect(w, r, sid, lease.CDP, func(sess *lease.Session) (backend, error) {
		b, err := s.sessionBrowser(sess)
		if err != nil {
			return nil, err
		}
		return s.dialBrowser(sess, b, string(lease.CDP), target)
	})
}

// validTargetID accepts what Chromium uses as target ids (32 hex digits)
// and nothing that could change the upstream path.
func validTargetID(id string) bool {
	if id == "" || len(id) > 64 {
		return false
	}
	for _, c := range id {
		if !(c >= '0' && c <= '9' || c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z' || c == '-') {
			return false
		}
	}
	return true
}

// browserCollector exports the pool's state (SPEC §6: browser pool).
type browserCollector struct{ pool *targets.BrowserPool }

var (
	browsersLive  = prometheus.NewDesc("nimbus_browsers_live", "Chromium processes running or starting.", nil, nil)
	browsersWarm  = prometheus.NewDesc("nimbus_browsers_warm", "Idle browsers ready for a session.", nil, nil)
	browsersInUse = prometheus.NewDesc("nimbus_browsers_in_use", "Browsers held by a session.", nil, nil)
)

func (c browserCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- browsersLive
	ch <- browsersWarm
	ch <- browsersInUse
}

func (c browserCollector) Collect(ch chan<- prometheus.Metric) {
	st := c.pool.Stats()
	ch <- prometheus.MustNewConstMetric(browsersLive, prometheus.GaugeValue, float64(st.Live))
	ch <- prometheus.MustNewConstMetric(browsersWarm, prometheus.GaugeValue, float64(st.Warm))
	ch <- prometheus.MustNewConstMetric(browsersInUse, prometheus.GaugeValue, float64(st.InUse))
}
