package targets

import (
	"context"
	"fmt"
	"slices"

	"go.uber.org/zap"

	"github.com/nimbus/gateway/problem"
)

// CreateSandbox creates a sandbox and runs its workload (admin API, SPEC
// §4.3). It validates the input (InvalidArgument naming the field), stores
// the sandbox as pending (AlreadyExists unless the id is free or its
// sandbox stopped), creates its root DataDir/sandboxes/<tenant>/<id>
// (0750), starts the workload synchronously and returns the sandbox as
// stored afterwards: ready, or failed with Error saying why (command not
// found, not executable, …). A failed start is not an error of the call.
func (c *Catalog) CreateSandbox(ctx context.Context, tenantID string, spec SandboxSpec) (Sandbox, error) {
	if err := checkName("tenant", tenantID); err != nil {
		return Sandbox{}, err
	}
	if err := validateSpec("", spec); err != nil {
		return Sandbox{}, err
	}
	if c.isClosed() {
		return Sandbox{}, errShuttingDown()
	}
	unlock := c.lock(sandboxKey{tenantID, spec.ID})
	defer unlock()
	sb, err := c.store.CreateSandbox(ctx, Sandbox{
		TenantID:  tenantID,
		ID:        spec.ID,
		State:     Pending,
		Command:   slices.Clone(spec.Command),
		TTY:       spec.TTY,
		Env:       slices.Clone(spec.Env),
		Resources: spec.Resources,
		Network:   spec.Network,
		Root:      c.root(tenantID, spec.ID),
		UpdatedAt: c.now(),
	})
	if err != nil {
		return Sandbox{}, err
	}
	return c.start(ctx, sb)
}

// GetSandbox returns a sandbox; NotFound when the tenant has none of that
// id.
func (c *Catalog) GetSandbox(ctx context.Context, tenantID, id string) (Sandbox, error) {
	if err := checkName("tenant", tenantID); err != nil {
		return Sandbox{}, err
	}
	if err := checkName("id", id); err != nil {
		return Sandbox{}, err
	}
	sb, err := c.store.GetSandbox(ctx, tenantID, id)
	if err == nil && sb.State == Ready {
		if w, ok := c.Workload(tenantID, id); ok {
			sb.Usage = w.Usage()
		}
	}
	return sb, err
}

// ListSandboxes returns the tenant's sandboxes by id (empty, not nil, for
// none).
func (c *Catalog) ListSandboxes(ctx context.Context, tenantID string) ([]Sandbox, error) {
	if err := checkName("tenant", tenantID); err != nil {
		return nil, err // "" would list every tenant's
	}
	sbs, err := c.store.ListSandboxes(ctx, tenantID)
	if sbs == nil && err == nil {
		sbs = []Sandbox{}
	}
	return sbs, err
}

// DeleteSandbox stops the sandbox's workload (SIGTERM to its process group,
// SIGKILL after StopGrace, waiting for it) and records it as stopped. It is
// idempotent: deleting a stopped sandbox returns it unchanged. NotFound
// when it does not exist. The root directory is kept; sessions open on the
// sandbox see their stdio end (the workload exits).
func (c *Catalog) DeleteSandbox(ctx context.Context, tenantID, id string) (Sandbox, error) {
	if err := checkName("tenant", tenantID); err != nil {
		return Sandbox{}, err
	}
	if err := checkName("id", id); err != nil {
		return Sandbox{}, err
	}
	k := sandboxKey{tenantID, id}
	unlock := c.lock(k)
	defer unlock()
	sb, err := c.store.GetSandbox(ctx, tenantID, id)
	if err != nil {
		return Sandbox{}, err
	}
	c.mu.Lock()
	w := c.workloads[k]
	delete(c.workloads, k) // so the exit watcher leaves the state to us
	c.mu.Unlock()
	if w != nil {
		w.Stop(c.stopGrace)
	}
	if c.uids != nil {
		// The id may go to another sandbox: first kill whatever still runs
		// under it and take the root back.
		if uid, ok := c.uids.lookup(k); ok {
			if n := killUsers(func(u uint32) bool { return u == uid }); n > 0 {
				c.log.Warn("killed processes that escaped a deleted sandbox", zap.String("tenant", tenantID), zap.String("sandbox", id), zap.Int("count", n))
				waitReaped(func(u uint32) bool { return u == uid }) // their zombies count against the id's RLIMIT_NPROC
			}
			root := sb.Root
			if root == "" {
				root = c.root(tenantID, id)
			}
			if err := lockRoot(root); err != nil {
				c.log.Warn("cannot take a deleted sandbox's root back; its user id stays reserved", zap.String("root", root), zap.Error(err))
			} else if len(userProcesses(func(u uint32) bool { return u == uid })) == 0 {
				if err := c.uids.release(context.WithoutCancel(ctx), k); err != nil {
					c.log.Warn("cannot release a deleted sandbox's user id; it stays reserved", zap.String("tenant", tenantID), zap.String("sandbox", id), zap.Error(err))
				}
			}
		}
	}
	if sb.State == Stopped {
		return sb, nil
	}
	// The process is gone; record it even if the caller has given up.
	sb, err = c.store.SetSandboxState(context.WithoutCancel(ctx), tenantID, id, Stopped, "")
	if err != nil {
		return Sandbox{}, err
	}
	c.log.Info("sandbox stopped", zap.String("tenant", tenantID), zap.String("sandbox", id))
	return sb, nil
}

