package targets

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	runc "github.com/containerd/go-runc"
	"github.com/creack/pty"
	"go.uber.org/zap"
	"golang.org/x/sys/unix"
)

// RuncConfig configures the runc runtime (SPEC §9.1).
type RuncConfig struct {
	// Binary is the runc executable; "" looks up "runc" on PATH.
	Binary string
	// StateDir holds runc's state (its --root), the bundles and the
	// network namespaces of this gateway's containers, and nothing else:
	// at start every container found there is a leftover to remove.
	StateDir string
	// Defaults fill the zero fields of a sandbox's Resources.
	Defaults Resources
	// TmpSize bounds each container's /tmp (a tmpfs); 0 means 64Mi.
	TmpSize Bytes
	// Egress, if not nil, makes the network of egress sandboxes (an
	// *Egress); without it they fail to start, saying so.
	Egress Networks
}

// Networks makes and removes the network namespaces of egress
// containers; Egress is the CNI one.
type Networks interface {
	// Attach makes id's namespace and returns its path, for the OCI
	// spec's network namespace.
	Attach(ctx context.Context, id string) (string, error)
	// Detach removes it; idempotent.
	Detach(ctx context.Context, id string) error
	// Sweep removes what a previous gateway left.
	Sweep(ctx context.Context) error
}

// Runc runs sandbox workloads as OCI containers under the runc binary,
// the reference runtime, through go-runc. Each container has its own
// pid, mount, ipc, uts, cgroup and network namespaces, a read-only root
// of the host's /usr and a generated /etc, the sandbox root at
// /workspace, its own uid without capabilities, no_new_privs, the
// container ecosystem's default seccomp profile, and its cgroups' limits.
// It shares the host's kernel: a kernel bug is a way out that a VM would
// close and a container does not.
type Runc struct {
	cfg     RuncConfig
	runc    *runc.Runc
	init    string // the gateway's executable, the containers' init
	cgroups cgroupLayout
	log     *zap.Logger
}

// NewRunc checks that runc runs and that the gateway can create
// containers (root, a cgroup hierarchy), and prepares cfg.StateDir.
func NewRunc(cfg RuncConfig, log *zap.Logger) (*Runc, error) {
	if log == nil {
		log = zap.NewNop()
	}
	if os.Geteuid() != 0 {
		return nil, errors.New("the runc runtime needs the gateway to run as root")
	}
	bin := cfg.Binary
	if bin == "" {
		bin = "runc"
	}
	path, err := exec.LookPath(bin)
	if err != nil {
		return nil, err
	}
	self, err := os.Executable()
	if err != nil {
		return nil, fmt.Errorf("find the gateway's executable (the containers' init): %w", err)
	}
	if cfg.StateDir == "" {
		return nil, errors.New("no state directory")
	}
	if cfg.StateDir, err = filepath.Abs(cfg.StateDir); err != nil {
		return nil, err
	}
	if cfg.TmpSize == 0 {
		cfg.TmpSize = 64 << 20
	}
	for _, d := range []string{"runc", "bundles"} {
		if err := os.MkdirAll(filepath.Join(cfg.StateDir, d), 0o700); err != nil {
			return nil, err
		}
	}
	layout, err := detectCgroups()
	if err != nil {
		return nil, err
	}
	rt := &Runc{
		cfg:     cfg,
		runc:    &runc.Runc{Command: path, Root: filepath.Join(cfg.StateDir, "runc"), LogFormat: runc.JSON},
		init:    self,
		cgroups: layout,
		log:     log,
	}
	if _, err := rt.runc.Version(context.Background()); err != nil {
		return nil, fmt.Errorf("%s does not run: %w", path, err)
	}
	return rt, nil
}

// Describe says what the runtime isolates, for the start banner and
// /readyz.
func (rt *Runc) Describe() string {
	return fmt.Sprintf("runc (%s): own pid, mount, ipc, uts and network namespaces, read-only /usr, own uid without capabilities, seccomp, %s limits; shares the host kernel",
		rt.runc.Command, rt.cgroups)
}

// Close releases the egress network (its host rules and bridge go once no
// container is attached); after the catalog's Close.
func (rt *Runc) Close() error {
	if c, ok := rt.cfg.Egress.(interface{ Close() error }); ok {
		return c.Close()
	}
	return nil
}

