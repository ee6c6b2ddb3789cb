package targets

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base32"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"go.uber.org/zap"
)

// chromiumFlags launch a headless Chromium for remote control only: no
// first-run UI, no background traffic to Google, DevTools on a port of the
// kernel's choosing on loopback (read back from DevToolsActivePort).
// --no-sandbox: the gateway's isolation is the process group and the
// profile, and Chromium's own sandbox needs user namespaces that
// containers seldom grant.
var chromiumFlags = []string{
	"--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
	"--disable-background-networking", "--disable-component-update", "--disable-sync",
	"--remote-debugging-port=0", "--remote-debugging-address=127.0.0.1",
}

// activePortFile is where Chromium writes its DevTools port and browser
// path when started with --remote-debugging-port=0.
const activePortFile = "DevToolsActivePort"

// Browser is one Chromium process (and its children, in its process
// group) with a profile of its own.
type Browser struct {
	// Static once the browser is handed out.

	// ID names the browser ("brw_…") and its profile directory.
	ID string
	// PID is the browser process, leader of its process group.
	PID int
	// Port is the DevTools HTTP and WebSocket port on 127.0.0.1.
	Port int
	// WebSocketDebuggerURL is the browser-level CDP endpoint,
	// ws://127.0.0.1:PORT/devtools/browser/<uuid>.
	WebSocketDebuggerURL string

	pool *BrowserPool
	dir  string
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
	// signalled; killed once the pool killed it (not a crash).
	exited, killed bool

	// Guarded by the pool's mu.
	sessionID string
	timer     *time.Timer
	dying     bool // released: counted in the pool's dying
}

// Done is closed as soon as the browser's process has exited: released,
// or dead on its own (a crash, an OOM kill). A session's connections then
// close with 4502. It does not wait for the cleanup (group reaped, profile
// removed), which can take a second on a loaded machine.
func (b *Browser) Done() <-chan struct{} { return b.exitCtx.Done() }

// Gone is closed once the browser's processes are all reaped and its
// profile is removed, after Done.
func (b *Browser) Gone() <-chan struct{} { return b.ctx.Done() }

// Context is cancelled when Done is closed, for context.AfterFunc.
func (b *Browser) Context() context.Context { return b.exitCtx }

// PageWebSocketURL is the page-level CDP endpoint of a target of b.
func (b *Browser) PageWebSocketURL(targetID string) string {
	return "ws://127.0.0.1:" + strconv.Itoa(b.Port) + "/devtools/page/" + targetID
}

// HTTPURL is the base of b's DevTools HTTP endpoints (/json/version…).
func (b *Browser) HTTPURL() string { return "http://127.0.0.1:" + strconv.Itoa(b.Port) }

