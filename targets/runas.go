package targets

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"math"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"github.com/prometheus/procfs"

	"github.com/nimbus/gateway/problem"
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

// uidAllocator hands out a UIDRange's ids, one per sandbox, and records
// each with its sandbox in the store (Store.SetSandboxUID), so a sandbox
// has the same id after a restart and the store's unique index keeps two
// sandboxes from ever holding one. Issue 12: the id used to be the hash of
// the sandbox's name in the block, worked out again at every start; a
// tenant admin named a sandbox to collide with another tenant's, and after
// a restart it ran as that tenant's id and read its 0600 files.
//
// An id no sandbox holds goes to a new sandbox only if nothing still owns
// it: no process runs under it (one that escaped a deleted sandbox, or
// anyone else's) and no sandbox root belongs to it (a root the store lost
// track of, or one a failed delete could not take back). The search starts
// after the last id given out, so a released id is the last to come round
// again: files its old sandbox left outside its root (/tmp) are not looked
// for. Safe for concurrent use.
type uidAllocator struct {
	// Static after construction.
	r     UIDRange
	store Store
	roots string // where new sandbox roots go; older ones may be elsewhere (the store knows)

	mu sync.Mutex
	// Guarded by mu; store writes happen under it, so two acquisitions
	// never pick the same id.
	of     map[sandboxKey]uint32
	holder map[uint32]sandboxKey
	next   uint32 // where the next search starts
}

func newUIDAllocator(r UIDRange, store Store, roots string) *uidAllocator {
	return &uidAllocator{r: r, store: store, roots: roots, of: map[sandboxKey]uint32{}, holder: map[uint32]sandboxKey{}, next: r.First}
}

// load takes the ids the store gives sandboxes (at start, before any
// workload runs). An id outside the block (the block changed) is not
// this gateway's to manage: its sandbox gets a new one when it starts.
func (a *uidAllocator) load(sbs []Sandbox) {
	a.mu.Lock()
	defer a.mu.Unlock()
	highest, found := a.r.First, false
	for _, sb := range sbs {
		if sb.UID < a.r.First || sb.UID > a.r.Last {
			continue
		}
		k := sandboxKey{sb.TenantID, sb.ID}
		a.of[k], a.holder[sb.UID] = sb.UID, k
		highest, found = max(highest, sb.UID), true
	}
	if found {
		a.next = a.after(highest) // the search goes on after the ids in use
	}
}

// adopt gives k the id that owns its root, when the store has none for
// it and no other sandbox holds that id: a database of a gateway that
// did not store ids, whose roots are each their sandbox's already.
func (a *uidAllocator) adopt(ctx context.Context, k sandboxKey, uid uint32) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if _, ok := a.of[k]; ok || uid < a.r.First || uid > a.r.Last {
		return nil
	}
	if _, held := a.holder[uid]; held {
		return nil
	}
	return a.takeLocked(ctx, k, uid)
}

// acquire returns k's id, giving it one (recorded in the store) if it has
// none; root is k's own root, whose owner does not count against an id.
func (a *uidAllocator) acquire(ctx context.Context, k sandboxKey, root string) (uint32, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if uid, ok := a.of[k]; ok {
		return uid, nil
	}
	busy := processUIDs(a.r)
	owned, err := a.rootOwners(ctx, root)
	if err != nil {
		return 0, err
	}
	n := uint64(a.r.Last) - uint64(a.r.First) + 1
	start := uint64(a.next - a.r.First)
	for i := range n {
		uid := a.r.First + uint32((start+i)%n)
		if _, held := a.holder[uid]; held || busy[uid] || owned[uid] {
			continue
		}
		err := a.takeLocked(ctx, k, uid)
		if problem.CodeOf(err) == problem.AlreadyExists {
			continue // a sandbox this gateway does not run holds it in a shared store
		}
		if err != nil {
			return 0, fmt.Errorf("record the sandbox's user id: %w", err)
		}
		return uid, nil
	}
	return 0, fmt.Errorf("no free user id in %d-%d for another sandbox (ids with processes: %d, owning a root: %d)",
		a.r.First, a.r.Last, len(busy), len(owned))
}

func (a *uidAllocator) lookup(k sandboxKey) (uint32, bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	uid, ok := a.of[k]
	return uid, ok
}

// release gives k's id up, in the store first: if that fails, the id
// stays k's.
func (a *uidAllocator) release(ctx context.Context, k sandboxKey) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	uid, ok := a.of[k]
	if !ok {
		return nil
	}
	if _, err := a.store.SetSandboxUID(ctx, k.tenantID, k.id, 0); err != nil {
		return err
	}
	delete(a.of, k)
	delete(a.holder, uid)
	return nil
}

func (a *uidAllocator) takeLocked(ctx context.Context, k sandboxKey, uid uint32) error {
	if _, err := a.store.SetSandboxUID(ctx, k.tenantID, k.id, uid); err != nil {
		return err
	}
	a.of[k], a.holder[uid] = uid, k
	a.next = a.after(uid)
	return nil
}

