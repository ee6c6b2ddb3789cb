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

	"github.com/dustin/go-humanize"
	"github.com/schollz/progressbar/v3"
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
		// Issue 17: stdout is written in order, never at file offsets: it
		// may be a pipe (WriteAt fails with "illegal seek"), a file opened
		// with >> (O_APPEND refuses WriteAt) or a file that already holds
		// earlier output of the shell (WriteAt would overwrite it).
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
	n, err := downloadTo(ctx, c, filesURL, remote, f, offset, fi.Size, bar)
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

// downloadTo writes remote into f, which cp opened itself: a regular file
// is written at file offsets from offset on (the resume); anything else
// LOCAL can name (a FIFO, /dev/stdout, a terminal) is written in order
// from its start, as stdout is (issue 17).
func downloadTo(ctx context.Context, c *client.Client, filesURL, remote string, f *os.File, offset, size int64, bar *progressBar) (int64, error) {
	st, err := f.Stat()
	if err != nil {
		return 0, err
	}
	if !st.Mode().IsRegular() {
		bar.start(remote, 0, size)
		return c.Download(ctx, filesURL, remote, f, 0, bar.set)
	}
	bar.start(remote, offset, size)
	return c.DownloadAt(ctx, filesURL, remote, f, offset, bar.set)
}

// progressBar is one copy's progress line on stderr, drawn by
// schollz/progressbar: name, percent, bytes and rate, at most ten times a
// second, and a newline when the copy ends. It draws only when stderr is a
// terminal and --quiet is not given, so redirected stderr stays clean.
//
// Its methods may be called concurrently: set runs on whichever goroutine
// moves the bytes (net/http's body writer for an upload).
type progressBar struct {
	// Static after construction.
	w  io.Writer
	on bool

	mu sync.Mutex
	// Guarded by mu.
	bar   *progressbar.ProgressBar // nil until start, and when off
	base  int64                    // bytes already local before a resume
	left  int64                    // bytes this run moves, -1 unknown
	drawn bool                     // the bar wrote something to w
	ended bool                     // finish ran; later updates are ignored
}

func newProgressBar(w io.Writer, quiet bool) *progressBar {
	on := false
	if f, ok := w.(*os.File); ok && !quiet {
		on = term.IsTerminal(int(f.Fd()))
	}
	return &progressBar{w: w, on: on}
}

// start begins a transfer of total bytes (-1 unknown) of which base are
// already in place. The bar counts only the bytes this run moves, so its
// rate is this run's; the name says where a resume started.
func (b *progressBar) start(name string, base, total int64) {
	if !b.on {
		return
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	left := int64(-1) // progressbar's "unknown": a spinner with a byte count
	if total >= 0 {
		left = total - base
	}
	if left == 0 {
		// Nothing to move (an empty file, or a resume already complete):
		// progressbar refuses a zero maximum, and there is no progress
		// to show.
		return
	}
	if base > 0 {
		name += " (resuming at " + humanize.IBytes(uint64(base)) + ")"
	}
	b.base, b.left = base, left
	b.bar = progressbar.NewOptions64(left,
		progressbar.OptionSetWriter(barWriter{b}),
		progressbar.OptionSetDescription(name),
		progressbar.OptionShowBytes(true),
		progressbar.OptionShowCount(),
		progressbar.OptionUseIECUnits(true),
		progressbar.OptionUseANSICodes(true),
		progressbar.OptionSetWidth(20),
		progressbar.OptionThrottle(100*time.Millisecond),
		// 0 turns off the spinner's own render goroutine, which would
		// otherwise outlive a transfer that fails before its end.
		progressbar.OptionSetSpinnerChangeInterval(0),
	)
}

// set reports done bytes of the whole file (base included), the shape of
// client's progress callbacks.
func (b *progressBar) set(done int64) {
	if !b.on {
		return
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.bar != nil && !b.ended {
		_ = b.bar.Set64(done - b.base)
	}
}

// done draws the final count n (base included) of a transfer that ended.
func (b *progressBar) done(n int64) {
	if !b.on {
		return
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.bar == nil || b.ended {
		return
	}
	_ = b.bar.Set64(n - b.base)
	if b.left < 0 || n-b.base >= b.left {
		// Marks the bar finished, which draws it once more past the
		// throttle; for an unknown size it stops the spinner.
		_ = b.bar.Finish()
	}
}

// finish ends the line, so what follows (an error, the shell's prompt)
// starts on its own.
func (b *progressBar) finish() {
	if !b.on {
		return
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	b.ended = true
	if b.drawn {
		fmt.Fprintln(b.w)
	}
}

// barWriter is progressbar's output: it records that something was drawn
// and hides the *os.File, whose Sync progressbar calls after every write.
// progressbar writes only from calls made with b.mu held.
type barWriter struct{ b *progressBar }

func (w barWriter) Write(p []byte) (int, error) {
	w.b.drawn = true
	return w.b.w.Write(p)
}
