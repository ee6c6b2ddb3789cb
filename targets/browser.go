package targets

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/nimbus/gateway/problem"
)

// The browser pool's defaults (SPEC §2: each browser session gets a
// Chromium of its own, taken from a warm pool).
const (
	defaultWarmBrowsers = 2
	defaultMaxBrowsers  = 8
	// defaultBrowserStart bounds a launch: process start to DevToolsActivePort.
	defaultBrowserStart = 10 * time.Second
	// browserRetryAfter is the Retry-After of an Acquire at Max: browsers
	// are freed when sessions end, which a client cannot predict; a few
	// seconds is long enough not to hammer the gateway.
	browserRetryAfter = 5 * time.Second
	// warmBackoff is how long a failed warm launch stops the refill, so a
	// broken Chromium is not relaunched in a hot loop.
	warmBackoff = 5 * time.Second
)

// chromiumNames are looked up on PATH when BrowserOptions.Chromium is "".
var chromiumNames = []string{"chromium", "chromium-browser", "google-chrome"}

// BrowserOptions configure a BrowserPool.
type BrowserOptions struct {
	// Chromium is the browser binary; "" looks up chromium,
	// chromium-browser and google-chrome on PATH (NewBrowserPool fails
	// when none is found).
	Chromium string
	// DataDir holds the profiles, DataDir/browsers/<id>, one per browser;
	// "" means the current directory. Everything under DataDir/browsers
	// belongs to the pool: Start removes what it finds there.
	DataDir string
	// ProfileDir, if set, replaces DataDir/browsers as the folder of the
	// profiles (and belongs to the pool the same way): for browsers that
	// run as other users when the data dir is not theirs to pass through.
	ProfileDir string
	// Warm is how many idle browsers are kept ready; 0 means 2, negative
	// means none.
	Warm int
	// Max bounds the live browsers, warm ones included; 0 means 8.
	Max int
	// StartTimeout bounds one launch; 0 means 10 s.
	StartTimeout time.Duration
	// Logger logs launches, crashes and sweeps; nil means none.
	Logger *zap.Logger
	// ExtraArgs are added to Chromium's command line, before the URL.
	ExtraArgs []string
	// UIDs, if set, is a block of user ids: each browser runs as an id of
	// its own (user and group, no supplementary groups), owner of its
	// profile and downloads folder and of nothing else, so a page or a
	// CDP client can read neither the gateway's keys and database nor
	// other tenants' files (issue 12). It needs the gateway to run as
	// root. Nil means browsers run as the gateway's own user.
	UIDs *UIDRange
	// MaxPerTenant bounds the browsers one tenant holds at once, so one
	// tenant cannot take them all; 0 means half of Max, at least 1.
	MaxPerTenant int
}

// BrowserStats is a snapshot of the pool for metrics.
type BrowserStats struct {
	Live  int // Chromium processes running or starting
	Warm  int // idle, ready to be acquired
	InUse int // held by a session
}

// BrowserPool runs the Chromium processes of the browser service: one per
// session, never shared (browser-level CDP reaches every target of a
// browser), each in a process group of its own with a fresh profile,
// killed as a group and its profile removed when the session ends — at
// the latest at the session's expiresAt, even if nobody calls Release.
// Safe for concurrent use.
type BrowserPool struct {
	// Static after NewBrowserPool.
	chromium     string
	root         string // DataDir/browsers
	warm, max    int
	startTimeout time.Duration
	log          *zap.Logger
	extraArgs    []string
	uids         *browserUIDs // nil: the gateway's own user
	maxPerTenant int
	// stopLaunches ends the launches in flight at Close.
	launchCtx    context.Context
	stopLaunches context.CancelFunc

	// wg counts every goroutine of the pool: a browser's run goroutine,
	// warm launches, expiry releases. Add is called under mu while
	// !closed only, so Close's Wait sees every one.
	wg sync.WaitGroup

	mu sync.Mutex
	// Guarded by mu.
	all        map[*Browser]struct{} // started and not yet reaped
	idle       []*Browser            // warm, oldest first
	bySession  map[string]*Browser
	byTenant   map[string]int // browsers held per tenant
	live       int            // reserved slots: launching or running, ≤ max
	warming    int            // warm launches in flight
	dying      int            // released, not yet reaped
	changed    chan struct{}
	failedAt   time.Time // last failed warm launch
	started    bool      // Start ran: keep the warm pool filled
	closed     bool
	startError error // first warm launch failure since Start
}

