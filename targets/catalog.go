package targets

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"time"

	"go.uber.org/zap"

	"github.com/nimbus/gateway/problem"
)

// defaultStopGrace is how long a stopping workload gets between SIGTERM and
// SIGKILL.
const defaultStopGrace = 2 * time.Second

// exitWriteTimeout bounds the store write that records a workload's own
// exit.
const exitWriteTimeout = 5 * time.Second

// Catalog is the per-tenant catalog of services and sandboxes (SPEC §2) on
// top of a Store, plus the workloads of the local provider. It validates
// what the admin API (SPEC §4.3) writes, resolves open targets (SPEC §4.1
// step 4), and owns the sandboxes' processes: a sandbox is ready exactly
// while its workload is meant to run. Safe for concurrent use.
type Catalog struct {
	// Static after NewCatalog.
	store     Store
	dataDir   string
	sbDir     string // Options.SandboxDir, absolute
	log       *zap.Logger
	now       func() time.Time
	stopGrace time.Duration
	wcfg      workloadConfig
	uids      *uidAllocator // nil unless Options.UIDs
	runs      *runRecord    // this gateway's workload sessions, for the next one's orphan sweep
	runc      *Runc         // nil: workloads are child processes
	claimOnce sync.Once     // claim

	watchers sync.WaitGroup // one per registered workload, until its exit is handled

	mu sync.Mutex
	// Guarded by mu.
	workloads map[sandboxKey]*Workload
	locks     map[sandboxKey]*keyLock
	closed    bool
}

// Options configure a Catalog. The zero value works: sandboxes under the
// current directory, no logging, the real clock.
type Options struct {
	// DataDir holds the sandbox roots, DataDir/sandboxes/<tenant>/<id>; ""
	// means the current directory. Made absolute by NewCatalog.
	DataDir string
	// SandboxDir, if not "", holds the roots of sandboxes created from
	// now on instead, SandboxDir/<tenant>/<id>: on a file system of its
	// own, a workload or upload that fills it cannot fill the store's
	// (issue 12). A sandbox keeps the root it was created with.
	SandboxDir string
	// Logger logs workload starts, failures and exits; nil means none.
	Logger *zap.Logger
	// Now stamps UpdatedAt; nil means time.Now.
	Now func() time.Time
	// RingSize is each workload's replay ring (SPEC §5.1); 0 means 64 KiB,
	// negative disables replay.
	RingSize int
	// StopGrace is the time between SIGTERM and SIGKILL when a workload is
	// stopped (DeleteSandbox, Close); 0 means 2 s.
	StopGrace time.Duration
	// RunAs, if not nil, is the user and group every workload runs as,
	// owner of its sandbox root; the gateway must then run as root. Nil
	// runs workloads as the gateway's own user (see Credential). One user
	// for all sandboxes lets each workload reach the others' roots and
	// signal their processes; UIDs does not.
	RunAs *Credential
	// UIDs, if not nil, gives each sandbox a user of its own from this
	// block (uid = gid), which overrides RunAs. The store records each
	// sandbox's id (Store.SetSandboxUID).
	UIDs *UIDRange
	// NProc, if positive, is the RLIMIT_NPROC of every workload: the most
	// processes and threads its user may have, beyond which fork and
	// clone fail with EAGAIN, so a workload cannot use up the host's pids
	// and with them the gateway's threads (issue 12). The kernel counts
	// per real user id, so the limit is one sandbox's with UIDs, every
	// sandbox's together with RunAs, and it is not applied to workloads
	// running as the gateway's own user (root is exempt; any other user
	// would count the gateway's own threads). 0 means no limit. The
	// workload is stopped at its exec (ptrace) until the limit is set, so
	// no instruction of it runs unlimited.
	NProc int
	// Runc, if not nil, runs every workload in a container of its own
	// (SPEC §9.1) instead of as a child process; it needs UIDs, and makes
	// NProc moot (the container's pids limit replaces it).
	Runc *Runc
}

// Resolved is what an open's target resolves to (SPEC §4.1 step 4).
type Resolved struct {
	// Kind is the service's kind, KindSandbox for a sandbox target.
	Kind Kind
	// Service is the service for a service target, else nil.
	Service *Service
	// Sandbox is the sandbox for a sandbox target or a sandbox service,
	// else nil.
	Sandbox *Sandbox
	// Offered lists the channels the target offers (Offered(Kind)).
	Offered []Channel
	// Generation is the service's generation for a service target, the
	// sandbox's for a sandbox target; the open's commit compares it.
	Generation int64
	// Dynamic is the service's Dynamic flag (false for a sandbox target).
	Dynamic bool
	// Backend identifies what serves the target, for the session
	// snapshot: "local:<pid>" for a sandbox workload, the URL of an
	// external service, "" for the others (the browser pool names its
	// instance at provisioning).
	Backend string
}

