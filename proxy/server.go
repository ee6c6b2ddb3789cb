package proxy

import (
	"context"
	"net/http"
	"strings"
	"sync/atomic"
	"time"

	"github.com/gorilla/mux"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.uber.org/zap"

	"github.com/nimbus/gateway/authn"
	"github.com/nimbus/gateway/channels"
	"github.com/nimbus/gateway/lease"
	"github.com/nimbus/gateway/targets"
)

// Options configures a Server. Zero values take the documented defaults.
type Options struct {
	// Sessions persists sessions and audit events. Required.
	Sessions lease.Store
	// Lease holds the session use cases (open, close, the end of a
	// session), over the same store. Required.
	Lease *lease.Sessions
	// Catalog resolves targets and serves the admin API. Required.
	Catalog *targets.Catalog
	// Tenants verifies tenant bearer tokens. Required.
	Tenants *authn.Verifier
	// ConnectKeys signs and verifies connect URLs. Required.
	ConnectKeys *authn.ConnectKeys
	// Ping reports whether the store can serve (for /readyz); nil means
	// always ready.
	Ping func(context.Context) error
	// Writable reports whether a write to the store would commit now (for
	// /readyz, which fails while it does not: issue 12, a full disk
	// stopped every tenant while /readyz said 200); nil means not
	// checked. It runs at most once a second, however often /readyz is
	// asked (store.SQLite.CheckWritable).
	Writable func(context.Context) error
	// Runtime says what runs the targets and what that confines
	// ("sandboxes", "browsers"), for /readyz's details: an operator reads
	// there, not only in the start banner, what isolates a tenant.
	Runtime map[string]string

	// MaxConnsPerSession bounds the live connections of one session;
	// zero means 32.
	MaxConnsPerSession int
	// PingInterval is how often idle clients are pinged; zero means 30 s,
	// negative disables pings. PingTimeout is how long a pong may take;
	// zero means 15 s.
	PingInterval, PingTimeout time.Duration
	// MaxFileSize bounds one upload through the files channel; zero means
	// 16 GiB.
	MaxFileSize int64
	// MinFreeBytes is the space uploads through the files channel leave
	// free on the file system they write to (507 resource_exhausted
	// beyond; channels.FilesOptions.MinFreeBytes); zero keeps none.
	MinFreeBytes int64
	// Stdio tunes the stdio channel's slow-consumer rule (SPEC §5.1):
	// zero values mean a 1 MiB backlog and a 5 s grace.
	Stdio channels.StdioOptions
	// Browsers is the browser service's Chromium pool, which Lease
	// provisions from; nil means no browser service (opens on it fail at
	// provisioning with 503).
	Browsers *targets.BrowserPool

	// PublicURL is the base of minted connect URLs (e.g.
	// "https://gw.example.com"); "" derives it from each request's Host.
	// With replicas it is also this replica's identity: sessions whose
	// backends run here record it as their owner, and other replicas relay
	// connects to it.
	PublicURL string

	// MetricsOnAPI serves /metrics on the API handler too. False (the
	// default) leaves it to MetricsHandler, for a listener of its own:
	// /metrics needs no token, so anything that reaches the API, a
	// browser session's pages included, could read it (issue 12).
	MetricsOnAPI bool
	// MetricsTenantLabels labels per-tenant series with the tenant id
	// (nimbus_sessions_open{tenant}). False (the default) exports the
	// totals only, so that a scrape does not list every tenant.
	MetricsTenantLabels bool

	// Logger receives request and audit logs; nil discards them.
	Logger *zap.Logger
	// Registry receives the gateway's metrics; nil makes a private one.
	Registry *prometheus.Registry
	// Now is the clock; nil means time.Now.
	Now func() time.Time
}

// Server serves the gateway's HTTP API. Create it with New.
type Server struct {
	// Static after construction.
	sessions    lease.Store
	lease       *lease.Sessions
	catalog     *targets.Catalog
	browsers    *targets.BrowserPool
	tenants     *authn.Verifier
	connectKeys *authn.ConnectKeys
	ping        func(context.Context) error
	writable    *writeProbe // nil: not checked
	publicURL   string
	log         *zap.Logger
	registry    *prometheus.Registry
	metrics     *metrics
	now         func() time.Time
	handler     http.Handler
	metricsAPI  bool // /metrics on handler too (Options.MetricsOnAPI)
	runtime     map[string]string

	conns        *registry
	pingInterval time.Duration
	pingTimeout  time.Duration
	stdio        channels.StdioOptions
	maxFileSize  int64
	minFreeBytes int64

	// beforeCommit, when set by a test, runs between authorization and
	// commit of an open (SPEC §4.1 step 8's window).
	beforeCommit func()

	draining atomic.Bool
}

