package main

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"

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
	// The egress network of sandboxes that ask for one (SPEC §9.3); without
	// it they fail to start and say why, the others run.
	if err := os.MkdirAll(state, 0o700); err != nil {
		return nil, nil, err
	}
	if e, err := targets.NewEgress(targets.EgressConfig{StateDir: filepath.Join(state, "net")}, log.Named("egress")); err != nil {
		log.Warn("no egress network: sandboxes with network egress will fail to start", zap.Error(err))
	} else {
		cfg.Egress = e
	}
	rt, err := targets.NewRunc(cfg, log.Named("runc"))
	if err != nil {
		if e, ok := cfg.Egress.(*targets.Egress); ok {
			_ = e.Close()
		}
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