// Sweep removes the containers and bundles a previous gateway left in the
// state directory (it died, or was killed, before stopping them): their
// workloads are killed, their cgroups and network namespaces removed.
func (rt *Runc) Sweep(ctx context.Context) (int, error) {
	list, err := rt.runc.List(ctx)
	if err != nil {
		return 0, fmt.Errorf("runc list: %w", err)
	}
	n := 0
	for _, c := range list {
		if err := rt.runc.Delete(ctx, c.ID, &runc.DeleteOpts{Force: true}); err != nil {
			rt.log.Warn("cannot delete a leftover container", zap.String("container", c.ID), zap.Error(err))
			continue
		}
		n++
	}
	bundles, _ := os.ReadDir(filepath.Join(rt.cfg.StateDir, "bundles"))
	for _, b := range bundles {
		_ = os.RemoveAll(filepath.Join(rt.cfg.StateDir, "bundles", b.Name()))
	}
	if rt.cfg.Egress != nil {
		if err := rt.cfg.Egress.Sweep(ctx); err != nil {
			return n, err
		}
	}
	return n, nil
}

var _ Networks = (*Egress)(nil)

// container is a running container: the Workload's handle on it.
type container struct {
	rt      *Runc
	id      string
	bundle  string
	cgroup  string // cgroups path, relative to each hierarchy's root
	pidfd   int    // the init's, for SIGKILL without a pid-reuse race
	pid     int    // the init's, in the gateway's pid namespace
	control *os.File
	status  *bufio.Reader
	statusR *os.File
	net     bool // an egress network namespace to detach
	ctlMu   sync.Mutex
}

// startContainer runs sb's workload in a new container as cred and
// returns once the workload runs inside it, or why it could not start.
func (rt *Runc) startContainer(sb Sandbox, cred Credential, cfg workloadConfig) (_ *Workload, err error) {
	if len(sb.Command) == 0 || sb.Command[0] == "" {
		return nil, errors.New("no command")
	}
	cfg = cfg.withDefaults()
	ctx := context.Background()
	c := &container{rt: rt, id: containerID(sb), pidfd: -1}
	c.bundle = filepath.Join(rt.cfg.StateDir, "bundles", c.id)
	c.cgroup = "/nimbus/" + c.id
	var cleanups []func()
	defer func() {
		if err != nil {
			for i := len(cleanups) - 1; i >= 0; i-- {
				cleanups[i]()
			}
		}
	}()
	cleanups = append(cleanups, func() { _ = os.RemoveAll(c.bundle) })
	netns := ""
	if sb.Network == NetworkEgress {
		if rt.cfg.Egress == nil {
			return nil, errors.New("network egress is not available on this gateway (no CNI egress configured)")
		}
		if netns, err = rt.cfg.Egress.Attach(ctx, c.id); err != nil {
			return nil, fmt.Errorf("egress network: %w", err)
		}
		c.net = true
		cleanups = append(cleanups, func() { _ = rt.cfg.Egress.Detach(context.Background(), c.id) })
	}
	spec, err := rt.spec(sb, cred, c, netns)
	if err != nil {
		return nil, err
	}
	resolv, err := rt.resolvConf(sb.Network)
	if err != nil {
		return nil, fmt.Errorf("egress network: %w", err)
	}
	if err := writeBundle(c.bundle, spec, sb, cred, resolv); err != nil {
		return nil, fmt.Errorf("bundle: %w", err)
	}

	w := &Workload{tty: sb.TTY, drain: cfg.drain, log: cfg.log, done: make(chan struct{}), ctr: c}
	w.hub.ring.size = cfg.ringSize
	statusR, statusW, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	controlR, controlW, err := os.Pipe()
	if err != nil {
		closeAll([]*os.File{statusR, statusW})
		return nil, err
	}
	c.statusR, c.status, c.control = statusR, bufio.NewReader(statusR), controlW
	childFiles := []*os.File{statusW, controlR}
	cleanups = append(cleanups, func() { closeAll([]*os.File{statusR, controlW}) })

	opts := &runc.CreateOpts{PidFile: filepath.Join(c.bundle, "init.pid"), Detach: true, ExtraFiles: childFiles}
	var console chan consoleResult
	if sb.TTY {
		sock, err := runc.NewTempConsoleSocket()
		if err != nil {
			closeAll(childFiles)
			return nil, fmt.Errorf("console socket: %w", err)
		}
		defer sock.Close()
		opts.ConsoleSocket = sock
		console = make(chan consoleResult, 1)
		go func() {
			m, err := sock.ReceiveMaster()
			console <- consoleResult{m, err}
		}()
	} else {
		pio, err := newPassIO()
		if err != nil {
			closeAll(childFiles)
			return nil, err
		}
		opts.IO = pio
		w.stdin, w.outs = pio.stdinW, []*os.File{pio.stdoutR, pio.stderrR}
		childFiles = append(childFiles, pio.child()...)
		cleanups = append(cleanups, func() { closeAll(append([]*os.File{w.stdin}, w.outs...)) })
	}
	r := *rt.runc
	r.Log = filepath.Join(c.bundle, "runc.log")
	_, runErr := r.Run(ctx, c.id, c.bundle, opts)
	closeAll(childFiles) // the container holds its own copies now
	if runErr != nil {
		_ = r.Delete(ctx, c.id, &runc.DeleteOpts{Force: true})
		return nil, fmt.Errorf("runc run: %s", runcError(r.Log, runErr))
	}
	cleanups = append(cleanups, func() { _ = rt.runc.Delete(context.Background(), c.id, &runc.DeleteOpts{Force: true}) })
	if sb.TTY {
		res := <-console
		if res.err != nil {
			return nil, fmt.Errorf("receive the container's terminal: %w", res.err)
		}
		// The console owns its fd (its finalizer would close it): the
		// workload gets a duplicate of its own.
		fd, err := unix.Dup(int(res.master.Fd()))
		_ = res.master.Close()
		if err != nil {
			return nil, fmt.Errorf("the container's terminal: %w", err)
		}
		unix.CloseOnExec(fd)
		master := os.NewFile(uintptr(fd), "pty")
		w.stdin, w.outs = master, []*os.File{master}
		if err := pty.Setsize(master, &defaultWinsize); err != nil {
			master.Close()
			return nil, err
		}
	}
	if err := c.awaitStarted(); err != nil {
		return nil, err
	}
	if err := c.openInit(); err != nil {
		return nil, err
	}
	w.pid = c.pid
	w.readers.Add(len(w.outs))
	for i, f := range w.outs {
		go w.read(f, Stdout+byte(i))
	}
	go w.runContainer()
	return w, nil
}