// NewBrowserPool checks that Chromium exists and prepares the pool; it
// launches nothing until Start (warm pool) or Acquire.
func NewBrowserPool(o BrowserOptions) (*BrowserPool, error) {
	path, err := findChromium(o.Chromium)
	if err != nil {
		return nil, err
	}
	dir := o.DataDir
	if dir == "" {
		dir = "."
	}
	profiles := filepath.Join(dir, "browsers")
	if o.ProfileDir != "" {
		profiles = o.ProfileDir
	}
	root, err := filepath.Abs(profiles)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(root, 0o700); err != nil {
		return nil, fmt.Errorf("browser profiles: %w", err)
	}
	p := &BrowserPool{
		chromium: path, root: root, warm: o.Warm, max: o.Max, startTimeout: o.StartTimeout,
		log: o.Logger, extraArgs: o.ExtraArgs, maxPerTenant: o.MaxPerTenant,
		all: map[*Browser]struct{}{}, bySession: map[string]*Browser{}, byTenant: map[string]int{},
		changed: make(chan struct{}),
	}
	if o.UIDs != nil {
		p.uids = &browserUIDs{r: *o.UIDs, used: map[uint32]bool{}}
		// The browsers' users pass through to their own profiles only.
		if err := os.Chmod(root, 0o711); err != nil {
			return nil, fmt.Errorf("browser profiles: %w", err)
		}
		if err := CheckReach(root, Credential{UID: o.UIDs.First, GID: o.UIDs.First}); err != nil {
			return nil, fmt.Errorf("browser profiles: %w", err)
		}
	}
	switch {
	case p.warm == 0:
		p.warm = defaultWarmBrowsers
	case p.warm < 0:
		p.warm = 0
	}
	if p.max <= 0 {
		p.max = defaultMaxBrowsers
	}
	if p.maxPerTenant <= 0 {
		p.maxPerTenant = max(p.max/2, 1)
	}
	p.warm = min(p.warm, p.max)
	if p.startTimeout <= 0 {
		p.startTimeout = defaultBrowserStart
	}
	if p.log == nil {
		p.log = zap.NewNop()
	}
	p.launchCtx, p.stopLaunches = context.WithCancel(context.Background())
	return p, nil
}

// Start sweeps what a previous gateway left under DataDir/browsers — its
// Chromium processes (found through /proc by their --user-data-dir), then
// the profiles — and fills the warm pool, returning once it is full or the
// first warm launch failed (that error: the pool still launches on
// Acquire). The pool keeps the warm pool filled from then on.
func (p *BrowserPool) Start(ctx context.Context) error {
	p.sweep()
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return errPoolClosed
	}
	p.started = true
	p.refillLocked()
	for len(p.idle) < p.warm && p.startError == nil && !p.closed {
		ch := p.changed
		p.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
		p.mu.Lock()
	}
	err := p.startError
	p.mu.Unlock()
	return err
}