// after is the id after uid in the block, wrapping round.
func (a *uidAllocator) after(uid uint32) uint32 {
	if uid >= a.r.Last {
		return a.r.First
	}
	return uid + 1
}

// rootOwners is the set of the block's ids owning a sandbox root, except,
// the caller's own: every root the store records, wherever it is, and
// every <tenant>/<id> under a.roots, which the store may have lost track
// of. Two directory levels, no walk into a root.
func (a *uidAllocator) rootOwners(ctx context.Context, except string) (map[uint32]bool, error) {
	sbs, err := a.store.ListSandboxes(ctx, "")
	if err != nil {
		return nil, fmt.Errorf("list the sandboxes' roots: %w", err)
	}
	paths := make([]string, 0, len(sbs))
	for _, sb := range sbs {
		if sb.Root != "" {
			paths = append(paths, sb.Root)
		}
	}
	tenants, _ := os.ReadDir(a.roots)
	for _, t := range tenants {
		dir := filepath.Join(a.roots, t.Name())
		ents, _ := os.ReadDir(dir)
		for _, e := range ents {
			paths = append(paths, filepath.Join(dir, e.Name()))
		}
	}
	out := map[uint32]bool{}
	for _, p := range paths {
		if filepath.Clean(p) == filepath.Clean(except) {
			continue
		}
		fi, err := os.Lstat(p)
		if err != nil {
			continue
		}
		if st, ok := fi.Sys().(*syscall.Stat_t); ok && st.Uid >= a.r.First && st.Uid <= a.r.Last {
			out[st.Uid] = true
		}
	}
	return out, nil
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
// its id across restarts, recorded in the store, so its tree is normally
// its own already), the
// directories the gateway creates above it are made traversable (0711:
// others may pass, not list), and every directory from / down is checked
// to let that user through, so a data directory under, say, a 0700 home
// fails here with the reason instead of as an EACCES from the workload's
// chdir.
// mounted (a container's root, bind-mounted at /workspace) skips the
// reach check: the workload never walks the host's path to it.
func prepareRoot(root string, runAs *Credential, mounted bool) error {
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
	if mounted {
		return nil // a container sees the root at /workspace, not through its parents
	}
	return CheckReach(filepath.Dir(root), *runAs)
}

// killUsers SIGKILLs every process any of whose user ids matches, until
// none is left (a process may fork while it is being killed) or two
// seconds have passed; it returns how many it killed. A sandbox's id is
// taken back this way before it can go to another sandbox: stopping a
// workload reaches its process group and session, not a child that
// escaped both.
func killUsers(match func(uid uint32) bool) int {
	return killUntilGone(func() []int { return userProcesses(match) })
}

// waitReaped waits, two seconds at most, until no zombie matches either:
// the killed stay zombies until their parent (init, mostly) reaps them,
// and a zombie still counts against its user's RLIMIT_NPROC, which the
// id's next workload would start with.
func waitReaped(match func(uid uint32) bool) {
	deadline := time.Now().Add(2 * time.Second)
	for time.Now().Before(deadline) && len(userTasks(match)) > 0 {
		time.Sleep(10 * time.Millisecond)
	}
}

// killUntilGone SIGKILLs the processes list returns until it returns none
// or two seconds have passed, and returns how many it killed.
func killUntilGone(list func() []int) int {
	killed := 0
	deadline := time.Now().Add(2 * time.Second)
	for {
		pids := list()
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

// userProcesses lists the live processes any of whose user ids (real,
// effective, saved, filesystem: a process may switch back to its saved
// id) matches.
func userProcesses(match func(uid uint32) bool) []int {
	return matchProcesses(false, match)
}

// userTasks is userProcesses with the zombies.
func userTasks(match func(uid uint32) bool) []int {
	return matchProcesses(true, match)
}

func matchProcesses(zombies bool, match func(uid uint32) bool) []int {
	var pids []int
	eachProcess(zombies, func(pid int, uids [4]uint64) {
		for _, u := range uids {
			if u <= math.MaxUint32 && match(uint32(u)) {
				pids = append(pids, pid)
				return
			}
		}
	})
	return pids
}

// processUIDs is the set of ids of r that a process has as one of its
// user ids, zombies included: they count against the id's RLIMIT_NPROC.
func processUIDs(r UIDRange) map[uint32]bool {
	out := map[uint32]bool{}
	eachProcess(true, func(_ int, uids [4]uint64) {
		for _, u := range uids {
			if u >= uint64(r.First) && u <= uint64(r.Last) {
				out[uint32(u)] = true
			}
		}
	})
	return out
}

// eachProcess calls fn with the pid and the user ids (real, effective,
// saved, filesystem) of every process but this one; zombies, which hold
// nothing and cannot be killed, only if asked for.
func eachProcess(zombies bool, fn func(pid int, uids [4]uint64)) {
	self := os.Getpid()
	walkProcs(zombies, func(p procfs.Proc, _ procfs.ProcStat) {
		if p.PID == self {
			return
		}
		if st, err := p.NewStatus(); err == nil { // else gone meanwhile
			fn(p.PID, st.UIDs)
		}
	})
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