type consoleResult struct {
	master interface {
		Fd() uintptr
		Close() error
	}
	err error
}

// awaitStarted reads the init's first report: the workload runs, or why
// it could not (command not found, not executable).
func (c *container) awaitStarted() error {
	type res struct {
		line string
		err  error
	}
	ch := make(chan res, 1)
	go func() {
		l, err := c.status.ReadString('\n')
		ch <- res{strings.TrimSpace(l), err}
	}()
	t := time.NewTimer(initStartTimeout)
	defer t.Stop()
	select {
	case r := <-ch:
		switch {
		case r.line == "started":
			return nil
		case strings.HasPrefix(r.line, "error "):
			return errors.New(strings.TrimPrefix(r.line, "error "))
		case r.err != nil:
			return fmt.Errorf("the container's init ended before starting the workload: %w", r.err)
		}
		return fmt.Errorf("the container's init said %q", r.line)
	case <-t.C:
		return errors.New("the container's init did not start the workload in time")
	}
}

// initStartTimeout bounds the wait for the init's first report.
const initStartTimeout = 30 * time.Second

// openInit takes a pidfd on the container's init, checked to be in the
// container's cgroup, so that a later SIGKILL reaches it and no process
// that reused its pid.
func (c *container) openInit() error {
	b, err := os.ReadFile(filepath.Join(c.bundle, "init.pid"))
	if err != nil {
		return err
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		return fmt.Errorf("pid file: %w", err)
	}
	fd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		return fmt.Errorf("pidfd of the container's init: %w", err)
	}
	cg, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid))
	if err != nil || !strings.Contains(string(cg), c.cgroup) {
		unix.Close(fd)
		return fmt.Errorf("process %d is not the container's init", pid)
	}
	c.pidfd = fd
	c.pid = pid
	return nil
}

// signal asks the init to send sig to the workload's process group: the
// kernel would drop most signals sent to a namespace's init itself, and
// SIGSTOP would stop the init rather than the workload.
func (c *container) signal(sig syscall.Signal) error {
	c.ctlMu.Lock()
	defer c.ctlMu.Unlock()
	_, err := fmt.Fprintf(c.control, "signal %d\n", int(sig))
	return err
}

// kill ends the whole container at once: SIGKILL to its init, which the
// kernel delivers from the parent namespace, and which takes every other
// process of the namespace with it.
func (c *container) kill() {
	if c.pidfd >= 0 {
		_ = unix.PidfdSendSignal(c.pidfd, unix.SIGKILL, nil, 0)
	}
}

