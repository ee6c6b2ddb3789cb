package targets

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"

	"github.com/prometheus/procfs"
	"golang.org/x/sys/unix"
)

// cgroupLayout finds a container's cgroup files. runc creates and limits
// the cgroups; the gateway only reads them back, for status.usage and to
// tell an OOM kill from another SIGKILL. Hosts have either the unified
// hierarchy (v2, one tree) or per-controller v1 trees, possibly beside an
// empty v2 mount ("hybrid", as here): runc, and this, use v2 only when
// /sys/fs/cgroup itself is the unified mount.
type cgroupLayout struct {
	unified string            // the v2 mount, when it is the layout
	v1      map[string]string // controller → v1 mount point
}

func detectCgroups() (cgroupLayout, error) {
	const root = "/sys/fs/cgroup"
	var st unix.Statfs_t
	if err := unix.Statfs(root, &st); err != nil {
		return cgroupLayout{}, fmt.Errorf("no cgroups at %s: %w", root, err)
	}
	if st.Type == unix.CGROUP2_SUPER_MAGIC {
		return cgroupLayout{unified: root}, nil
	}
	mounts, err := procfs.GetMounts()
	if err != nil {
		return cgroupLayout{}, err
	}
	l := cgroupLayout{v1: map[string]string{}}
	for _, m := range mounts {
		if m.FSType != "cgroup" {
			continue
		}
		for _, c := range []string{"memory", "pids", "cpuacct"} {
			if _, ok := m.SuperOptions[c]; ok {
				if _, seen := l.v1[c]; !seen {
					l.v1[c] = m.MountPoint
				}
			}
		}
	}
	for _, c := range []string{"memory", "pids"} {
		if l.v1[c] == "" {
			return cgroupLayout{}, fmt.Errorf("no %s cgroup controller mounted: the runc runtime cannot limit containers", c)
		}
	}
	return l, nil
}

// String names the layout, for the start banner.
func (l cgroupLayout) String() string {
	if l.unified != "" {
		return "cgroup v2"
	}
	return "cgroup v1"
}

// swapAccounting reports whether memory+swap can be limited (v1 needs
// swapaccount; v2 always has memory.swap.max where swap exists).
func (l cgroupLayout) swapAccounting() bool {
	if l.unified != "" {
		return true
	}
	_, err := os.Stat(filepath.Join(l.v1["memory"], "memory.memsw.limit_in_bytes"))
	return err == nil
}

// oomKills counts the processes the kernel OOM-killed in the cgroup.
func (l cgroupLayout) oomKills(path string) uint64 {
	if l.unified != "" {
		return keyed(filepath.Join(l.unified, path, "memory.events"), "oom_kill")
	}
	return keyed(filepath.Join(l.v1["memory"], path, "memory.oom_control"), "oom_kill")
}

// usage reads what the cgroup's processes use now; nil once it is gone.
func (l cgroupLayout) usage(path string) *Usage {
	var u Usage
	var err error
	if l.unified != "" {
		dir := filepath.Join(l.unified, path)
		if u.MemoryBytes, err = single(filepath.Join(dir, "memory.current")); err != nil {
			return nil
		}
		u.PIDs, _ = single(filepath.Join(dir, "pids.current"))
		u.CPUSeconds = float64(keyed(filepath.Join(dir, "cpu.stat"), "usage_usec")) / 1e6
		return &u
	}
	if u.MemoryBytes, err = single(filepath.Join(l.v1["memory"], path, "memory.usage_in_bytes")); err != nil {
		return nil
	}
	u.PIDs, _ = single(filepath.Join(l.v1["pids"], path, "pids.current"))
	if d := l.v1["cpuacct"]; d != "" {
		ns, _ := single(filepath.Join(d, path, "cpuacct.usage"))
		u.CPUSeconds = float64(ns) / 1e9
	}
	return &u
}

// single reads a file holding one number.
func single(file string) (uint64, error) {
	b, err := os.ReadFile(file)
	if err != nil {
		return 0, err
	}
	return strconv.ParseUint(string(bytes.TrimSpace(b)), 10, 64)
}

// keyed reads the number of key from a file of "key value" lines; 0 when
// absent.
func keyed(file, key string) uint64 {
	f, err := os.Open(file)
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := bytes.Cut(sc.Bytes(), []byte(" "))
		if ok && string(k) == key {
			n, err := strconv.ParseUint(string(bytes.TrimSpace(v)), 10, 64)
			if err == nil || errors.Is(err, strconv.ErrRange) {
				return n
			}
		}
	}
	return 0
}