// Acquire gives sessionID, of tenantID, a browser of its own: a warm one,
// else a new launch. Beyond Max live browsers, or MaxPerTenant of the
// tenant's, it fails with problem.ResourceExhausted (with RetryAfter); a
// launch that fails is problem.Unavailable. The browser is released by
// Release, or by the pool itself at expiresAt.
func (p *BrowserPool) Acquire(ctx context.Context, tenantID, sessionID string, expiresAt time.Time) (*Browser, error) {
	for {
		p.mu.Lock()
		if p.closed {
			p.mu.Unlock()
			return nil, errPoolClosed
		}
		if _, ok := p.bySession[sessionID]; ok {
			p.mu.Unlock()
			return nil, problem.New(problem.Internal, "session %s already has a browser", sessionID)
		}
		if n := p.byTenant[tenantID]; n >= p.maxPerTenant {
			p.mu.Unlock()
			e := problem.New(problem.ResourceExhausted, "tenant %s holds %d browsers, its most", tenantID, n).
				With("limit", p.maxPerTenant)
			e.RetryAfter = browserRetryAfter
			return nil, e
		}
		if b := p.popIdleLocked(); b != nil {
			p.assignLocked(b, tenantID, sessionID, expiresAt)
			p.refillLocked()
			p.mu.Unlock()
			return b, nil
		}
		if p.live < p.max {
			p.live++ // the launch's run goroutine gives it back
			p.mu.Unlock()
			b, err := p.launch(ctx)
			if err != nil {
				return nil, problem.Wrap(problem.Unavailable, err, "starting a browser failed")
			}
			p.mu.Lock()
			if p.closed {
				p.mu.Unlock()
				b.stop()
				return nil, errPoolClosed
			}
			p.assignLocked(b, tenantID, sessionID, expiresAt)
			p.mu.Unlock()
			return b, nil
		}
		if p.warming == 0 && p.dying == 0 {
			live := p.live
			p.mu.Unlock()
			e := problem.New(problem.ResourceExhausted, "all %d browsers are in use", live).With("limit", p.max)
			e.RetryAfter = browserRetryAfter
			return nil, e
		}
		// At Max with warm launches in flight or released browsers being
		// torn down: a slot is ours soon.
		ch := p.changed
		p.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// Lookup returns the browser held by sessionID. It may have died: see
// Browser.Done.
func (p *BrowserPool) Lookup(sessionID string) (*Browser, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	b, ok := p.bySession[sessionID]
	return b, ok
}

// Release kills the browser of sessionID, if it has one — its whole
// process group, SIGKILL — and returns at once: tearing down a Chromium
// and its profile takes from 0.2 to over a second, which neither a close
// request nor the expiry loop should wait for. The returned channel is
// closed once the processes are reaped and the profile is removed (at
// once if the session has no browser); Close waits for it too. Safe to
// call more than once.
func (p *BrowserPool) Release(sessionID string) (done <-chan struct{}) {
	p.mu.Lock()
	b := p.detachLocked(sessionID)
	p.mu.Unlock()
	if b == nil {
		return closedChan
	}
	p.log.Debug("browser released", zap.String("sessionId", sessionID), zap.String("browser", b.ID))
	b.kill()
	return b.Done()
}

// closedChan is Release's answer for a session without a browser.
var closedChan = func() chan struct{} { c := make(chan struct{}); close(c); return c }()

// Stats is a snapshot of the pool.
func (p *BrowserPool) Stats() BrowserStats {
	p.mu.Lock()
	defer p.mu.Unlock()
	return BrowserStats{Live: len(p.all), Warm: len(p.idle), InUse: len(p.bySession)}
}

// Close kills every browser, in use or warm, and waits until all are
// reaped and their profiles removed. The pool launches nothing after.
func (p *BrowserPool) Close() {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		p.wg.Wait()
		return
	}
	p.closed = true
	for _, b := range p.bySession {
		b.timer.Stop()
	}
	all := make([]*Browser, 0, len(p.all))
	for b := range p.all {
		all = append(all, b)
	}
	p.notifyLocked()
	p.mu.Unlock()
	p.stopLaunches()
	for _, b := range all {
		b.kill()
	}
	p.wg.Wait()
}

var errPoolClosed = problem.New(problem.Unavailable, "the browser pool is shut down")

// popIdleLocked takes the oldest warm browser that is still alive.
func (p *BrowserPool) popIdleLocked() *Browser {
	for len(p.idle) > 0 {
		b := p.idle[0]
		p.idle = p.idle[1:]
		select {
		case <-b.ctx.Done():
			continue // died while idle; its run goroutine is cleaning up
		default:
			return b
		}
	}
	return nil
}

// assignLocked hands b to sessionID, with the safety-net release at
// expiresAt: a browser never outlives its session, whether or not the
// expiry is recorded and Release called.
func (p *BrowserPool) assignLocked(b *Browser, tenantID, sessionID string, expiresAt time.Time) {
	b.sessionID, b.tenantID = sessionID, tenantID
	p.bySession[sessionID] = b
	p.byTenant[tenantID]++
	b.timer = time.AfterFunc(time.Until(expiresAt), func() {
		p.mu.Lock()
		if p.bySession[sessionID] != b {
			p.mu.Unlock()
			return
		}
		p.detachLocked(sessionID)
		p.mu.Unlock()
		p.log.Info("browser released at session expiry", zap.String("sessionId", sessionID), zap.String("browser", b.ID))
		b.kill()
	})
}

// detachLocked removes sessionID's browser from the pool's books and
// returns it (nil if none), counted as dying until it is reaped.
func (p *BrowserPool) detachLocked(sessionID string) *Browser {
	b, ok := p.bySession[sessionID]
	if !ok {
		return nil
	}
	delete(p.bySession, sessionID)
	if p.byTenant[b.tenantID]--; p.byTenant[b.tenantID] <= 0 {
		delete(p.byTenant, b.tenantID)
	}
	b.timer.Stop()
	b.dying = true
	p.dying++
	return b
}

// refillLocked launches warm browsers in the background until Warm are
// idle or starting, within Max — unless a warm launch failed lately.
func (p *BrowserPool) refillLocked() {
	if !p.started || p.closed || time.Since(p.failedAt) < warmBackoff {
		return
	}
	for len(p.idle)+p.warming < p.warm && p.live < p.max {
		p.live++
		p.warming++
		p.wg.Add(1)
		go p.warmOne()
	}
}

// warmOne launches one browser into the warm pool.
func (p *BrowserPool) warmOne() {
	defer p.wg.Done()
	b, err := p.launch(p.launchCtx)
	p.mu.Lock()
	p.warming--
	if err != nil {
		p.failedAt = time.Now()
		if p.startError == nil {
			p.startError = problem.Wrap(problem.Unavailable, err, "starting a browser failed")
		}
		p.notifyLocked()
		p.mu.Unlock()
		if !errors.Is(err, context.Canceled) {
			p.log.Error("warm browser launch failed", zap.Error(err))
		}
		return
	}
	if p.closed {
		p.mu.Unlock()
		b.stop()
		return
	}
	p.idle = append(p.idle, b)
	p.notifyLocked()
	p.mu.Unlock()
}

// gone is called by a browser's run goroutine once its processes are
// reaped and its profile removed: the slot is free again.
func (p *BrowserPool) gone(b *Browser) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.live--
	if b.dying {
		p.dying--
	}
	delete(p.all, b)
	for i, ib := range p.idle {
		if ib == b {
			p.idle = append(p.idle[:i], p.idle[i+1:]...)
			break
		}
	}
	p.notifyLocked()
	p.refillLocked()
}

// notifyLocked wakes whoever waits for the pool to change.
func (p *BrowserPool) notifyLocked() {
	close(p.changed)
	p.changed = make(chan struct{})
}

// findChromium resolves BrowserOptions.Chromium.
func findChromium(path string) (string, error) {
	if path != "" {
		p, err := exec.LookPath(path)
		if err != nil {
			return "", fmt.Errorf("chromium %s: %w", path, err)
		}
		return p, nil
	}
	for _, name := range chromiumNames {
		if p, err := exec.LookPath(name); err == nil {
			return p, nil
		}
	}
	return "", fmt.Errorf("no Chromium found on PATH (tried %v): %w", chromiumNames, exec.ErrNotFound)
}