// SandboxSpec is what a client chooses when creating a sandbox.
type SandboxSpec struct {
	// ID names the sandbox within its tenant (same shape as service names).
	ID string `json:"id"`
	// Command is the workload's argv, required. A bare name is looked up
	// in the workload's PATH (its Env's, else the standard one).
	Command []string `json:"command"`
	// TTY runs the workload on a pseudo-terminal (80x24 until resized).
	TTY bool `json:"tty"`
	// Env adds KEY=VALUE entries to the workload's minimal environment.
	Env []string `json:"env,omitempty"`
	// Resources are the workload's limits (SPEC §9.2); zero fields take
	// the gateway's defaults.
	Resources Resources `json:"resources"`
	// Network is none (the default) or egress (SPEC §9.3).
	Network Network `json:"network,omitempty"`
}

type sandboxKey struct{ tenantID, id string }

// keyLock serialises the lifecycle operations of one sandbox (create,
// start, delete, exit handling) without holding up the others.
type keyLock struct {
	mu   sync.Mutex
	refs int // guarded by Catalog.mu
}

// NewCatalog returns a catalog over store. Call Seed and Start before
// serving, Close at shutdown.
func NewCatalog(store Store, opts Options) *Catalog {
	c := &Catalog{
		store:     store,
		log:       opts.Logger,
		now:       opts.Now,
		stopGrace: opts.StopGrace,
		workloads: make(map[sandboxKey]*Workload),
		locks:     make(map[sandboxKey]*keyLock),
	}
	if c.log == nil {
		c.log = zap.NewNop()
	}
	if c.now == nil {
		c.now = time.Now
	}
	if c.stopGrace <= 0 {
		c.stopGrace = defaultStopGrace
	}
	dir := opts.DataDir
	if dir == "" {
		dir = "."
	}
	if abs, err := filepath.Abs(dir); err == nil {
		dir = abs
	}
	c.dataDir = dir
	c.sbDir = filepath.Join(dir, "sandboxes")
	if opts.SandboxDir != "" {
		if abs, err := filepath.Abs(opts.SandboxDir); err == nil {
			c.sbDir = abs
		}
	}
	c.runs = newRunRecord(dir)
	c.wcfg = workloadConfig{ringSize: opts.RingSize, log: c.log, runAs: opts.RunAs, runs: c.runs}
	if opts.NProc > 0 && (opts.UIDs != nil || opts.RunAs != nil) {
		c.wcfg.nproc = uint64(opts.NProc)
	}
	if opts.UIDs != nil {
		c.uids = newUIDAllocator(*opts.UIDs, store, c.sbDir)
	}
	if opts.Runc != nil && c.uids != nil {
		c.runc = opts.Runc
		c.wcfg.nproc = 0
	}
	return c
}

// claim runs once, before the first workload starts (Seed, Start or
// CreateSandbox, whichever comes first): the workload processes of a
// gateway that died on this data directory are killed (killOrphans), then
// the block of ids is claimed (claimUIDs).
func (c *Catalog) claim(ctx context.Context) error {
	var err error
	c.claimOnce.Do(func() {
		// Workloads' descendants left by a gateway that died (Pdeathsig only
		// reaches its direct children) must not run beside the new workloads.
		if n := killOrphans(c.dataDir); n > 0 {
			c.log.Warn("killed workload processes left by a gateway that died", zap.Int("count", n))
		}
		if c.runc != nil {
			n, serr := c.runc.Sweep(ctx)
			if n > 0 {
				c.log.Warn("removed containers left by a gateway that died", zap.Int("count", n))
			}
			if serr != nil {
				c.log.Warn("cannot remove every container left by a gateway that died", zap.Error(serr))
			}
		}
		err = c.claimUIDs(ctx)
	})
	return err
}