// New returns a Server for o.
func New(o Options) *Server {
	s := &Server{
		sessions: o.Sessions, lease: o.Lease, catalog: o.Catalog, tenants: o.Tenants, connectKeys: o.ConnectKeys,
		ping:      o.Ping,
		publicURL: strings.TrimRight(o.PublicURL, "/"), log: o.Logger, registry: o.Registry, now: o.Now,
		browsers: o.Browsers, metricsAPI: o.MetricsOnAPI, runtime: o.Runtime,
	}
	s.conns = newRegistry(o.MaxConnsPerSession)
	s.lease.OnEnd(s.sessionEnded)
	s.pingInterval, s.pingTimeout, s.stdio, s.maxFileSize = o.PingInterval, o.PingTimeout, o.Stdio, o.MaxFileSize
	s.minFreeBytes = o.MinFreeBytes
	if s.pingInterval == 0 {
		s.pingInterval = 30 * time.Second
	}
	if s.pingTimeout <= 0 {
		s.pingTimeout = 15 * time.Second
	}
	if s.log == nil {
		s.log = zap.NewNop()
	}
	if s.registry == nil {
		s.registry = prometheus.NewRegistry()
	}
	if s.now == nil {
		s.now = time.Now
	}
	if o.Writable != nil {
		s.writable = &writeProbe{check: o.Writable, now: s.now}
	}
	s.metrics = newMetrics(s.registry)
	s.registry.MustRegister(openSessionsCollector{store: s.sessions, now: s.now, log: s.log, byTenant: o.MetricsTenantLabels})
	s.handler = s.routes()
	return s
}

// maxHeaderRead bounds what net/http reads of one request's line and
// header before it answers 431: net/http's default, 1 MiB, let 1,000
// unauthenticated connections sending ~960 KiB of header each take the
// gateway from 22 MB to 1.74 GB of RSS (issue 12). No client of the API
// needs more than a few KiB (a bearer token, a connect URL's query).
const maxHeaderRead = 64 << 10

// HTTPServer returns the http.Server to serve h with: s itself on the
// API listener, or MetricsHandler on the metrics one. Serve it on
// s.Listener(ln), so that net/http's own refusals are problem+json.
//
// The header of a request is bounded (64 KiB) and must arrive within
// 10 s; idle keep-alive connections are closed after 2 min. There is no
// ReadTimeout or WriteTimeout: uploads, downloads and upgraded
// connections run for as long as their session, and JSON bodies have
// their own deadline.
func (s *Server) HTTPServer(h http.Handler) *http.Server {
	return &http.Server{Handler: h,
		// net/http reads up to MaxHeaderBytes plus 4096 bytes of bufio
		// slop; this makes the whole at most maxHeaderRead.
		MaxHeaderBytes:    maxHeaderRead - 4096,
		ReadHeaderTimeout: 10 * time.Second, IdleTimeout: 2 * time.Minute,
		ErrorLog: zap.NewStdLog(s.log)}
}

// MetricsHandler serves the Prometheus metrics at GET /metrics, and
// problem+json 404s elsewhere, for a listener of its own (see
// Options.MetricsOnAPI).
func (s *Server) MetricsHandler() http.Handler {
	r := mux.NewRouter()
	r.NotFoundHandler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { s.writeError(w, r, errNotFoundRoute) })
	r.MethodNotAllowedHandler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Allow", http.MethodGet)
		s.writeError(w, r, errMethod)
	})
	r.Handle("/metrics", s.promHandler()).Methods(http.MethodGet)
	return s.withRequest(r)
}

func (s *Server) promHandler() http.Handler {
	return promhttp.HandlerFor(s.registry, promhttp.HandlerOpts{})
}

// ServeHTTP implements http.Handler.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) { s.handler.ServeHTTP(w, r) }

// Drain stops the Server from opening sessions; /readyz turns unready so
// load balancers move traffic away (SIGTERM).
func (s *Server) Drain() { s.draining.Store(true) }

// Shutdown drains, closes every live connection with 1001 and waits for
// them to be gone or ctx to end. http.Server.Shutdown does not do this:
// it does not track hijacked (upgraded) connections.
func (s *Server) Shutdown(ctx context.Context) error {
	s.Drain()
	s.conns.closeAll(causeShutdown)
	return s.conns.wait(ctx)
}

