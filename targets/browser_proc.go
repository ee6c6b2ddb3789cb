package targets

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base32"
	"encoding/json"
	"errors"
	"fmt"

	"io/fs"
	"maps"

	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/prometheus/procfs"
	"go.uber.org/zap"

	"github.com/nimbus/gateway/problem"
)

// chromiumFlags launch a headless Chromium for remote control only: no
// first-run UI, no background traffic to Google, and DevTools on the pipe
// (fds 3 and 4), never a TCP port (see cdp_pipe.go).
// --no-sandbox: Chromium's own sandbox needs user namespaces that
// containers seldom grant; the wall is the browser's own user
// (BrowserOptions.UIDs) and its process group.
var chromiumFlags = []string{
	"--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
	"--disable-background-networking", "--disable-component-update", "--disable-sync",
	"--remote-debugging-pipe",
}

// downloadsDir is the folder of a browser's directory its downloads land in.
const downloadsDir = "downloads"

// Browser is one Chromium process (and its children, in its process
// group) with a profile of its own.
type Browser struct {
	// Static once the browser is handed out.

	// ID names the browser ("brw_…") and its profile directory.
	ID string
	// PID is the browser process, leader of its process group.
	PID int
	// UID is the user the browser runs as; the gateway's own when the
	// pool has no UIDs.
	UID uint32

	pool   *BrowserPool
	dir    string // the profile, Chromium's --user-data-dir and HOME
	pipe   *cdpPipe
	policy *cdpPolicy
	// childIn and childOut are Chromium's ends of the pipe, closed by
	// run once Chromium has them.
	childIn, childOut *os.File
	// ctx is cancelled once the processes are reaped and the profile is
	// removed, whatever ended them.
	ctx    context.Context
	cancel context.CancelFunc
	// exitCtx is cancelled as soon as the browser process has exited (and
	// with ctx at the latest): Done.
	exitCtx    context.Context
	exitCancel context.CancelFunc
	// Written by run before ctx is cancelled: the end of Chromium's output.
	lastWords string

	mu sync.Mutex
	// Guarded by mu. exited is set once the browser process has exited,
	// after which its pid (and group id) may be reused and must not be
	// signalled; killed once the pool killed it (not a crash); page is
	// the session's page target (PageID).
	exited, killed bool
	page           string

	// Guarded by the pool's mu.
	sessionID, tenantID string
	timer               *time.Timer
	dying               bool // released: counted in the pool's dying
}

// Done is closed as soon as the browser's process has exited: released,
// or dead on its own (a crash, an OOM kill, Browser.close from a client).
// A session's connections then close with 4502. It does not wait for the
// cleanup (group reaped, profile removed), which can take a second on a
// loaded machine.
func (b *Browser) Done() <-chan struct{} { return b.exitCtx.Done() }

// Gone is closed once the browser's processes are all reaped and its
// profile is removed, after Done.
func (b *Browser) Gone() <-chan struct{} { return b.ctx.Done() }

// Context is cancelled when Done is closed, for context.AfterFunc.
func (b *Browser) Context() context.Context { return b.exitCtx }

// Killed reports whether the pool ended b (a release, an expiry, a
// shutdown) rather than b exiting on its own.
func (b *Browser) Killed() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.killed
}

// DownloadsDir is the folder b's downloads land in (see cdpPolicy).
func (b *Browser) DownloadsDir() string { return b.policy.downloads }

// NewPage opens an about:blank page target in b and returns its target id.
func (b *Browser) NewPage(ctx context.Context) (string, error) {
	res, err := b.pipe.call(ctx, "", "Target.createTarget", map[string]string{"url": "about:blank"}, nil)
	if err != nil {
		return "", fmt.Errorf("creating a page: %w", err)
	}
	var t struct {
		TargetID string `json:"targetId"`
	}
	if err := json.Unmarshal(res, &t); err != nil || t.TargetID == "" {
		return "", fmt.Errorf("creating a page: unexpected answer %q", res)
	}
	return t.TargetID, nil
}

// BrowserVersion is Browser.getVersion's answer.
type BrowserVersion struct {
	ProtocolVersion string `json:"protocolVersion"`
	Product         string `json:"product"`
	Revision        string `json:"revision"`
	UserAgent       string `json:"userAgent"`
	JSVersion       string `json:"jsVersion"`
}

// Version asks b for its version, for /json/version.
func (b *Browser) Version(ctx context.Context) (BrowserVersion, error) {
	var v BrowserVersion
	res, err := b.pipe.call(ctx, "", "Browser.getVersion", nil, nil)
	if err == nil {
		err = json.Unmarshal(res, &v)
	}
	return v, err
}