// claimUIDs runs in claim when sandboxes get ids from a block: whatever
// still runs under the block's ids — workloads of a gateway that died, or
// children that escaped their sandbox's process group and session; no
// workload can change its uid — is killed, the ids the store records are
// loaded (a root that belongs to a block id and whose sandbox has none
// recorded, from a gateway that did not store ids, keeps it), and every
// sandbox root is closed until its workload starts again. The block must
// be this gateway's alone.
func (c *Catalog) claimUIDs(ctx context.Context) error {
	if c.uids == nil {
		return nil
	}
	r := c.uids.r
	inBlock := func(uid uint32) bool { return uid >= r.First && uid <= r.Last }
	if n := killUsers(inBlock); n > 0 {
		c.log.Warn("killed processes left running under the sandbox user ids", zap.Int("count", n))
		waitReaped(inBlock) // the sandboxes restart with their ids at once
	}
	sbs, err := c.store.ListSandboxes(ctx, "")
	if err != nil {
		return err
	}
	c.uids.load(sbs)
	for _, sb := range sbs {
		if sb.Root == "" {
			sb.Root = c.root(sb.TenantID, sb.ID)
		}
		if fi, err := os.Lstat(sb.Root); err == nil && fi.IsDir() && (sb.UID < r.First || sb.UID > r.Last) {
			if st, ok := fi.Sys().(*syscall.Stat_t); ok {
				if err := c.uids.adopt(ctx, sandboxKey{sb.TenantID, sb.ID}, st.Uid); err != nil {
					c.log.Warn("cannot record a sandbox's user id", zap.String("tenant", sb.TenantID), zap.String("sandbox", sb.ID), zap.Error(err))
				}
			}
		}
		if lerr := lockRoot(sb.Root); lerr != nil {
			c.log.Warn("cannot close a sandbox root", zap.String("root", sb.Root), zap.Error(lerr))
		}
	}
	return nil
}

// RunAs is the user the workload of a sandbox runs as, nil for the
// gateway's own; the files channel gives what it creates to this user.
func (c *Catalog) RunAs(tenantID, id string) *Credential {
	if c.uids == nil {
		return c.wcfg.runAs
	}
	if uid, ok := c.uids.lookup(sandboxKey{tenantID, id}); ok {
		return &Credential{UID: uid, GID: uid}
	}
	return nil
}

// Seed adds cfg to the catalog; it is idempotent and safe on every start.
// Each service is PutService'd (an unchanged definition keeps its
// generation, a changed one gets the next). Each sandbox that does not
// exist is created and started; existing sandboxes are left exactly as
// they are, whatever their state, so a restart never resets the catalog.
// Entries absent from cfg are not removed.
func (c *Catalog) Seed(ctx context.Context, cfg *Config) error {
	if err := cfg.Validate(); err != nil {
		return err
	}
	if err := c.claim(ctx); err != nil {
		return err
	}
	for _, t := range cfg.Tenants {
		for _, sc := range t.Sandboxes {
			_, err := c.store.GetSandbox(ctx, t.ID, sc.ID)
			if err == nil {
				continue
			}
			if problem.CodeOf(err) != problem.NotFound {
				return err
			}
			sb, err := c.CreateSandbox(ctx, t.ID, sc.spec())
			switch {
			case problem.CodeOf(err) == problem.AlreadyExists: // created meanwhile
			case err != nil:
				return err
			case sb.State == Failed:
				c.log.Warn("seeded sandbox failed to start",
					zap.String("tenant", t.ID), zap.String("sandbox", sc.ID), zap.String("error", sb.Error))
			}
		}
		for _, sc := range t.Services {
			if _, err := c.PutService(ctx, sc.service(t.ID)); err != nil {
				return err
			}
		}
	}
	return nil
}

// Start starts the workload of every sandbox, of every tenant, that is
// pending or ready but has none: after a restart the processes are gone
// while the store still says ready. Each becomes ready, or failed with the
// reason. It returns an error only when the store cannot be read or
// written.
func (c *Catalog) Start(ctx context.Context) error {
	if err := c.claim(ctx); err != nil {
		return err
	}
	sbs, err := c.store.ListSandboxes(ctx, "")
	if err != nil {
		return err
	}
	for _, sb := range sbs {
		if sb.State != Pending && sb.State != Ready {
			continue
		}
		if err := c.restart(ctx, sb); err != nil {
			return err
		}
	}
	return nil
}

func (c *Catalog) restart(ctx context.Context, sb Sandbox) error {
	k := sandboxKey{sb.TenantID, sb.ID}
	unlock := c.lock(k)
	defer unlock()
	if _, ok := c.Workload(sb.TenantID, sb.ID); ok {
		return nil // started by Seed or an earlier Start
	}
	if sb.Root == "" {
		sb.Root = c.root(sb.TenantID, sb.ID)
	}
	sb, err := c.start(ctx, sb)
	if err == nil && sb.State == Failed {
		c.log.Warn("sandbox failed to restart",
			zap.String("tenant", sb.TenantID), zap.String("sandbox", sb.ID), zap.String("error", sb.Error))
	}
	return err
}

