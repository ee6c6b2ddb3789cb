package lease

import (
	"context"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/nimbus/gateway/problem"
	"github.com/nimbus/gateway/targets"
)

// Sessions holds the session use cases: Open (SPEC §4.1, steps 2–8),
// Close, and the end of a session however it comes — a close on any
// replica, an expiry, its target dying on its own — which gives back
// whatever the session held (End). Transports decode, authorize the
// bearer and render; the rules are here. Safe for concurrent use.
type Sessions struct {
	// Static after NewSessions.
	store        Store
	catalog      Resolver
	ttl          TTLPolicy
	maxOpen      int
	owner        string
	provisioners map[targets.Kind]Provisioner
	now          func() time.Time
	log          *zap.Logger
	expirer      *Expirer
	counts       *openCounts

	mu    sync.Mutex
	onEnd []func(SessionEnd) // guarded by mu
}

// Resolver finds a session's target in the catalog (targets.Catalog):
// steps 4 (exists, ready) and, through Resolved.Offered, 5.
type Resolver interface {
	Resolve(ctx context.Context, tenantID string, t Target) (*targets.Resolved, error)
}

// Provisioner takes what a session needs beyond the catalog's say-so at
// step 7 — a browser of its own — and gives it back at the session's end
// (targets.BrowserPool).
type Provisioner interface {
	Provision(ctx context.Context, r targets.ProvisionRequest) (*targets.Provisioned, error)
	// Release gives back what sessionID holds, if anything; it may be
	// called more than once.
	Release(sessionID string) <-chan struct{}
}

// SessionsOptions configure Sessions. Zero values take the defaults.
type SessionsOptions struct {
	// Store persists sessions and audit events. Required.
	Store Store
	// Catalog resolves targets. Required for Open.
	Catalog Resolver
	// TTL is the session TTL policy: 15 min default, 1 h cap.
	TTL TTLPolicy
	// MaxOpenPerTenant bounds the open sessions of one tenant; zero means
	// 1000.
	MaxOpenPerTenant int
	// Owner is this replica's identity (its public URL): sessions whose
	// workload or browser runs here record it, and other replicas relay
	// to it. "" records none (a single replica).
	Owner string
	// Provisioners take step 7 for targets of their kind; a kind without
	// one needs none.
	Provisioners map[targets.Kind]Provisioner
	// Expiry configures the expiry of sessions (its OnExpire is Sessions'
	// own and must be nil); RunExpiry runs it.
	Expiry ExpirerOptions
	// Now is the clock; nil means time.Now.
	Now func() time.Time
	// Logger logs ends the gateway causes itself; nil discards.
	Logger *zap.Logger
}

// openRetryAfter is the Retry-After of a tenant at its open-session limit:
// sessions end by close or expiry, and a few seconds is long enough not to
// hammer the gateway and short enough to notice a freed slot.
const openRetryAfter = 5 * time.Second

// ReasonTargetExited is the close reason of a session whose target died
// on its own.
const ReasonTargetExited = "target exited"

// NewSessions returns the use cases over o.Store.
func NewSessions(o SessionsOptions) *Sessions {
	s := &Sessions{store: o.Store, catalog: o.Catalog, ttl: o.TTL, maxOpen: o.MaxOpenPerTenant, owner: o.Owner,
		provisioners: o.Provisioners, now: o.Now, log: o.Logger}
	if s.maxOpen <= 0 {
		s.maxOpen = 1000
	}
	if s.now == nil {
		s.now = time.Now
	}
	if s.log == nil {
		s.log = zap.NewNop()
	}
	s.counts = newOpenCounts(o.Store, time.Second)
	eo := o.Expiry
	if eo.Now == nil {
		eo.Now = s.now
	}
	eo.OnExpire = s.expired
	s.expirer = NewExpirer(o.Store, eo)
	return s
}

// RunExpiry records expiries on time until ctx ends (Expirer.Run); each
// one ends its session (End).
func (s *Sessions) RunExpiry(ctx context.Context) { s.expirer.Run(ctx) }

// OnEnd registers fn to be told of every session end End sees, after what
// the session held is given back. fn must not block.
func (s *Sessions) OnEnd(fn func(SessionEnd)) {
	s.mu.Lock()
	s.onEnd = append(s.onEnd, fn)
	s.mu.Unlock()
}