// TargetInfo is one target of a browser, as Target.getTargets lists it.
type TargetInfo struct {
	TargetID string `json:"targetId"`
	Type     string `json:"type"`
	Title    string `json:"title"`
	URL      string `json:"url"`
	Attached bool   `json:"attached"`
}

// Targets lists b's targets, for /json/list.
func (b *Browser) Targets(ctx context.Context) ([]TargetInfo, error) {
	res, err := b.pipe.call(ctx, "", "Target.getTargets", nil, nil)
	if err != nil {
		return nil, err
	}
	var v struct {
		TargetInfos []TargetInfo `json:"targetInfos"`
	}
	if err := json.Unmarshal(res, &v); err != nil {
		return nil, err
	}
	return v.TargetInfos, nil
}

// launch starts a browser and waits until it answers on its pipe. The
// caller has reserved a live slot, which the browser's run goroutine gives
// back when the process is gone (or launch itself if it never starts one).
func (p *BrowserPool) launch(ctx context.Context) (*Browser, error) {
	start := time.Now()
	id := newBrowserID()
	b := &Browser{ID: id, pool: p, dir: filepath.Join(p.root, id)}
	b.policy = &cdpPolicy{downloads: filepath.Join(b.dir, downloadsDir)}
	b.ctx, b.cancel = context.WithCancel(context.Background())
	b.exitCtx, b.exitCancel = context.WithCancel(b.ctx)
	cmd, err := p.command(b)
	if err != nil {
		b.cancel()
		p.unreserve()
		return nil, err
	}
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		b.cancel()
		p.unreserve()
		b.discard(cmd)
		return nil, errPoolClosed
	}
	p.wg.Add(1)
	p.mu.Unlock()
	started := make(chan error, 1)
	go b.run(cmd, started)
	if err := <-started; err != nil {
		<-b.ctx.Done()
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, p.startTimeout)
	defer cancel()
	stop := context.AfterFunc(p.launchCtx, cancel)
	defer stop()
	// The first answer on the pipe says Chromium is ready; downloads go to
	// the browser's own folder from the start, whatever a client asks.
	if _, err := b.pipe.call(ctx, "", "Browser.setDownloadBehavior",
		map[string]any{"behavior": "allow", "downloadPath": b.policy.downloads}, nil); err != nil {
		b.stop()
		return nil, fmt.Errorf("chromium %s (pid %d): %w%s", id, b.PID, err, b.lastWords)
	}
	p.log.Debug("browser started", zap.String("browser", id), zap.Int("pid", b.PID), zap.Uint32("uid", b.UID),
		zap.Duration("took", time.Since(start)))
	return b, nil
}

// unreserve gives back a live slot no process took.
func (p *BrowserPool) unreserve() {
	p.mu.Lock()
	p.live--
	p.notifyLocked()
	p.mu.Unlock()
}

// command builds the Chromium command of b, makes its profile and
// downloads folder (owned by the browser's user) and its pipe.
func (p *BrowserPool) command(b *Browser) (*exec.Cmd, error) {
	var cred *syscall.Credential
	if p.uids != nil {
		uid, err := p.uids.take()
		if err != nil {
			return nil, problem.Wrap(problem.ResourceExhausted, err, "no user for another browser")
		}
		b.UID = uid
		cred = &syscall.Credential{Uid: uid, Gid: uid, Groups: []uint32{}}
	} else {
		b.UID = uint32(os.Geteuid())
	}
	fail := func(err error) (*exec.Cmd, error) {
		_ = os.RemoveAll(b.dir)
		p.giveUID(b)
		return nil, err
	}
	if err := os.Mkdir(b.dir, 0o700); err != nil {
		return fail(fmt.Errorf("browser profile: %w", err))
	}
	if err := os.Mkdir(b.policy.downloads, 0o700); err != nil {
		return fail(fmt.Errorf("browser downloads: %w", err))
	}
	if cred != nil {
		for _, d := range []string{b.dir, b.policy.downloads} {
			if err := os.Chown(d, int(b.UID), int(b.UID)); err != nil {
				return fail(fmt.Errorf("browser profile: %w", err))
			}
		}
	}
	// Chromium's stderr goes to a file beside the profile's contents, for
	// the error of a failed launch; it is removed with the profile. A
	// file, not a pipe: a pipe held by a stray child would block the
	// reap. The file is the gateway's (root's), open for Chromium only
	// through the descriptor it is given.
	stderr, err := os.OpenFile(filepath.Join(b.dir, "chromium.log"), os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return fail(err)
	}
	pipe, childIn, childOut, err := newCDPPipe()
	if err != nil {
		_ = stderr.Close()
		return fail(err)
	}
	b.pipe, b.childIn, b.childOut = pipe, childIn, childOut
	args := append([]string{p.chromium}, chromiumFlags...)
	args = append(args, "--user-data-dir="+b.dir)
	args = append(args, p.extraArgs...)
	args = append(args, "about:blank")
	return &exec.Cmd{
		Path: p.chromium,
		Args: args,
		// A minimal environment: the gateway's own (credentials included)
		// is not the browser's business, and HOME in the profile keeps
		// ~/.cache, ~/.pki and friends inside what is removed at the end.
		Env: []string{
			"PATH=" + defaultPath, "HOME=" + b.dir, "LANG=C.UTF-8",
			"XDG_CONFIG_HOME=" + b.dir, "XDG_CACHE_HOME=" + b.dir,
		},
		Dir:    b.dir,
		Stderr: stderr,
		Stdout: stderr,
		// fds 3 and 4: --remote-debugging-pipe.
		ExtraFiles: []*os.File{childIn, childOut},
		// The group is killed as a whole; the browser dies with the
		// gateway even when the gateway is SIGKILLed (Pdeathsig; see run;
		// Go sets it after the change of user, which would clear it).
		SysProcAttr: &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL, Credential: cred},
	}, nil
}

