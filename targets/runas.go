package targets

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
)

// Credential is the user and group workloads run as (Options.RunAs).
// Workloads that run as the gateway's own user can read what the gateway
// can: its data directory with the signing keys and the database, and its
// environment through /proc. A separate, unprivileged user cannot.
type Credential struct {
	UID, GID uint32
}

// String is "uid:gid".
func (c Credential) String() string { return fmt.Sprintf("%d:%d", c.UID, c.GID) }

// sysProcCredential is the credential of a workload's process: the user,
// the group, and no supplementary groups (the gateway's would leak).
func (c *Credential) sysProcCredential() *syscall.Credential {
	if c == nil {
		return nil
	}
	return &syscall.Credential{Uid: c.UID, Gid: c.GID, Groups: []uint32{}}
}

// prepareRoot creates a sandbox root. With a run-as user the root is
// handed to it, the directories the gateway creates above it are made
// traversable (0711: others may pass, not list), and every directory
// from / down is checked to let that user through, so a data directory
// under, say, a 0700 home fails here with the reason instead of as an
// EACCES from the workload's chdir.
func prepareRoot(root string, runAs *Credential) error {
	if runAs == nil {
		return os.MkdirAll(root, 0o750)
	}
	if err := os.MkdirAll(filepath.Dir(root), 0o711); err != nil {
		return err
	}
	// The tenant's directory may predate the run-as user (0750 then).
	if err := os.Chmod(filepath.Dir(root), 0o711); err != nil {
		return err
	}
	if err := os.Mkdir(root, 0o750); err != nil && !errors.Is(err, fs.ErrExist) {
		return err
	}
	if err := os.Chown(root, int(runAs.UID), int(runAs.GID)); err != nil {
		return err
	}
	return CheckReach(filepath.Dir(root), *runAs)
}

// CheckReach reports whether user cred can traverse every directory from
// / down to dir (the execute bit that applies to it: owner, group or
// other). It reads modes; it does not switch users.
func CheckReach(dir string, cred Credential) error {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return err
	}
	for d := abs; ; d = filepath.Dir(d) {
		fi, err := os.Stat(d)
		if err != nil {
			return err
		}
		st, ok := fi.Sys().(*syscall.Stat_t)
		if !ok {
			return fmt.Errorf("%s: no ownership information", d)
		}
		var bit fs.FileMode
		switch {
		case st.Uid == cred.UID:
			bit = 0o100
		case st.Gid == cred.GID:
			bit = 0o010
		default:
			bit = 0o001
		}
		if fi.Mode().Perm()&bit == 0 {
			return fmt.Errorf("sandbox user %s cannot reach %s: %s is mode %04o, owned by %d:%d (give others search permission, e.g. chmod o+x, or use a data directory it can reach)",
				cred, abs, d, fi.Mode().Perm(), st.Uid, st.Gid)
		}
		if d == filepath.Dir(d) {
			return nil
		}
	}
}