// OpenRequest is an open, decoded and authenticated (step 1).
type OpenRequest struct {
	TenantID, Principal string
	Target              Target
	Channels            []Channel
	RequestedTTLMs      *int64
	// Authorize is step 3: nil when the principal may open the target.
	Authorize func(Target) error
	// Prepare, if not nil, runs just before the commit with the session
	// as it will be stored (the transport mints its connect URLs); an
	// error aborts the open.
	Prepare func(*Session) error
	// BeforeCommit, if not nil, runs in step 8's window, between the
	// checks and the commit (tests widen the window with it).
	BeforeCommit func()
}

// Open runs steps 2 (TTL) to 8 of SPEC §4.1 in order, the first failure
// winning, and commits the session together with ev (completed with the
// session). It returns the session and its target's kind. Whatever step
// 7 took is given back when a later step fails.
func (s *Sessions) Open(ctx context.Context, req OpenRequest, ev Event) (*Session, targets.Kind, error) {
	// 2. The TTL is part of a well-formed body.
	ttl, err := s.ttl.Grant(req.RequestedTTLMs)
	if err != nil {
		return nil, "", err
	}
	// 3. Authorization.
	if err := req.Authorize(req.Target); err != nil {
		return nil, "", err
	}
	// 4. The target exists and is ready.
	res, err := s.catalog.Resolve(ctx, req.TenantID, req.Target)
	if err != nil {
		return nil, "", err
	}
	// 5. The target offers every requested channel.
	if err := checkChannels(req.Channels, res.Offered); err != nil {
		return nil, "", err
	}
	now := Millis(s.now())
	// 6. Limits.
	n, err := s.counts.get(ctx, req.TenantID, now)
	if err != nil {
		return nil, "", err
	}
	if n >= s.maxOpen {
		e := problem.New(problem.ResourceExhausted, "tenant %s has %d open sessions, the limit", req.TenantID, n).
			With("limit", s.maxOpen)
		e.RetryAfter = openRetryAfter
		return nil, "", e
	}
	// 8 (prepared). The session as it will be committed.
	sess := &Session{
		ID: NewID(), TenantID: req.TenantID, CreatedAt: now, CreatedBy: req.Principal,
		Target: req.Target, Channels: req.Channels, RequestedTTLMs: req.RequestedTTLMs,
		TTL: ttl, ExpiresAt: now.Add(ttl), State: Open,
		Snapshot: Snapshot{Generation: res.Generation, Backend: res.Backend},
	}
	if s.owner != "" && (res.Kind == targets.KindSandbox || res.Kind == targets.KindBrowser) {
		// The workload or browser runs on this replica: its connections
		// are served here, and other replicas relay to it.
		sess.Owner = s.owner
	}
	if res.Service != nil {
		sess.Snapshot.Service = res.Service.Name
	}
	if res.Sandbox != nil {
		sess.Snapshot.Sandbox = res.Sandbox.ID
	}
	// 7. Provisioning.
	prov, err := s.provision(ctx, res.Kind, sess)
	if err != nil {
		return nil, "", err
	}
	// 8. Commit, with the generation seen at step 4 as a precondition for
	// dynamic services. A failed commit gives back what step 7 took.
	var cond *Precondition
	if res.Dynamic && res.Service != nil {
		cond = &Precondition{TenantID: req.TenantID, Service: res.Service.Name, Generation: res.Generation}
	}
	if req.BeforeCommit != nil {
		req.BeforeCommit()
	}
	if req.Prepare != nil {
		err = req.Prepare(sess)
	}
	if err == nil {
		ev.Outcome, ev.SessionID, ev.Target = Success, sess.ID, sess.Target.String()
		err = s.store.CreateSession(ctx, sess, ev, cond)
	}
	if err != nil {
		s.release(sess.ID)
		return nil, "", err
	}
	s.counts.add(req.TenantID, 1)
	s.expirer.Notify(sess.ExpiresAt)
	if prov != nil {
		s.watchTarget(sess, prov)
	}
	return sess, res.Kind, nil
}

