package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"

	"go.uber.org/zap"

	"github.com/nimbus/gateway/targets"
)

// The --sandbox-runtime values (SPEC §9.1).
const (
	runtimeAuto    = "auto"
	runtimeRunc    = "runc"
	runtimeProcess = "process"
)

// defaultSandboxUsers is the block the runc runtime gives sandboxes when
// --sandbox-user names none: a container runs as a user of its own.
const defaultSandboxUsers = "200000-299999"

// sandboxRuntime picks the runtime of sandbox workloads: runc when asked,
// or by default when the gateway runs as root and runc is on PATH and
// works; else child processes. For runc it returns the block of ids the
// sandboxes get (the default one when --sandbox-user named none; one user
// for all is refused: containers would share it).
func sandboxRuntime(c serveConfig, runAs *targets.Credential, uids *targets.UIDRange, log *zap.Logger) (*targets.Runc, *targets.UIDRange, error) {
	switch c.sandboxRuntime {
	case runtimeProcess:
		return nil, uids, nil
	case "", runtimeAuto, runtimeRunc:
	default:
		return nil, nil, fmt.Errorf("--sandbox-runtime: %q is not one of auto, runc, process", c.sandboxRuntime)
	}
	explicit := c.sandboxRuntime == runtimeRunc // "" (a zero config) is auto
	if !explicit {
		if _, err := exec.LookPath("runc"); err != nil || os.Geteuid() != 0 {
			return nil, uids, nil
		}
	}
	if runAs != nil {
		if explicit {
			return nil, nil, errors.New("--sandbox-runtime runc gives each sandbox a user of its own: --sandbox-user must be a block of ids (first-last), not one user")
		}
		log.Warn("sandboxes run as child processes: --sandbox-user names one user for all, and the runc runtime needs a block")
		return nil, uids, nil
	}
	if uids == nil {
		_, block, err := parseSandboxUsers(defaultSandboxUsers)
		if err != nil {
			return nil, nil, err
		}
		uids = block
	}
	// Absolute: runc and the CNI plugins run in other directories.
	state, err := filepath.Abs(filepath.Join(c.dataDir, "containers"))
	if err != nil {
		return nil, nil, err
	}
	cfg := targets.RuncConfig{
		StateDir: state,
		Defaults: targets.Resources{Memory: c.sandboxMemory, PIDs: int64(c.sandboxPids), CPUs: c.sandboxCPUs},
	}
	// The egress network of sandboxes that ask for one (SPEC §9.3), made
	// at the first such sandbox: a gateway whose sandboxes never ask
	// touches neither the host's bridge nor its firewall.
	if err := os.MkdirAll(state, 0o700); err != nil {
		return nil, nil, err
	}
	cfg.Egress = &lazyEgress{cfg: targets.EgressConfig{StateDir: filepath.Join(state, "net")}, log: log.Named("egress")}
	rt, err := targets.NewRunc(cfg, log.Named("runc"))
	if err != nil {

		if explicit {
			return nil, nil, fmt.Errorf("--sandbox-runtime runc: %w", err)
		}
		log.Warn("sandboxes run as child processes: the runc runtime cannot start", zap.Error(err))
		return nil, uids, nil
	}
	return rt, uids, nil
}

// describeRuntime says, once at start and in /readyz, what runs the
// sandboxes and what that isolates.
func describeRuntime(rt *targets.Runc, log *zap.Logger) string {
	if rt == nil {
		log.Warn("sandboxes run as child processes of the gateway (--sandbox-runtime process): no isolation boundary beyond their user ids; a workload sees the host's processes, files and loopback services")
		return runtimeProcess
	}
	d := rt.Describe()
	log.Info("sandboxes run in containers", zap.String("runtime", d))
	return d
}

// describeBrowsers says what confines the browser service's Chromiums
// (SPEC §9.1b), for /readyz.
func describeBrowsers(pool *targets.BrowserPool, uids *targets.UIDRange) string {
	switch {
	case pool == nil:
		return "disabled"
	case uids != nil:
		return fmt.Sprintf("DevTools over a pipe, no TCP port; each Chromium as its own user (%d-%d); not confined: world-readable host files and the host's loopback", uids.First, uids.Last)
	}
	return "DevTools over a pipe, no TCP port; Chromium runs as the gateway's own user"
}

// lazyEgress makes the CNI egress network (targets.Egress) when a sandbox
// first asks for it, or at start when a previous gateway left namespaces
// to sweep.
type lazyEgress struct {
	cfg targets.EgressConfig
	log *zap.Logger

	mu  sync.Mutex
	e   *targets.Egress // guarded by mu
	err error           // guarded by mu: why it could not be made
}

func (l *lazyEgress) get() (*targets.Egress, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.e == nil && l.err == nil {
		l.e, l.err = targets.NewEgress(l.cfg, l.log)
		if l.err != nil {
			l.log.Warn("no egress network: sandboxes with network egress fail to start", zap.Error(l.err))
		}
	}
	return l.e, l.err
}

func (l *lazyEgress) made() *targets.Egress {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.e
}

// Attach makes id's namespace on the egress network.
func (l *lazyEgress) Attach(ctx context.Context, id string) (string, error) {
	e, err := l.get()
	if err != nil {
		return "", err
	}
	return e.Attach(ctx, id)
}

// Detach removes id's namespace; nothing to do before the network exists.
func (l *lazyEgress) Detach(ctx context.Context, id string) error {
	if e := l.made(); e != nil {
		return e.Detach(ctx, id)
	}
	return nil
}

// Sweep removes what a previous gateway left, if it left any namespace.
func (l *lazyEgress) Sweep(ctx context.Context) error {
	left, _ := os.ReadDir(filepath.Join(l.cfg.StateDir, "netns"))
	if len(left) == 0 && l.made() == nil {
		return nil
	}
	e, err := l.get()
	if err != nil {
		return err
	}
	return e.Sweep(ctx)
}

// ResolvConf is the egress network's resolver file.
func (l *lazyEgress) ResolvConf() ([]byte, error) {
	e, err := l.get()
	if err != nil {
		return nil, err
	}
	return e.ResolvConf()
}

// Close releases the network if it was made.
func (l *lazyEgress) Close() error {
	if e := l.made(); e != nil {
		return e.Close()
	}
	return nil
}
