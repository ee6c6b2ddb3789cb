package targets

import (
	"errors"
	"fmt"
	"hash/fnv"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
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

// UIDRange is a block of user ids (Options.UIDs): each sandbox's
// workload runs as an id of the block that no other sandbox of this
// gateway holds, as user and group, so workloads can neither reach each
// other's roots nor signal each other's processes.
type UIDRange struct {
	First, Last uint32
}

// uidAllocator hands out a UIDRange's ids, one per sandbox, for as long as
// the sandbox exists. A sandbox's id is its name's hash in the block, or
// the next free one, so it is usually the same after a restart. Safe for
// concurrent use.
type uidAllocator struct {
	r      UIDRange
	mu     sync.Mutex
	of     map[sandboxKey]uint32 // guarded by mu
	holder map[uint32]sandboxKey // guarded by mu
}

func (a *uidAllocator) acquire(k sandboxKey) (uint32, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if uid, ok := a.of[k]; ok {
		return uid, nil
	}
	n := uint64(a.r.Last) - uint64(a.r.First) + 1
	h := fnv.New64a()
	_, _ = h.Write([]byte(k.tenantID + "/" + k.id))
	start := h.Sum64() % n
	for i := range n {
		uid := a.r.First + uint32((start+i)%n)
		if _, taken := a.holder[uid]; !taken {
			a.of[k], a.holder[uid] = uid, k
			return uid, nil
		}
	}
	return 0, fmt.Errorf("no free user id in %d-%d for another sandbox", a.r.First, a.r.Last)
}

func (a *uidAllocator) lookup(k sandboxKey) (uint32, bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	uid, ok := a.of[k]
	return uid, ok
}

func (a *uidAllocator) release(k sandboxKey) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if uid, ok := a.of[k]; ok {
		delete(a.of, k)
		delete(a.holder, uid)
	}
}

// lockRoot gives a sandbox root back to the gateway, closed to everyone
// else, before its user id can go to another sandbox.
func lockRoot(root string) error {
	if err := os.Chown(root, os.Geteuid(), os.Getegid()); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	if err := os.Chmod(root, 0o700); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return nil
}

// prepareRoot creates a sandbox root. With a run-as user the root
// directory is handed to it (not the tree: a walk could be steered by a
// workload swapping a directory for a symlink mid-walk; a sandbox keeps
// its id across restarts, so its tree is normally its own already), the
// directories the gateway creates above it are made traversable (0711:
// others may pass, not list), and every directory from / down is checked
// to let that user through, so a data directory under, say, a 0700 home
// fails here with the reason instead of as an EACCES from the workload's
// chdir.
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
	// The tenant directory is the gateway's, so root cannot have been
	// swapped for a symlink; Lchown all the same.
	if err := os.Lchown(root, int(runAs.UID), int(runAs.GID)); err != nil {
		return err
	}
	if err := os.Chmod(root, 0o750); err != nil { // lockRoot may have closed it
		return err
	}
	return CheckReach(filepath.Dir(root), *runAs)
}

// killUsers SIGKILLs every process whose real or effective user id
// matches, until none is left (a process may fork while it is being
// killed) or two seconds have passed; it returns how many it killed. A
// sandbox's id is taken back this way before it can go to another
// sandbox: stopping a workload reaches its process group and session,
// not a child that escaped both.
func killUsers(match func(uid uint32) bool) int {
	killed := 0
	deadline := time.Now().Add(2 * time.Second)
	for {
		pids := userProcesses(match)
		if len(pids) == 0 || time.Now().After(deadline) {
			return killed
		}
		for _, pid := range pids {
			if syscall.Kill(pid, syscall.SIGKILL) == nil {
				killed++
			}
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// userProcesses lists the live processes whose real or effective uid
// matches (zombies excluded: they hold nothing).
func userProcesses(match func(uid uint32) bool) []int {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	var pids []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/status")
		if err != nil {
			continue // gone meanwhile
		}
		var state string
		var real, eff uint32
		for line := range strings.SplitSeq(string(b), "\n") {
			if v, ok := strings.CutPrefix(line, "State:"); ok {
				state = strings.TrimSpace(v)
			}
			if v, ok := strings.CutPrefix(line, "Uid:"); ok {
				f := strings.Fields(v)
				if len(f) >= 2 {
					r, _ := strconv.ParseUint(f[0], 10, 32)
					e, _ := strconv.ParseUint(f[1], 10, 32)
					real, eff = uint32(r), uint32(e)
				}
			}
		}
		if strings.HasPrefix(state, "Z") || strings.HasPrefix(state, "X") {
			continue
		}
		if match(real) || match(eff) {
			pids = append(pids, pid)
		}
	}
	return pids
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