// provision is step 7 for a target of kind k.
func (s *Sessions) provision(ctx context.Context, k targets.Kind, sess *Session) (*targets.Provisioned, error) {
	p := s.provisioners[k]
	if p == nil {
		if k == targets.KindBrowser {
			return nil, problem.New(problem.Unavailable, "the browser service is not running on this gateway (no Chromium)")
		}
		return nil, nil
	}
	prov, err := p.Provision(ctx, targets.ProvisionRequest{TenantID: sess.TenantID, SessionID: sess.ID,
		ExpiresAt: sess.ExpiresAt, Page: sess.HasChannel(Page)})
	if err != nil {
		return nil, err
	}
	sess.Snapshot.Backend = prov.Backend
	return prov, nil
}

// checkChannels is step 5: every requested channel must be offered.
func checkChannels(want, offered []Channel) error {
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

// Close closes a session after authorize(its target) allows it, with ev
// (completed with the target) committed beside the close, and ends it
// (End). closedNow is false when it was closed already: closing is
// idempotent (SPEC §4.1; the first reason is kept).
func (s *Sessions) Close(ctx context.Context, req CloseRequest, authorize func(Target) error, ev *Event) (sess *Session, closedNow bool, err error) {
	cur, err := s.store.GetSession(ctx, req.TenantID, req.ID)
	if err != nil {
		return nil, false, err
	}
	ev.Target = cur.Target.String()
	if err := authorize(cur.Target); err != nil {
		return nil, false, err
	}
	ev.Outcome = Success
	if req.At.IsZero() {
		req.At = Millis(s.now())
	}
	sess, err = s.store.CloseSession(ctx, req, *ev)
	if err != nil {
		return nil, false, err
	}
	closedNow = cur.State == Open
	if closedNow {
		s.counts.add(req.TenantID, -1)
	}
	if sess.CloseReason != nil {
		s.End(SessionEnd{TenantID: sess.TenantID, SessionID: sess.ID, State: Closed, Reason: *sess.CloseReason, At: req.At})
	}
	return sess, closedNow, nil
}

// End is the one end-of-session path: it gives back what the session
// held (its browser), then tells OnEnd's observers (which cut its
// connections). Every way a session ends comes here — a close on this
// replica, one on another seen through the store's notifications, an
// expiry, its target's death — and it is idempotent, so an end seen
// twice is harmless. It does not block.
func (s *Sessions) End(end SessionEnd) {
	s.release(end.SessionID)
	s.mu.Lock()
	fns := s.onEnd
	s.mu.Unlock()
	for _, fn := range fns {
		fn(end)
	}
}

// expired is the Expirer's OnExpire: the recorded expiry ends the session.
func (s *Sessions) expired(sess *Session, at time.Time) {
	s.End(SessionEnd{TenantID: sess.TenantID, SessionID: sess.ID, State: Expired, At: sess.ExpiresAt, RecordedAt: at})
}

// release gives back what sessionID holds with every provisioner.
func (s *Sessions) release(sessionID string) {
	for _, p := range s.provisioners {
		p.Release(sessionID)
	}
}

// watchTarget closes sess — reason "target exited", by the system,
// audited — when what step 7 gave it ends on its own (a browser's crash,
// an OOM kill, Browser.close from a client): issue 12 found such sessions
// left open for their whole TTL with every connect answering 502. One
// the provisioner ended itself (a release, an expiry) is not news.
func (s *Sessions) watchTarget(sess *Session, prov *targets.Provisioned) {
	tenant, id, target := sess.TenantID, sess.ID, sess.Target.String()
	context.AfterFunc(prov.Ended, func() {
		if prov.Released() {
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		at := Millis(s.now())
		ev := Event{ID: NewEventID(), Time: at, TenantID: tenant, Principal: SystemPrincipal,
			Action: ActionClose, Outcome: Success, SessionID: id, Target: target}
		closed, err := s.store.CloseSession(ctx, CloseRequest{
			TenantID: tenant, ID: id, Reason: ReasonTargetExited, By: SystemPrincipal, At: at}, ev)
		if err != nil || closed.ClosedBy == nil || *closed.ClosedBy != SystemPrincipal {
			// Not open any more (closed or expired meanwhile): nothing to
			// close, but what it held is given back all the same.
			s.release(id)
			s.log.Debug("closing a session whose target exited", zap.String("sessionId", id), zap.Error(err))
			return
		}
		s.counts.add(tenant, -1)
		s.log.Info("session closed: its target exited", zap.String("sessionId", id), zap.String("tenantId", tenant))
		s.End(SessionEnd{TenantID: tenant, SessionID: id, State: Closed, Reason: ReasonTargetExited, At: at})
	})
}