// start runs sb's workload and records the outcome; the caller holds sb's
// key lock. Once a process runs, its state is recorded whatever happens to
// ctx, so the store never says pending about a running workload.
func (c *Catalog) start(ctx context.Context, sb Sandbox) (Sandbox, error) {
	ctx = context.WithoutCancel(ctx)
	if err := c.claim(ctx); err != nil {
		return c.fail(ctx, sb, "claim the sandboxes: "+err.Error())
	}
	cfg := c.wcfg
	if c.uids != nil {
		uid, err := c.uids.acquire(ctx, sandboxKey{sb.TenantID, sb.ID}, sb.Root)
		if err != nil {
			return c.fail(ctx, sb, err.Error())
		}
		cfg.runAs = &Credential{UID: uid, GID: uid}
	}
	if c.runc != nil && cfg.runAs == nil {
		return c.fail(ctx, sb, "the runc runtime needs a block of sandbox user ids")
	}
	if err := prepareRoot(sb.Root, cfg.runAs, c.runc != nil); err != nil {
		return c.fail(ctx, sb, "create sandbox root: "+err.Error())
	}
	var w *Workload
	var err error
	if c.runc != nil {
		w, err = c.runc.startContainer(sb, *cfg.runAs, cfg)
	} else {
		w, err = startWorkload(sb, cfg)
	}
	if err != nil {
		return c.fail(ctx, sb, "start workload: "+err.Error())
	}
	saved, err := c.store.SetSandboxState(ctx, sb.TenantID, sb.ID, Ready, "")
	if err != nil {
		w.Stop(c.stopGrace)
		return Sandbox{}, err
	}
	if !c.register(sandboxKey{sb.TenantID, sb.ID}, w) {
		w.Stop(c.stopGrace) // the store keeps ready: the next Start restarts it
		return Sandbox{}, errShuttingDown()
	}
	c.log.Info("sandbox ready", zap.String("tenant", sb.TenantID), zap.String("sandbox", sb.ID),
		zap.Int("pid", w.PID()), zap.Bool("tty", w.TTY()))
	return saved, nil
}

func (c *Catalog) fail(ctx context.Context, sb Sandbox, reason string) (Sandbox, error) {
	c.log.Warn("sandbox failed", zap.String("tenant", sb.TenantID), zap.String("sandbox", sb.ID), zap.String("error", reason))
	return c.store.SetSandboxState(ctx, sb.TenantID, sb.ID, Failed, reason)
}

// register makes w the sandbox's workload and watches for its exit; false
// when the catalog is closed.
func (c *Catalog) register(k sandboxKey, w *Workload) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return false
	}
	c.workloads[k] = w
	c.watchers.Add(1) // under mu, so never after Close's Wait began
	go c.watch(k, w)
	return true
}

// watch records a workload's own exit: its sandbox becomes failed with the
// exit status, unless the exit was asked for (DeleteSandbox unregistered it
// first; Close is shutting down and the state must survive for Start). The
// workload stays registered so attached clients drain it.
func (c *Catalog) watch(k sandboxKey, w *Workload) {
	defer c.watchers.Done()
	<-w.Done()
	unlock := c.lock(k)
	defer unlock()
	c.mu.Lock()
	current := c.workloads[k] == w && !c.closed
	c.mu.Unlock()
	if !current {
		return
	}
	st := w.Exit()
	reason := fmt.Sprintf("workload exited with code %d", st.Code)
	switch {
	case st.Reason == ReasonOOM:
		reason = "workload killed for going over its memory limit (oom)"
	case st.Signal != "":
		reason = "workload killed by " + st.Signal
	}
	ctx, cancel := context.WithTimeout(context.Background(), exitWriteTimeout)
	defer cancel()
	if _, err := c.store.SetSandboxExit(ctx, k.tenantID, k.id, reason, st.Reason); err != nil {
		c.log.Error("cannot record workload exit", zap.String("tenant", k.tenantID), zap.String("sandbox", k.id), zap.Error(err))
		return
	}
	c.log.Info("sandbox workload exited", zap.String("tenant", k.tenantID), zap.String("sandbox", k.id), zap.String("reason", reason))
}

func (c *Catalog) isClosed() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.closed
}

func errShuttingDown() *problem.Error {
	return problem.New(problem.Unavailable, "the gateway is shutting down")
}