// NewPage opens an about:blank page target in b and returns its target id.
func (b *Browser) NewPage(ctx context.Context) (string, error) {
	// Chrome 111+ answers /json/new only to PUT.
	req, err := http.NewRequestWithContext(ctx, http.MethodPut, b.HTTPURL()+"/json/new?about:blank", nil)
	if err != nil {
		return "", err
	}
	req.Host = "localhost" // Chromium refuses DevTools requests for other host names
	resp, err := b.pool.http.Do(req)
	if err != nil {
		return "", fmt.Errorf("creating a page: %w", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return "", fmt.Errorf("creating a page: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("creating a page: %s: %s", resp.Status, bytes.TrimSpace(body))
	}
	var t struct {
		ID   string `json:"id"`
		Type string `json:"type"`
	}
	if err := json.Unmarshal(body, &t); err != nil || t.ID == "" {
		return "", fmt.Errorf("creating a page: unexpected answer %q", body)
	}
	return t.ID, nil
}

// launch starts a browser and waits for its DevTools endpoint. The caller
// has reserved a live slot, which the browser's run goroutine gives back
// when the process is gone (or launch itself if it never starts one).
func (p *BrowserPool) launch(ctx context.Context) (*Browser, error) {
	start := time.Now()
	id := newBrowserID()
	b := &Browser{ID: id, pool: p, dir: filepath.Join(p.root, id)}
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
		_ = cmd.Stderr.(*os.File).Close()
		_ = os.RemoveAll(b.dir)
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
	port, path, err := b.waitActivePort(ctx)
	if err != nil {
		b.stop()
		return nil, fmt.Errorf("chromium %s (pid %d): %w%s", id, b.PID, err, b.lastWords)
	}
	b.Port = port
	b.WebSocketDebuggerURL = "ws://127.0.0.1:" + strconv.Itoa(port) + path
	p.log.Debug("browser started", zap.String("browser", id), zap.Int("pid", b.PID), zap.Int("port", port),
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

// command builds the Chromium command of b and makes its profile.
func (p *BrowserPool) command(b *Browser) (*exec.Cmd, error) {
	if err := os.Mkdir(b.dir, 0o700); err != nil {
		return nil, fmt.Errorf("browser profile: %w", err)
	}
	// Chromium's stderr goes to a file in the profile, for the error of a
	// failed launch; it is removed with the profile. A file, not a pipe:
	// a pipe held by a stray child would block the reap.
	stderr, err := os.Create(filepath.Join(b.dir, "chromium.log"))
	if err != nil {
		_ = os.RemoveAll(b.dir)
		return nil, err
	}
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
		// The group is killed as a whole; the browser dies with the
		// gateway even when the gateway is SIGKILLed (Pdeathsig; see run).
		SysProcAttr: &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL},
	}, nil
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
	_ = cmd.Stderr.(*os.File).Close() // the child has its copy
	if err != nil {
		runtime.UnlockOSThread()
		_ = os.RemoveAll(b.dir)
		p.unreserve()
		started <- err
		return
	}
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

// waitActivePort polls the profile for DevToolsActivePort: the port on
// the first line, the browser's WebSocket path on the second.
func (b *Browser) waitActivePort(ctx context.Context) (int, string, error) {
	t := time.NewTicker(10 * time.Millisecond)
	defer t.Stop()
	for {
		if raw, err := os.ReadFile(filepath.Join(b.dir, activePortFile)); err == nil {
			if port, path, ok := parseActivePort(raw); ok {
				return port, path, nil
			}
		}
		select {
		case <-b.ctx.Done():
			return 0, "", errors.New("exited before DevTools was ready")
		case <-ctx.Done():
			return 0, "", fmt.Errorf("waiting for %s: %w", activePortFile, ctx.Err())
		case <-t.C:
		}
	}
}

// parseActivePort parses DevToolsActivePort, which may be caught half
// written: ok only when both lines are complete.
func parseActivePort(raw []byte) (port int, path string, ok bool) {
	lines := strings.Split(strings.TrimSpace(string(raw)), "\n")
	if len(lines) != 2 {
		return 0, "", false
	}
	port, err := strconv.Atoi(strings.TrimSpace(lines[0]))
	path = strings.TrimSpace(lines[1])
	// "/devtools/browser/" and a 36-character UUID.
	if err != nil || port <= 0 || port > 65535 || !strings.HasPrefix(path, "/devtools/browser/") || len(path) != 18+36 {
		return 0, "", false
	}
	return port, path, true
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
// zombie has no command line and is not listed. Tests use it to check that
// no Chromium outlives its session.
func ProfileProcesses(dir string, prefix bool) []ProfileProcess {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	var out []ProfileProcess
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		raw, err := os.ReadFile("/proc/" + e.Name() + "/cmdline")
		if err != nil {
			continue // gone meanwhile
		}
		for _, arg := range bytes.Split(raw, []byte{0}) {
			v, ok := bytes.CutPrefix(arg, []byte("--user-data-dir="))
			if !ok {
				continue
			}
			if d := string(v); d == dir || (prefix && strings.HasPrefix(d, dir)) {
				out = append(out, ProfileProcess{PID: pid, Dir: d})
			}
			break
		}
	}
	return out
}

// processAlive reports whether pid is a live (non-zombie) process.
func processAlive(pid int) bool {
	raw, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return false
	}
	i := bytes.LastIndexByte(raw, ')')
	return i >= 0 && i+2 < len(raw) && raw[i+2] != 'Z' && raw[i+2] != 'X'
}

func newBrowserID() string {
	var b [10]byte
	_, _ = rand.Read(b[:])
	return "brw_" + strings.ToLower(base32.StdEncoding.WithPadding(base32.NoPadding).EncodeToString(b[:]))
}