// discard undoes command for a browser that is not started.
func (b *Browser) discard(cmd *exec.Cmd) {
	_ = cmd.Stderr.(*os.File).Close()
	_ = b.childIn.Close()
	_ = b.childOut.Close()
	b.pipe.close()
	_ = os.RemoveAll(b.dir)
	b.pool.giveUID(b)
}

// run starts cmd and waits for it on a goroutine locked to its OS thread
// for the browser's whole life: Pdeathsig fires when the *thread* that
// forked the child exits, not the process (Go issue 27505), as for
// workloads (see Workload.run). When the browser process exits, for any
// reason, the rest of its group (zygotes, renderers, GPU and network
// processes) is killed, everything is reaped, the profile removed, the
// pool told, and ctx cancelled (Done).
func (b *Browser) run(cmd *exec.Cmd, started chan<- error) {
	p := b.pool
	defer p.wg.Done()
	defer b.cancel()
	runtime.LockOSThread()
	err := cmd.Start()
	if err != nil {
		runtime.UnlockOSThread()
		b.discard(cmd)
		p.unreserve()
		started <- err
		return
	}
	// The child has its copies.
	_ = cmd.Stderr.(*os.File).Close()
	_ = b.childIn.Close()
	_ = b.childOut.Close()
	go b.pipe.run()
	b.PID = cmd.Process.Pid
	p.mu.Lock()
	p.all[b] = struct{}{}
	closed := p.closed
	p.mu.Unlock()
	if closed {
		b.kill()
	}
	started <- nil

	// Learn of the exit without reaping (WNOWAIT): while the zombie holds
	// the pid, its group id cannot be reused, so the kill below cannot hit
	// a stranger.
	if err := waitExited(b.PID); err != nil {
		p.log.Warn("waitid failed", zap.Int("pid", b.PID), zap.Error(err))
	}
	b.exitCancel() // Done: the session's connections need not wait for the cleanup
	b.mu.Lock()
	b.exited = true
	crashed := !b.killed
	_ = syscall.Kill(-b.PID, syscall.SIGKILL)
	b.mu.Unlock()
	_ = cmd.Wait()
	runtime.UnlockOSThread() // reaped: the parent-death signal is moot
	// The pipe's reader ends at EOF once every holder of fd 4 is dead.
	b.pipe.close()
	<-b.pipe.done
	// Anything of this profile that left the group (none is known to)
	// must not keep running or writing into the directory being removed.
	if n := killProfileProcs(b.dir, false); n > 0 {
		p.log.Warn("killed browser processes outside its group", zap.String("browser", b.ID), zap.Int("count", n))
	}
	b.lastWords = b.stderrTail()
	if crashed {
		p.log.Warn("browser exited on its own", zap.String("browser", b.ID), zap.Int("pid", b.PID),
			zap.Stringer("status", cmd.ProcessState), zap.String("sessionId", b.session()), zap.String("output", b.lastWords))
	}
	if err := os.RemoveAll(b.dir); err != nil {
		p.log.Warn("removing a browser profile failed", zap.String("dir", b.dir), zap.Error(err))
	}
	p.giveUID(b)
	p.gone(b)
}

// session is the session holding b, for logs.
func (b *Browser) session() string {
	b.pool.mu.Lock()
	defer b.pool.mu.Unlock()
	return b.sessionID
}

// kill sends SIGKILL to b's process group, unless the browser has
// already exited (then run has killed the group itself).
func (b *Browser) kill() {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.killed = true
	if !b.exited && b.PID > 0 {
		_ = syscall.Kill(-b.PID, syscall.SIGKILL)
	}
}

