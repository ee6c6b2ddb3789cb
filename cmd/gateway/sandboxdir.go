package main

import (
	"fmt"
	"os"

	"github.com/nimbus/gateway/targets"
)

// openSandboxesTo lets cred, the sandbox users, reach the sandbox roots:
// through the data directory (openDataDirTo), and, with
// --sandbox-root-dir, to that directory, made 0711 like
// <data-dir>/sandboxes (search, not listing).
func openSandboxesTo(c serveConfig, cred targets.Credential) error {
	if err := openDataDirTo(c.dataDir, cred); err != nil {
		return err
	}
	if c.sandboxRootDir == "" {
		return nil
	}
	if err := os.MkdirAll(c.sandboxRootDir, 0o711); err != nil {
		return fmt.Errorf("--sandbox-root-dir: %w", err)
	}
	if err := os.Chmod(c.sandboxRootDir, 0o711); err != nil {
		return fmt.Errorf("--sandbox-root-dir: %w", err)
	}
	if err := targets.CheckReach(c.sandboxRootDir, cred); err != nil {
		return fmt.Errorf("--sandbox-root-dir: %w", err)
	}
	return nil
}
