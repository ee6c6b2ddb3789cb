package targets

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/moby/profiles/seccomp"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// The OCI default capability set (containerd's and Docker's) without
// NET_RAW, as SPEC §9.1 asks. It is only the bounding set: the workload
// runs as a user of its own, not root, with none of them effective or
// permitted (CapEff 0), and no_new_privs keeps setuid binaries from
// gaining any.
var containerCaps = []string{
	"CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD",
	"CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP",
	"CAP_NET_BIND_SERVICE", "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE",
}

// hostTopDirs are the top-level system directories of the host that a
// container's root mirrors: as the same symlink into /usr on a merged-/usr
// host (Debian), as a read-only bind mount otherwise.
var hostTopDirs = []string{"bin", "sbin", "lib", "lib32", "lib64", "libx32"}

// hostShared are the parts of the host's /etc a container sees, read-only:
// the alternatives links that much of /usr/bin resolves through, and the
// public CA certificates. Nothing else of the host's /etc.
var hostShared = []string{"/etc/alternatives", "/etc/ssl/certs"}

// spec is the OCI runtime config of sb's container.
func (rt *Runc) spec(sb Sandbox, cred Credential, c *container, netns string) (*specs.Spec, error) {
	res := sb.Resources.Or(rt.cfg.Defaults)
	mode := initModePipes
	if sb.TTY {
		mode = initModeTTY
	}
	env := []string{"PATH=" + defaultPath, "HOME=/workspace", "LANG=C.UTF-8"}
	if sb.TTY {
		env = append(env, "TERM=xterm-256color")
	}
	env = mergeEnv(env, sb.Env)
	s := &specs.Spec{
		Version:  specs.Version,
		Hostname: sb.ID,
		Root:     &specs.Root{Path: "rootfs", Readonly: true},
		Process: &specs.Process{
			Terminal:        sb.TTY,
			User:            specs.User{UID: cred.UID, GID: cred.GID},
			Args:            append([]string{containerInitPath, mode}, sb.Command...),
			Env:             env,
			Cwd:             "/workspace",
			NoNewPrivileges: true,
			Capabilities:    &specs.LinuxCapabilities{Bounding: containerCaps},
			// The host's OOM killer, when the host itself runs out, takes
			// a sandbox before the gateway.
			OOMScoreAdj: ptr(500),
		},
		Mounts: rt.mounts(sb, res),
		Linux: &specs.Linux{
			CgroupsPath: c.cgroup,
			Namespaces: []specs.LinuxNamespace{
				{Type: specs.PIDNamespace}, {Type: specs.MountNamespace}, {Type: specs.IPCNamespace},
				{Type: specs.UTSNamespace}, {Type: specs.CgroupNamespace},
				{Type: specs.NetworkNamespace, Path: netns}, // "" is a new one with only loopback
			},
			Resources: rt.resources(res),
			MaskedPaths: []string{
				"/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
				"/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi", "/sys/firmware",
				"/sys/devices/virtual/powercap",
			},
			ReadonlyPaths: []string{"/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"},
		},
	}
	sc, err := seccomp.GetDefaultProfile(s)
	if err != nil {
		return nil, fmt.Errorf("seccomp profile: %w", err)
	}
	s.Linux.Seccomp = sc
	return s, nil
}

func (rt *Runc) mounts(sb Sandbox, res Resources) []specs.Mount {
	ms := []specs.Mount{
		{Destination: "/proc", Type: "proc", Source: "proc", Options: []string{"nosuid", "noexec", "nodev"}},
		{Destination: "/dev", Type: "tmpfs", Source: "tmpfs", Options: []string{"nosuid", "strictatime", "mode=755", "size=65536k"}},
		{Destination: "/dev/pts", Type: "devpts", Source: "devpts", Options: []string{"nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"}},
		{Destination: "/dev/shm", Type: "tmpfs", Source: "shm", Options: []string{"nosuid", "noexec", "nodev", "mode=1777", "size=65536k"}},
		{Destination: "/dev/mqueue", Type: "mqueue", Source: "mqueue", Options: []string{"nosuid", "noexec", "nodev"}},
		{Destination: "/sys", Type: "sysfs", Source: "sysfs", Options: []string{"nosuid", "noexec", "nodev", "ro"}},
		{Destination: "/sys/fs/cgroup", Type: "cgroup", Source: "cgroup", Options: []string{"nosuid", "noexec", "nodev", "relatime", "ro"}},
		{Destination: "/tmp", Type: "tmpfs", Source: "tmpfs", Options: []string{"nosuid", "nodev", "mode=1777", fmt.Sprintf("size=%d", int64(rt.cfg.TmpSize))}},
		{Destination: "/usr", Type: "bind", Source: "/usr", Options: []string{"rbind", "ro", "nosuid", "nodev"}},
	}
	for _, d := range hostTopDirs {
		if fi, err := os.Lstat("/" + d); err == nil && fi.IsDir() {
			ms = append(ms, specs.Mount{Destination: "/" + d, Type: "bind", Source: "/" + d, Options: []string{"rbind", "ro", "nosuid", "nodev"}})
		}
	}
	for _, p := range hostShared {
		if fi, err := os.Stat(p); err == nil && fi.IsDir() {
			ms = append(ms, specs.Mount{Destination: p, Type: "bind", Source: p, Options: []string{"rbind", "ro", "nosuid", "nodev"}})
		}
	}
	return append(ms,
		specs.Mount{Destination: "/workspace", Type: "bind", Source: sb.Root, Options: []string{"rbind", "rw", "nosuid", "nodev"}},
		specs.Mount{Destination: containerInitPath, Type: "bind", Source: rt.init, Options: []string{"bind", "ro", "nosuid", "nodev"}},
	)
}