// Close stops every workload (gateway shutdown) and waits for them. Their
// sandboxes keep their stored state, so the next Start restarts them.
// Afterwards creating or starting sandboxes fails with Unavailable; a
// CreateSandbox racing with Close stops its own workload before it returns,
// so call Close once the admin API has stopped taking requests.
// Idempotent.
func (c *Catalog) Close() {
	c.mu.Lock()
	c.closed = true
	ws := make([]*Workload, 0, len(c.workloads))
	for k, w := range c.workloads {
		ws = append(ws, w)
		delete(c.workloads, k)
	}
	c.mu.Unlock()
	var wg sync.WaitGroup
	for _, w := range ws {
		wg.Add(1)
		go func() {
			defer wg.Done()
			w.Stop(c.stopGrace)
		}()
	}
	wg.Wait()
	c.watchers.Wait()
	// The run's record stays: a child that left its workload's session
	// (setsid) outlives Stop, and the next gateway's sweep finds it by
	// this run's environment mark.
}

// Resolve resolves an open's target for tenantID (SPEC §4.1 step 4):
// NotFound when the service or sandbox does not exist (or a sandbox
// service's sandbox is gone), SandboxNotReady (details.sandbox,
// details.state) when the sandbox is not ready, InvalidArgument (field
// "target") unless exactly one of t.Service and t.Sandbox is set.
// Unavailable when a ready sandbox has no running workload yet (between a
// restart and Start) or any more (it just exited).
func (c *Catalog) Resolve(ctx context.Context, tenantID string, t Target) (*Resolved, error) {
	switch {
	case (t.Service == nil) == (t.Sandbox == nil):
		return nil, invalid("target", "exactly one of service and sandbox must be set")
	case t.Service != nil:
		svc, err := c.store.GetService(ctx, tenantID, t.Service.Name)
		if problem.CodeOf(err) == problem.NotFound {
			return nil, problem.Wrap(problem.NotFound, err, "service "+strconv.Quote(t.Service.Name)+" not found")
		}
		if err != nil {
			return nil, err
		}
		r := &Resolved{Kind: svc.Kind, Service: &svc, Offered: Offered(svc.Kind), Generation: svc.Generation, Dynamic: svc.Dynamic}
		switch svc.Kind {
		case KindSandbox:
			sb, backend, err := c.readySandbox(ctx, tenantID, svc.Sandbox)
			if err != nil {
				return nil, err
			}
			r.Sandbox, r.Backend = &sb, backend
		case KindExternal:
			r.Backend = svc.URL
		}
		return r, nil
	default:
		sb, backend, err := c.readySandbox(ctx, tenantID, t.Sandbox.ID)
		if err != nil {
			return nil, err
		}
		return &Resolved{Kind: KindSandbox, Sandbox: &sb, Offered: Offered(KindSandbox), Generation: sb.Generation, Backend: backend}, nil
	}
}

// readySandbox loads a sandbox that must be ready with a running workload.
func (c *Catalog) readySandbox(ctx context.Context, tenantID, id string) (Sandbox, string, error) {
	sb, err := c.store.GetSandbox(ctx, tenantID, id)
	if problem.CodeOf(err) == problem.NotFound {
		return Sandbox{}, "", problem.Wrap(problem.NotFound, err, "sandbox "+strconv.Quote(id)+" not found")
	}
	if err != nil {
		return Sandbox{}, "", err
	}
	if sb.State != Ready {
		return Sandbox{}, "", problem.New(problem.SandboxNotReady, "sandbox %q is %s", id, sb.State).
			With("sandbox", id).With("state", string(sb.State))
	}
	if sb.Root == "" {
		sb.Root = c.root(tenantID, id) // a record written without one
	}
	w, ok := c.Workload(tenantID, id)
	if !ok || isDone(w) {
		return Sandbox{}, "", problem.New(problem.Unavailable, "sandbox %q has no running workload", id)
	}
	return sb, "local:" + strconv.Itoa(w.PID()), nil
}

// Workload returns the sandbox's workload: the running process, or one
// that exited by itself (its sandbox is then failed, but attached clients
// still drain its output and exit status). False when the sandbox has
// none: unknown, deleted, never started, or the catalog closed.
func (c *Catalog) Workload(tenantID, id string) (*Workload, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	w, ok := c.workloads[sandboxKey{tenantID, id}]
	return w, ok
}

// root is the sandbox's file root.
func (c *Catalog) root(tenantID, id string) string {
	return filepath.Join(c.sbDir, tenantID, id)
}

// lock takes the lifecycle lock of sandbox k; call the result to release.
func (c *Catalog) lock(k sandboxKey) (unlock func()) {
	c.mu.Lock()
	l := c.locks[k]
	if l == nil {
		l = &keyLock{}
		c.locks[k] = l
	}
	l.refs++
	c.mu.Unlock()
	l.mu.Lock()
	return func() {
		l.mu.Unlock()
		c.mu.Lock()
		if l.refs--; l.refs == 0 {
			delete(c.locks, k)
		}
		c.mu.Unlock()
	}
}

func isDone(w *Workload) bool {
	select {
	case <-w.Done():
		return true
	default:
		return false
	}
}