// runContainer waits for the init's exit report (or for the init to
// vanish), removes the container, and finishes the workload as a child
// process's is (finish).
func (w *Workload) runContainer() {
	c := w.ctr
	line, _ := c.status.ReadString('\n')
	st, ok := parseInitExit(strings.TrimSpace(line))
	if !ok {
		// The init itself was killed: by Stop's SIGKILL, or by the OOM
		// killer.
		st = signaledStatus(syscall.SIGKILL)
	}
	waitPidfd(c.pidfd)
	w.mu.Lock()
	w.exited = true
	w.mu.Unlock()
	if c.rt.cgroups.oomKills(c.cgroup) > 0 && (st.Signal == "SIGKILL" || st.Code == 128+int(syscall.SIGKILL)) {
		st.Reason = ReasonOOM
	}
	c.remove()
	w.finish(st)
}

// remove deletes the stopped container, its cgroups, its network and its
// bundle.
func (c *container) remove() {
	ctx := context.Background()
	if err := c.rt.runc.Delete(ctx, c.id, &runc.DeleteOpts{Force: true}); err != nil {
		c.rt.log.Warn("cannot delete a container", zap.String("container", c.id), zap.Error(err))
	}
	if c.net {
		if err := c.rt.cfg.Egress.Detach(ctx, c.id); err != nil {
			c.rt.log.Warn("cannot remove a container's network", zap.String("container", c.id), zap.Error(err))
		}
	}
	_ = os.RemoveAll(c.bundle)
	_ = c.statusR.Close()
	c.ctlMu.Lock()
	_ = c.control.Close()
	c.ctlMu.Unlock()
	if c.pidfd >= 0 {
		_ = unix.Close(c.pidfd)
	}
}

// usage reads the container's cgroups.
func (c *container) usage() *Usage { return c.rt.cgroups.usage(c.cgroup) }

// waitPidfd blocks until the process of fd has exited.
func waitPidfd(fd int) {
	if fd < 0 {
		return
	}
	for {
		fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
		_, err := unix.Poll(fds, -1)
		if !errors.Is(err, unix.EINTR) {
			return
		}
	}
}

// containerID names a container after its sandbox, with a random suffix:
// a sandbox started again gets a new container while the old one may
// still be being removed.
func containerID(sb Sandbox) string {
	var b [4]byte
	_, _ = rand.Read(b[:])
	return sb.TenantID + "." + sb.ID + "." + hex.EncodeToString(b[:])
}

// runcError is the reason runc gave in its log, else err.
func runcError(logPath string, err error) string {
	f, oerr := os.Open(logPath)
	if oerr != nil {
		return err.Error()
	}
	defer f.Close()
	msg := ""
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var e struct{ Level, Msg string }
		if json.Unmarshal(sc.Bytes(), &e) == nil && (e.Level == "error" || e.Level == "fatal") {
			msg = e.Msg
		}
	}
	if msg == "" {
		return err.Error()
	}
	return msg
}

// passIO hands the container the gateway's pipes as its stdio: runc,
// detached, passes its own stdio to the container's process, so output
// goes straight from the workload to the gateway, never through a copy.
type passIO struct {
	stdinR, stdinW, stdoutR, stdoutW, stderrR, stderrW *os.File
}

func newPassIO() (*passIO, error) {
	var f [6]*os.File
	for i := 0; i < len(f); i += 2 {
		r, w, err := os.Pipe()
		if err != nil {
			closeAll(f[:i])
			return nil, err
		}
		f[i], f[i+1] = r, w
	}
	growPipe(f[2])
	growPipe(f[4])
	return &passIO{stdinR: f[0], stdinW: f[1], stdoutR: f[2], stdoutW: f[3], stderrR: f[4], stderrW: f[5]}, nil
}

// child lists the container's ends, which the gateway closes once runc
// has started it.
func (p *passIO) child() []*os.File { return []*os.File{p.stdinR, p.stdoutW, p.stderrW} }

func (p *passIO) Set(cmd *exec.Cmd) {
	cmd.Stdin, cmd.Stdout, cmd.Stderr = p.stdinR, p.stdoutW, p.stderrW
}

// The rest of go-runc's IO: the gateway keeps its ends itself.
func (p *passIO) Close() error          { return nil }
func (p *passIO) Stdin() io.WriteCloser { return p.stdinW }
func (p *passIO) Stdout() io.ReadCloser { return p.stdoutR }
func (p *passIO) Stderr() io.ReadCloser { return p.stderrR }