// resources turns the limits into the cgroup settings runc writes: memory
// (swap none beyond it where the host accounts swap), pids, and a CFS
// quota for CPUs.
func (rt *Runc) resources(res Resources) *specs.LinuxResources {
	r := &specs.LinuxResources{
		Devices: []specs.LinuxDeviceCgroup{{Allow: false, Access: "rwm"}}, // runc adds the standard safe devices
	}
	if res.Memory > 0 {
		m := int64(res.Memory)
		r.Memory = &specs.LinuxMemory{Limit: &m}
		if rt.cgroups.swapAccounting() {
			r.Memory.Swap = &m
		}
	}
	if res.PIDs > 0 {
		r.Pids = &specs.LinuxPids{Limit: ptr(res.PIDs)}
	}
	if res.CPUs > 0 {
		period := uint64(100000)
		quota := int64(res.CPUs * float64(period))
		r.CPU = &specs.LinuxCPU{Period: &period, Quota: &quota}
	}
	return r
}

// writeBundle lays out the bundle: config.json, and a root holding only
// mount points, the top-level links into /usr, and a generated /etc.
func writeBundle(dir string, s *specs.Spec, sb Sandbox, cred Credential, resolv string) error {
	root := filepath.Join(dir, "rootfs")
	for _, d := range []string{"proc", "dev", "sys", "tmp", "usr", "workspace", "etc", ".nimbus", "etc/alternatives", "etc/ssl/certs"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			return err
		}
	}
	// runc gives a tmpfs the mode of the directory it is mounted on.
	if err := os.Chmod(filepath.Join(root, "tmp"), 0o777|os.ModeSticky); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(root, containerInitPath), nil, 0o755); err != nil {
		return err
	}
	for _, d := range hostTopDirs {
		fi, err := os.Lstat("/" + d)
		switch {
		case err != nil:
		case fi.Mode()&os.ModeSymlink != 0:
			target, err := os.Readlink("/" + d)
			if err != nil {
				return err
			}
			if err := os.Symlink(target, filepath.Join(root, d)); err != nil {
				return err
			}
		case fi.IsDir():
			if err := os.Mkdir(filepath.Join(root, d), 0o755); err != nil {
				return err
			}
		}
	}
	etc := map[string]string{
		"passwd":        fmt.Sprintf("root:x:0:0:root:/root:/usr/sbin/nologin\nsandbox:x:%d:%d:sandbox:/workspace:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n", cred.UID, cred.GID),
		"group":         fmt.Sprintf("root:x:0:\nsandbox:x:%d:\nnogroup:x:65534:\n", cred.GID),
		"hostname":      sb.ID + "\n",
		"hosts":         fmt.Sprintf("127.0.0.1\tlocalhost %s\n::1\tlocalhost ip6-localhost ip6-loopback\n", sb.ID),
		"nsswitch.conf": "passwd: files\ngroup: files\nhosts: files dns\n",
		"resolv.conf":   resolv,
	}
	for name, content := range etc {
		if err := os.WriteFile(filepath.Join(root, "etc", name), []byte(content), 0o644); err != nil {
			return err
		}
	}
	b, err := json.MarshalIndent(s, "", "\t")
	if err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, "config.json"), b, 0o600)
}

// resolvConf is a container's resolver: none without a network; with
// egress the nameservers the network says it can reach (Egress.ResolvConf
// leaves out the host's loopback stub, its own addresses and IPv6).
func (rt *Runc) resolvConf(n Network) (string, error) {
	if n != NetworkEgress || rt.cfg.Egress == nil {
		return "", nil
	}
	r, ok := rt.cfg.Egress.(interface{ ResolvConf() ([]byte, error) })
	if !ok {
		return "", nil
	}
	b, err := r.ResolvConf()
	return string(b), err
}

// mergeEnv appends extra to base, later keys replacing earlier ones (the
// init hands its own environment to the workload, so duplicates would
// reach it).
func mergeEnv(base, extra []string) []string {
	out := append([]string(nil), base...)
	for _, e := range extra {
		k, _, _ := strings.Cut(e, "=")
		replaced := false
		for i, o := range out {
			if ok, _, _ := strings.Cut(o, "="); ok == k {
				out[i], replaced = e, true
			}
		}
		if !replaced {
			out = append(out, e)
		}
	}
	return out
}

func ptr[T any](v T) *T { return &v }
