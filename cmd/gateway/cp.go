package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"golang.org/x/term"

	"github.com/nimbus/gateway/client"
)

const cpUsage = `usage: gateway cp [flags] LOCAL SESSION:PATH    upload
       gateway cp [flags] SESSION:PATH LOCAL    download
LOCAL "-" is stdin or stdout. A download into an existing, smaller LOCAL
resumes where it stopped (--no-resume starts over).`

// cp is `gateway cp`: copies one file to or from a session's sandbox over
// the files channel's HTTP face, with fresh connect URLs.
func cp(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("cp")
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprintln(stderr, cpUsage); fs.PrintDefaults() }
	endpoint := fs.String("endpoint", "http://localhost:8080", "gateway base URL (env NIMBUS_ENDPOINT)")
	tenant := fs.String("tenant", "demo", "tenant id (env NIMBUS_TENANT)")
	token := fs.String("token", "", "tenant token (env NIMBUS_TOKEN)")
	noResume := fs.Bool("no-resume", false, "download the whole file even if LOCAL holds part of it")
	quiet := fs.Bool("quiet", false, "no progress bar")
	if err := parseWithEnv(fs, args); err != nil {
		return err
	}
	if fs.NArg() != 2 {
		return usageError(cpUsage)
	}
	if *token == "" {
		return usageError("a token is required: --token or NIMBUS_TOKEN")
	}
	src, dst := fs.Arg(0), fs.Arg(1)
	srcSession, srcPath, srcRemote := splitRemote(src)
	dstSession, dstPath, dstRemote := splitRemote(dst)
	if srcRemote == dstRemote {
		return usageError("gateway cp: exactly one of the two arguments must be SESSION:PATH\n" + cpUsage)
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	c := client.New(*endpoint, *tenant, *token)
	sessionID := srcSession
	if dstRemote {
		sessionID = dstSession
	}
	s, err := c.Connect(ctx, sessionID)
	if err != nil {
		return err
	}
	filesURL, err := s.FilesURL()
	if err != nil {
		return fmt.Errorf("session %s: %w (open it with --channel files)", sessionID, err)
	}
	bar := newProgressBar(stderr, *quiet)
	defer bar.finish()
	if dstRemote {
		return upload(ctx, c, filesURL, src, dstPath, bar)
	}
	return download(ctx, c, filesURL, srcPath, dst, !*noResume, stdout, bar)
}

// splitRemote reads SESSION:PATH. Like scp, an argument is remote when a
// colon comes before any slash, so ./a:b and /tmp/a:b stay local.
func splitRemote(arg string) (session, p string, ok bool) {
	i := strings.IndexByte(arg, ':')
	if i <= 0 || strings.Contains(arg[:i], "/") {
		return "", "", false
	}
	return arg[:i], arg[i+1:], true
}

func upload(ctx context.Context, c *client.Client, filesURL, local, remote string, bar *progressBar) error {
	var r io.Reader = os.Stdin
	size := int64(-1)
	name := "stdin"
	if local != "-" {
		f, err := os.Open(local)
		if err != nil {
			return err
		}
		defer f.Close()
		fi, err := f.Stat()
		if err != nil {
			return err
		}
		if fi.IsDir() {
			return fmt.Errorf("%s is a directory (gateway cp copies one file)", local)
		}
		r, size, name = f, fi.Size(), filepath.Base(local)
	}
	// scp-like targets: "SESSION:" or "SESSION:dir/" or an existing
	// remote directory get the local file's name.
	if remote == "" || strings.HasSuffix(remote, "/") {
		remote += name
	} else if fi, err := c.Stat(ctx, filesURL, remote); err == nil && fi.Type == "dir" {
		remote = path.Join(remote, name)
	}
	bar.start(remote, 0, size)
	res, err := c.Put(ctx, filesURL, remote, r, size, bar.set)
	if err != nil {
		return err
	}
	bar.done(res.Bytes)
	return nil
}

func download(ctx context.Context, c *client.Client, filesURL, remote, local string, resume bool, stdout io.Writer, bar *progressBar) error {
	fi, err := c.Stat(ctx, filesURL, remote)
	if err != nil {
		return err
	}
	if fi.Type == "dir" {
		return fmt.Errorf("%s is a directory (gateway cp copies one file)", remote)
	}
	if local == "-" {
		bar.start(remote, 0, fi.Size)
		n, err := c.Download(ctx, filesURL, remote, stdout, 0, bar.set)
		bar.done(n)
		return err
	}
	if st, err := os.Stat(local); err == nil && st.IsDir() {
		local = filepath.Join(local, path.Base(remote))
	}
	var offset int64
	flags := os.O_WRONLY | os.O_CREATE
	if st, err := os.Stat(local); err == nil && resume && st.Mode().IsRegular() && st.Size() <= fi.Size {
		// Resuming assumes the remote file has not changed since the
		// first attempt; --no-resume is the way out when it has.
		offset = st.Size()
	} else {
		flags |= os.O_TRUNC
	}
	f, err := os.OpenFile(local, flags, 0o644)
	if err != nil {
		return err
	}
	bar.start(remote, offset, fi.Size)
	n, err := c.Download(ctx, filesURL, remote, f, offset, bar.set)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		if offset+n > 0 {
			err = fmt.Errorf("%w (run the same command again to resume)", err)
		}
		return err
	}
	bar.done(offset + n)
	return nil
}

// progressBar draws "name  45%  12.3 MiB / 27 MiB  5.6 MiB/s" on stderr
// when stderr is a terminal, at most ten times a second; otherwise it
// draws nothing.
type progressBar struct {
	w  io.Writer
	on bool

	mu sync.Mutex
	// Guarded by mu.
	name        string
	total, base int64
	started     time.Time
	last        time.Time
	drawn       bool
}

func newProgressBar(w io.Writer, quiet bool) *progressBar {
	on := false
	if f, ok := w.(*os.File); ok && !quiet {
		on = term.IsTerminal(int(f.Fd()))
	}
	return &progressBar{w: w, on: on}
}

// start begins a transfer of total bytes (-1 unknown) from base on.
func (b *progressBar) start(name string, base, total int64) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.name, b.base, b.total, b.started = name, base, total, time.Now()
}

func (b *progressBar) set(done int64) {
	if !b.on {
		return
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if now := time.Now(); now.Sub(b.last) >= 100*time.Millisecond {
		b.last = now
		b.draw(done)
	}
}

func (b *progressBar) done(n int64) {
	if !b.on {
		return
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	b.draw(n)
}

func (b *progressBar) finish() {
	if !b.on {
		return
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.drawn {
		fmt.Fprintln(b.w)
	}
}

// draw must be called with mu held.
func (b *progressBar) draw(done int64) {
	b.drawn = true
	line := b.name
	if b.total > 0 {
		line += fmt.Sprintf("  %3d%%  %s / %s", done*100/b.total, ibytes(uint64(done)), ibytes(uint64(b.total)))
	} else {
		line += "  " + ibytes(uint64(done))
	}
	if secs := time.Since(b.started).Seconds(); secs > 0 && done > b.base {
		line += "  " + ibytes(uint64(float64(done-b.base)/secs)) + "/s"
	}
	fmt.Fprintf(b.w, "\r\033[K%s", line)
}

// ibytes formats n bytes in binary units: "812 B", "12.3 MiB".
func ibytes(n uint64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := uint64(unit), 0
	for m := n / unit; m >= unit && exp < 5; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}
