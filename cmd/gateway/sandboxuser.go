package main

import (
	"errors"
	"fmt"
	"math"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

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
		if f < minBlockID || l < f || l > math.MaxInt32 {
			return nil, nil, fmt.Errorf("--sandbox-user %q: a block of user ids is first-last, like 200000-299999, from %d up (ids below are the system's and its users') to %d", spec, minBlockID, math.MaxInt32)
		}
		if id, name, ok := idInBlock(uint32(f), uint32(l)); ok {
			return nil, nil, fmt.Errorf("--sandbox-user %q: %s (id %d) is in the block; sandboxes must not share an id with anyone", spec, name, id)
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

// openDataDirTo lets the sandbox users pass through the data directory
// (search permission, not listing) to the sandbox roots under it, and
// checks they can reach them. Everything beside the roots is closed to
// others (keys/ and browsers/ are 0700 already; an existing database may
// be 0644).
func openDataDirTo(dataDir string, cred targets.Credential) error {
	if err := openDataDir(dataDir, "sandboxes", "browsers"); err != nil {
		return err
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

// minBlockID is the lowest id of a block: ids below 65536 are the
// system's and its users' (login.defs, systemd's dynamic users).
const minBlockID = 65536

// idInBlock finds a user or group of /etc/passwd or /etc/group whose id
// is in first..last.
func idInBlock(first, last uint32) (uint32, string, bool) {
	for _, f := range []string{"/etc/passwd", "/etc/group"} {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		for line := range strings.SplitSeq(string(b), "\n") {
			fields := strings.Split(line, ":")
			if len(fields) < 3 {
				continue
			}
			id, err := strconv.ParseUint(fields[2], 10, 32)
			if err == nil && uint32(id) >= first && uint32(id) <= last {
				return uint32(id), filepath.Base(f) + " entry " + fields[0], true
			}
		}
	}
	return 0, "", false
}

// lockDataDir holds an exclusive lock on the data directory for the
// gateway's life. With a block of ids a gateway claims, at start, every
// process and sandbox root under it: a second gateway on the same
// directory would kill the first one's workloads and close its roots.
func lockDataDir(dataDir string) (unlock func(), err error) {
	f, err := os.OpenFile(filepath.Join(dataDir, ".lock"), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, err
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, fmt.Errorf("another gateway runs on data directory %s; with a block of user ids each gateway needs its own (and its own block)", dataDir)
		}
		return nil, err
	}
	return func() { _ = f.Close() }, nil // closing releases the lock
}
