package main

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"

	"github.com/nimbus/gateway/targets"
)

// defaultBrowserUsers is --browser-user's block when the gateway runs as
// root: 100,000 ids above the sandboxes' usual block (200000-299999).
const defaultBrowserUsers = "300000-399999"

// parseBrowserUsers reads --browser-user: "auto" (the default block when
// the gateway is root, else none), "off", or a block "first-last". Each
// Chromium runs as an id of the block (issue 12: a Chromium running as
// the gateway's user, root, read the signing keys and /etc/shadow through
// file:// and wrote where it liked through downloads).
func parseBrowserUsers(spec string) (*targets.UIDRange, error) {
	switch spec {
	case "off", "":
		return nil, nil
	case "auto":
		if os.Geteuid() != 0 {
			return nil, nil
		}
		spec = defaultBrowserUsers
	}
	first, last, ok := strings.Cut(spec, "-")
	f, err1 := strconv.ParseUint(first, 10, 32)
	l, err2 := strconv.ParseUint(last, 10, 32)
	if !ok || err1 != nil || err2 != nil || f < minBlockID || l < f || l > math.MaxInt32 {
		return nil, fmt.Errorf("--browser-user %q: a block of user ids is first-last, like %s, from %d up to %d; or auto, or off",
			spec, defaultBrowserUsers, minBlockID, math.MaxInt32)
	}
	if id, name, ok := idInBlock(uint32(f), uint32(l)); ok {
		return nil, fmt.Errorf("--browser-user %q: %s (id %d) is in the block; browsers must not share an id with anyone", spec, name, id)
	}
	if os.Geteuid() != 0 {
		return nil, fmt.Errorf("--browser-user needs the gateway to run as root (to start browsers as users %s)", spec)
	}
	return &targets.UIDRange{First: uint32(f), Last: uint32(l)}, nil
}

// browserProfileDir says where the profiles of browsers running as the
// users of uids live: "" (the pool's default, <data-dir>/browsers) when
// they can pass through the data directory — which it opens to them
// (search permission, not listing), closing everything else in it to
// others as for sandbox users (openDataDirTo): the keys, the database, a
// catalog file. A data directory they cannot reach (one under /root, say)
// is not opened up behind the operator's back: the profiles go to a
// folder of this data directory's own under the system's temporary
// directory instead, so `go run ./cmd/gateway` as root still has a
// confined browser service.
func browserProfileDir(dataDir string, uids *targets.UIDRange) (string, error) {
	if uids == nil {
		return "", nil
	}
	cred := targets.Credential{UID: uids.First, GID: uids.First}
	abs, err := filepath.Abs(dataDir)
	if err != nil {
		return "", err
	}
	if targets.CheckReach(filepath.Dir(abs), cred) == nil {
		if err := openDataDir(abs, "browsers", "sandboxes"); err != nil {
			return "", err
		}
		return "", nil
	}
	sum := sha256.Sum256([]byte(abs))
	dir := filepath.Join(os.TempDir(), "nimbus-browsers-"+hex.EncodeToString(sum[:6]))
	if err := os.Mkdir(dir, 0o711); err != nil && !errors.Is(err, fs.ErrExist) {
		return "", err
	}
	// Someone else's folder (or a link) at that name must not receive
	// the profiles.
	fi, err := os.Lstat(dir)
	if err != nil {
		return "", err
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); !ok || !fi.IsDir() || int(st.Uid) != os.Geteuid() {
		return "", fmt.Errorf("%s is not a directory of the gateway's user", dir)
	}
	return dir, targets.CheckReach(dir, cred)
}

// checkBlocksApart refuses a browser block that overlaps the sandbox
// block: a workload would share its user with a browser.
func checkBlocksApart(browsers, sandboxes *targets.UIDRange) error {
	if browsers == nil || sandboxes == nil {
		return nil
	}
	if browsers.First <= sandboxes.Last && sandboxes.First <= browsers.Last {
		return fmt.Errorf("--browser-user %d-%d overlaps --sandbox-user %d-%d: give browsers a block of their own",
			browsers.First, browsers.Last, sandboxes.First, sandboxes.Last)
	}
	return nil
}

// openDataDir gives others search permission (not listing) on the data
// directory and closes everything in it to them but the entries named in
// open, which set their own permissions: a database made by an older
// gateway (0644), a catalog file, whatever an operator put there.
func openDataDir(dataDir string, open ...string) error {
	fi, err := os.Stat(dataDir)
	if err != nil {
		return err
	}
	if fi.Mode().Perm()&0o001 == 0 {
		if err := os.Chmod(dataDir, fi.Mode().Perm()|0o001); err != nil {
			return err
		}
	}
	ents, err := os.ReadDir(dataDir)
	if err != nil {
		return err
	}
	for _, e := range ents {
		if slices.Contains(open, e.Name()) || e.Type()&fs.ModeSymlink != 0 {
			continue
		}
		p := filepath.Join(dataDir, e.Name())
		if fi, err := os.Lstat(p); err == nil && fi.Mode().Perm()&0o077 != 0 {
			if err := os.Chmod(p, fi.Mode().Perm()&^0o077); err != nil {
				return err
			}
		}
	}
	return nil
}
