package main

import (
	"fmt"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/nimbus/gateway/targets"
)

// parseSandboxUsers reads --sandbox-user: a block of ids "first-last",
// one per sandbox (see targets.UIDRange); or one user for all, "name",
// "uid", "name:group" or "uid:gid" (without a group, the user's primary
// group). Empty means workloads run as the gateway's own user.
func parseSandboxUsers(spec string) (*targets.Credential, *targets.UIDRange, error) {
	first, last, dash := strings.Cut(spec, "-")
	f, err1 := strconv.ParseUint(first, 10, 32)
	l, err2 := strconv.ParseUint(last, 10, 32)
	if dash && err1 == nil && err2 == nil { // numbers: a block; else a name like www-data
		if f == 0 || l < f {
			return nil, nil, fmt.Errorf("--sandbox-user %q: a block of user ids is first-last, like 200000-299999, first above 0", spec)
		}
		if os.Geteuid() != 0 {
			return nil, nil, fmt.Errorf("--sandbox-user needs the gateway to run as root (to start workloads as users %s)", spec)
		}
		return nil, &targets.UIDRange{First: uint32(f), Last: uint32(l)}, nil
	}
	c, err := parseSandboxUser(spec)
	return c, nil, err
}

// parseSandboxUser reads one user of --sandbox-user.
func parseSandboxUser(spec string) (*targets.Credential, error) {
	if spec == "" {
		return nil, nil
	}
	name, group, hasGroup := strings.Cut(spec, ":")
	u, err := lookupUser(name)
	if err != nil {
		return nil, fmt.Errorf("--sandbox-user %q: %w", spec, err)
	}
	uid, err := strconv.ParseUint(u.Uid, 10, 32)
	if err != nil {
		return nil, fmt.Errorf("--sandbox-user %q: uid %q", spec, u.Uid)
	}
	gidStr := u.Gid
	if hasGroup {
		if gidStr, err = lookupGroup(group); err != nil {
			return nil, fmt.Errorf("--sandbox-user %q: %w", spec, err)
		}
	}
	gid, err := strconv.ParseUint(gidStr, 10, 32)
	if err != nil {
		return nil, fmt.Errorf("--sandbox-user %q: gid %q", spec, gidStr)
	}
	if uid == 0 {
		return nil, fmt.Errorf("--sandbox-user %q is root: name an unprivileged user", spec)
	}
	if os.Geteuid() != 0 {
		return nil, fmt.Errorf("--sandbox-user needs the gateway to run as root (to start workloads as %s)", spec)
	}
	return &targets.Credential{UID: uint32(uid), GID: uint32(gid)}, nil
}

// lookupUser accepts a name or a numeric uid, known to the system or not.
func lookupUser(s string) (*user.User, error) {
	if u, err := user.Lookup(s); err == nil {
		return u, nil
	}
	if _, err := strconv.ParseUint(s, 10, 32); err != nil {
		return nil, fmt.Errorf("no user %q", s)
	}
	if u, err := user.LookupId(s); err == nil {
		return u, nil
	}
	return &user.User{Uid: s, Gid: s}, nil // a bare uid: its own group id
}

func lookupGroup(s string) (string, error) {
	if g, err := user.LookupGroup(s); err == nil {
		return g.Gid, nil
	}
	if _, err := strconv.ParseUint(s, 10, 32); err != nil {
		return "", fmt.Errorf("no group %q", s)
	}
	return s, nil
}

// openDataDirTo lets the sandbox user pass through the data directory
// (search permission, not listing) to the sandbox roots under it, and
// checks it can reach them. The secrets beside them stay closed: keys/
// and browsers/ are 0700, the SQLite files 0600.
func openDataDirTo(dataDir string, cred targets.Credential) error {
	fi, err := os.Stat(dataDir)
	if err != nil {
		return err
	}
	if fi.Mode().Perm()&0o001 == 0 {
		if err := os.Chmod(dataDir, fi.Mode().Perm()|0o001); err != nil {
			return err
		}
	}
	sbDir := filepath.Join(dataDir, "sandboxes")
	if err := os.MkdirAll(sbDir, 0o711); err != nil {
		return err
	}
	if err := os.Chmod(sbDir, 0o711); err != nil {
		return err
	}
	return targets.CheckReach(sbDir, cred)
}