// stop kills b and waits until it is reaped and its profile removed.
func (b *Browser) stop() {
	b.kill()
	<-b.ctx.Done()
}

// stderrTail is the end of Chromium's output, for a launch error.
func (b *Browser) stderrTail() string {
	raw, err := os.ReadFile(filepath.Join(b.dir, "chromium.log"))
	if err != nil || len(raw) == 0 {
		return ""
	}
	if len(raw) > 512 {
		raw = raw[len(raw)-512:]
	}
	return ": " + string(bytes.TrimSpace(raw))
}

// sweep kills the Chromium processes and removes the profiles a previous
// gateway left under root (one that was SIGKILLed: Pdeathsig killed its
// browsers, but not always their children). Profiles of browsers this
// pool runs are left alone.
func (p *BrowserPool) sweep() {
	p.mu.Lock()
	mine := map[string]bool{}
	for b := range p.all {
		mine[b.dir] = true
	}
	for _, b := range p.idle {
		mine[b.dir] = true
	}
	p.mu.Unlock()
	ents, err := os.ReadDir(p.root)
	if err != nil {
		p.log.Warn("sweeping browser profiles failed", zap.Error(err))
		return
	}
	if n := killProfileProcs(p.root+string(filepath.Separator), true, slices.Collect(maps.Keys(mine))...); n > 0 {
		p.log.Info("killed leftover Chromium processes", zap.Int("count", n), zap.String("dir", p.root))
	}
	for _, e := range ents {
		dir := filepath.Join(p.root, e.Name())
		if mine[dir] {
			continue
		}
		if err := removeProfile(dir); err != nil {
			p.log.Warn("removing a leftover browser profile failed", zap.String("dir", dir), zap.Error(err))
		}
	}
}

// removeProfile removes a leftover profile. A Chromium process that was
// still starting or dying when the sweep killed the others may write into
// it meanwhile — RemoveAll then fails with "directory not empty", or
// succeeds and the directory comes back (CI saw both) — so it kills again
// and retries until the directory has stayed gone for 100 ms, for up to
// two seconds.
func removeProfile(dir string) error {
	var err error
	for range 20 {
		err = os.RemoveAll(dir)
		// A process the first kill missed (forked by a zygote after the
		// sweep's scan of /proc) may be the writer.
		killProfileProcs(dir, false)
		time.Sleep(100 * time.Millisecond)
		if _, serr := os.Lstat(dir); err == nil && errors.Is(serr, fs.ErrNotExist) {
			return nil
		}
	}
	if err == nil {
		err = errors.New("the profile keeps coming back")
	}
	return err
}

// killProfileProcs SIGKILLs every process whose command line has a
// --user-data-dir equal to dir (or, with prefix, under it), except those
// of the dirs in keep, waits up to two seconds for them to die, and
// returns how many it killed.
func killProfileProcs(dir string, prefix bool, keep ...string) int {
	pids := ProfileProcesses(dir, prefix)
	var victims []int
	for _, pp := range pids {
		if !slices.Contains(keep, pp.Dir) {
			victims = append(victims, pp.PID)
			_ = syscall.Kill(pp.PID, syscall.SIGKILL)
		}
	}
	deadline := time.Now().Add(2 * time.Second)
	for _, pid := range victims {
		for processAlive(pid) && time.Now().Before(deadline) {
			time.Sleep(5 * time.Millisecond)
		}
	}
	return len(victims)
}

// ProfileProcess is a live process found by ProfileProcesses.
type ProfileProcess struct {
	PID int
	Dir string // its --user-data-dir
}

// ProfileProcesses lists, from /proc, the live processes whose command
// line has --user-data-dir=dir (with prefix: a directory under dir). A
// zombie is not listed. Tests use it to check that no Chromium outlives
// its session.
func ProfileProcesses(dir string, prefix bool) []ProfileProcess {
	var out []ProfileProcess
	walkProcs(false, func(p procfs.Proc, _ procfs.ProcStat) {
		args, err := p.CmdLine()
		if err != nil {
			return // gone meanwhile
		}
		for _, arg := range args {
			d, ok := strings.CutPrefix(arg, "--user-data-dir=")
			if !ok {
				continue
			}
			if d == dir || (prefix && strings.HasPrefix(d, dir)) {
				out = append(out, ProfileProcess{PID: p.PID, Dir: d})
			}
			break
		}
	})
	return out
}

// processAlive reports whether pid is a live (non-zombie) process.
func processAlive(pid int) bool {
	st, ok := procStat(pid)
	return ok && !zombie(st)
}

func newBrowserID() string {
	var b [10]byte
	_, _ = rand.Read(b[:])
	return "brw_" + strings.ToLower(base32.StdEncoding.WithPadding(base32.NoPadding).EncodeToString(b[:]))
}