func (s *Server) routes() http.Handler {
	// SkipClean: the files face needs the raw path ("a/../b" is the
	// adapter's to judge, never a redirect).
	r := mux.NewRouter().SkipClean(true)
	r.NotFoundHandler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { s.writeError(w, r, errNotFoundRoute) })
	router := r
	r.MethodNotAllowedHandler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Allow", strings.Join(allowedMethods(router, r), ", "))
		s.writeError(w, r, errMethod)
	})

	s.browserRoutes(r)
	r.HandleFunc("/v1/connect/{session}/files/{path:.*}", s.filesHTTP).
		Methods(http.MethodGet, http.MethodHead, http.MethodPut, http.MethodDelete)
	r.HandleFunc("/v1/connect/{session}/{channel}", s.connect).Methods(http.MethodGet, http.MethodHead)
	r.HandleFunc("/healthz", s.healthz).Methods(http.MethodGet)
	r.HandleFunc("/readyz", s.readyz).Methods(http.MethodGet)
	if s.metricsAPI {
		r.Handle("/metrics", s.promHandler()).Methods(http.MethodGet)
	}

	// Full paths, not a PathPrefix subrouter: gorilla/mux answers a method
	// mismatch inside a subrouter with 404 instead of 405.
	t := tenantRoutes{r}
	t.HandleFunc("/sessions", s.openSession).Methods(http.MethodPost)
	t.HandleFunc("/sessions", s.listSessions).Methods(http.MethodGet)
	t.HandleFunc("/sessions/{id}", s.getSession).Methods(http.MethodGet)
	t.HandleFunc("/sessions/{id}/close", s.closeSession).Methods(http.MethodPost)
	t.HandleFunc("/sessions/{id}/connect", s.mintConnect).Methods(http.MethodPost)

	t.HandleFunc("/services", s.admin(s.listServices)).Methods(http.MethodGet)
	t.HandleFunc("/services/{name}", s.admin(s.putService)).Methods(http.MethodPut)
	t.HandleFunc("/services/{name}", s.admin(s.getService)).Methods(http.MethodGet)
	t.HandleFunc("/services/{name}", s.admin(s.deleteService)).Methods(http.MethodDelete)
	t.HandleFunc("/sandboxes", s.admin(s.createSandbox)).Methods(http.MethodPost)
	t.HandleFunc("/sandboxes", s.admin(s.listSandboxes)).Methods(http.MethodGet)
	t.HandleFunc("/sandboxes/{id}", s.admin(s.getSandbox)).Methods(http.MethodGet)
	t.HandleFunc("/sandboxes/{id}", s.admin(s.deleteSandbox)).Methods(http.MethodDelete)
	t.HandleFunc("/audit", s.admin(s.listAudit)).Methods(http.MethodGet)

	return s.withRequest(r)
}

// tenantRoutes registers routes under /v1/tenants/{tenant}.
type tenantRoutes struct{ r *mux.Router }

func (t tenantRoutes) HandleFunc(path string, h http.HandlerFunc) *mux.Route {
	return t.r.HandleFunc("/v1/tenants/{tenant}"+path, h)
}

func (s *Server) healthz(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
}

func (s *Server) readyz(w http.ResponseWriter, r *http.Request) {
	if s.draining.Load() {
		s.writeError(w, r, errDraining)
		return
	}
	if s.ping != nil {
		ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
		defer cancel()
		if err := s.ping(ctx); err != nil {
			s.writeError(w, r, errStoreDown(err))
			return
		}
	}
	if s.writable != nil {
		// Not cut short by this caller leaving: the answer is shared.
		ctx, cancel := context.WithTimeout(context.WithoutCancel(r.Context()), 2*time.Second)
		defer cancel()
		if err := s.writable.result(ctx); err != nil {
			s.writeError(w, r, errStoreUnwritable(err))
			return
		}
	}
	writeJSON(w, http.StatusOK, readyJSON{Status: "ready", Runtime: s.runtime})
}

type readyJSON struct {
	Status  string            `json:"status"`
	Runtime map[string]string `json:"runtime,omitempty"`
}

// allowedMethods lists the methods router would take for r's path: the
// Allow header of a 405 (RFC 9110 §15.5.6).
func allowedMethods(router *mux.Router, r *http.Request) []string {
	var allow []string
	for _, m := range []string{http.MethodGet, http.MethodHead, http.MethodPost, http.MethodPut, http.MethodPatch, http.MethodDelete} {
		probe := r.Clone(r.Context())
		probe.Method = m
		var match mux.RouteMatch
		if router.Match(probe, &match) && match.MatchErr == nil {
			allow = append(allow, m)
		}
	}
	return allow
}
