package lease

import (
	"context"
	"sync"
	"time"

	"go.uber.org/zap"
)

// Expirer records expiries in the store as they fall due. It does not poll
// every session: it asks the store for the earliest open sessions (an
// indexed query), sleeps on one timer until the first of them is due, and
// is nudged by Notify when a session that expires sooner is opened.
//
// Recording is bookkeeping only: a session past expiresAt already reads as
// expired (Session.StateAt), and live connections are cut by their own
// deadlines, so a late Expirer never extends a session.
type Expirer struct {
	// Static after construction.
	store   Store
	log     *zap.Logger
	now     func() time.Time
	resync  time.Duration
	batch   int
	onEvent func(*Session, time.Time)

	// Guarded by mu.
	mu     sync.Mutex
	next   time.Time // when the timer fires; zero when idle
	wake   chan struct{}
	closed bool
}

// ExpirerOptions configures an Expirer.
type ExpirerOptions struct {
	Logger *zap.Logger // nil = no logging
	// Now is the clock; nil means time.Now.
	Now func() time.Time
	// Resync bounds how long the Expirer trusts its schedule before asking
	// the store again, which picks up sessions other replicas opened.
	// Zero means one minute.
	Resync time.Duration
	// OnExpire, if not nil, is called after each recorded expiry with the
	// session as it was and when the expiry was recorded.
	OnExpire func(s *Session, at time.Time)
}

// NewExpirer returns an Expirer over s; Run starts it.
func NewExpirer(s Store, o ExpirerOptions) *Expirer {
	e := &Expirer{store: s, log: o.Logger, now: o.Now, resync: o.Resync, batch: 256,
		onEvent: o.OnExpire, wake: make(chan struct{}, 1)}
	if e.log == nil {
		e.log = zap.NewNop()
	}
	if e.now == nil {
		e.now = time.Now
	}
	if e.resync <= 0 {
		e.resync = time.Minute
	}
	return e
}

// Notify tells the Expirer that a session expiring at t exists; it
// reschedules only when t is earlier than its next wake-up.
func (e *Expirer) Notify(t time.Time) {
	e.mu.Lock()
	earlier := e.next.IsZero() || t.Before(e.next)
	e.mu.Unlock()
	if earlier {
		select {
		case e.wake <- struct{}{}:
		default:
		}
	}
}

// Run records expiries until ctx ends.
func (e *Expirer) Run(ctx context.Context) {
	timer := time.NewTimer(0)
	defer timer.Stop()
	for {
		next := e.sweep(ctx)
		if wait := e.now().Add(e.resync); next.IsZero() || next.After(wait) {
			next = wait
		}
		e.mu.Lock()
		e.next = next
		e.mu.Unlock()
		timer.Reset(time.Until(next))
		select {
		case <-ctx.Done():
			return
		case <-timer.C:
		case <-e.wake:
			if !timer.Stop() {
				select {
				case <-timer.C:
				default:
				}
			}
		}
	}
}

// sweep records every due expiry and returns when the next one falls due
// (zero when none is scheduled).
func (e *Expirer) sweep(ctx context.Context) time.Time {
	for ctx.Err() == nil {
		due, err := e.store.DueSessions(ctx, e.batch)
		if err != nil {
			e.log.Warn("expirer: listing due sessions failed", zap.Error(err))
			return e.now().Add(time.Second)
		}
		now := e.now()
		recorded := 0
		for _, s := range due {
			if s.ExpiresAt.After(now) {
				return s.ExpiresAt
			}
			ev := Event{ID: NewEventID(), Time: Millis(now), TenantID: s.TenantID,
				Principal: SystemPrincipal, Action: ActionExpire, Outcome: Success,
				SessionID: s.ID, Target: s.Target.String()}
			ok, err := e.store.ExpireSession(ctx, s.TenantID, s.ID, now, ev)
			if err != nil {
				e.log.Warn("expirer: recording expiry failed", zap.String("sessionId", s.ID), zap.Error(err))
				return now.Add(time.Second)
			}
			if ok {
				recorded++
				e.log.Info("audit", AuditFields(ev)...)
				if e.onEvent != nil {
					e.onEvent(s, now)
				}
			}
		}
		if len(due) < e.batch && recorded == len(due) {
			return time.Time{}
		}
	}
	return time.Time{}
}

// AuditFields renders ev as zap fields, the one shape every audit log line
// has.
func AuditFields(ev Event) []zap.Field {
	return []zap.Field{
		zap.String("eventId", ev.ID), zap.String("tenantId", ev.TenantID),
		zap.String("principal", ev.Principal), zap.String("action", string(ev.Action)),
		zap.String("outcome", string(ev.Outcome)), zap.String("sessionId", ev.SessionID),
		zap.String("target", ev.Target), zap.String("code", ev.Code),
		zap.String("requestId", ev.RequestID), zap.String("remoteAddr", ev.RemoteAddr),
	}
}
