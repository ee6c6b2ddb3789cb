package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"io"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/creack/pty"

	"github.com/nimbus/gateway/client"
)

// TestCp: `gateway cp` uploads into a session's sandbox and downloads
// back, and a download that was cut short resumes where it stopped.
func TestCp(t *testing.T) {
	dir := t.TempDir()
	g := startGateway(t, dir)
	defer g.stop()
	tok := devToken(t, dir, false)
	c := client.New(g.URL, "demo", tok)
	s, err := c.Open(context.Background(), client.OpenRequest{Target: client.ServiceTarget("worker"), Channels: []string{"files"}})
	if err != nil {
		t.Fatal(err)
	}
	id := s.Metadata.ID
	t.Setenv("NIMBUS_TOKEN", tok)
	t.Setenv("NIMBUS_ENDPOINT", g.URL)

	local := filepath.Join(t.TempDir(), "data.bin")
	data := make([]byte, 5<<20+123)
	rand.Read(data)
	if err := os.WriteFile(local, data, 0o600); err != nil {
		t.Fatal(err)
	}
	var stdout, stderr bytes.Buffer
	if code := run([]string{"cp", local, id + ":in/data.bin"}, &stdout, &stderr); code != 0 {
		t.Fatalf("upload: %d %s", code, stderr.String())
	}
	back := filepath.Join(t.TempDir(), "back.bin")
	if code := run([]string{"cp", id + ":in/data.bin", back}, &stdout, &stderr); code != 0 {
		t.Fatalf("download: %d %s", code, stderr.String())
	}
	if got, _ := os.ReadFile(back); !bytes.Equal(got, data) {
		t.Fatalf("round trip changed the file (%d bytes back)", len(got))
	}
	// Resume: keep the first 2 MiB, as a cut download would, and copy
	// again: the rest is fetched with a Range request and appended.
	if err := os.Truncate(back, 2<<20); err != nil {
		t.Fatal(err)
	}
	if code := run([]string{"cp", id + ":in/data.bin", back}, &stdout, &stderr); code != 0 {
		t.Fatalf("resumed download: %d %s", code, stderr.String())
	}
	if got, _ := os.ReadFile(back); !bytes.Equal(got, data) {
		t.Fatalf("resumed download differs (%d bytes)", len(got))
	}
	// A path that leaves the sandbox is refused with its code.
	stderr.Reset()
	if code := run([]string{"cp", local, id + ":../escape.bin"}, &stdout, &stderr); code == 0 ||
		!bytes.Contains(stderr.Bytes(), []byte("permission_denied")) {
		t.Fatalf("escape: %d %s", code, stderr.String())
	}
}

// cpSession starts a gateway, opens a files session on it and uploads data
// as remote; it returns the session id. NIMBUS_TOKEN and NIMBUS_ENDPOINT
// are set for run.
func cpSession(t *testing.T, remote string, data []byte) string {
	t.Helper()
	dir := t.TempDir()
	g := startGateway(t, dir)
	t.Cleanup(g.stop)
	tok := devToken(t, dir, false)
	c := client.New(g.URL, "demo", tok)
	ctx := context.Background()
	s, err := c.Open(ctx, client.OpenRequest{Target: client.ServiceTarget("worker"), Channels: []string{"files"}})
	if err != nil {
		t.Fatal(err)
	}
	furl, err := s.FilesURL()
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Upload(ctx, furl, remote, bytes.NewReader(data), int64(len(data)), nil); err != nil {
		t.Fatal(err)
	}
	t.Setenv("NIMBUS_TOKEN", tok)
	t.Setenv("NIMBUS_ENDPOINT", g.URL)
	return s.Metadata.ID
}

// TestCpToStdout: `gateway cp SESSION:PATH -` writes stdout in order, so
// every stdout a shell can hand it gets exactly the earlier content (if
// any) followed by the file (issue 17: a pipe failed with "illegal seek",
// >> with "invalid use of WriteAt on file opened with O_APPEND", and
// earlier output in the same file was overwritten from offset 0). A LOCAL
// that is not a regular file (a FIFO) is written in order too.
func TestCpToStdout(t *testing.T) {
	// More than a pipe's 64 KiB buffer, so the pipe case needs its reader.
	data := make([]byte, 1<<20+7)
	rand.Read(data)
	id := cpSession(t, "out/data.bin", data)
	const earlier = "earlier output\n"
	cpOut := func(t *testing.T, stdout io.Writer, args ...string) {
		t.Helper()
		var stderr bytes.Buffer
		args = append([]string{"cp", "--quiet", id + ":out/data.bin"}, args...)
		if code := run(args, stdout, &stderr); code != 0 {
			t.Fatalf("cp: %d %s", code, stderr.String())
		}
	}
	// readAll reads r on its own goroutine, as the other end of a pipe.
	readAll := func(r *os.File) <-chan []byte {
		got := make(chan []byte, 1)
		go func() {
			b, _ := io.ReadAll(r)
			r.Close()
			got <- b
		}()
		return got
	}

	t.Run("pipe", func(t *testing.T) {
		r, w, err := os.Pipe()
		if err != nil {
			t.Fatal(err)
		}
		got := readAll(r)
		cpOut(t, w, "-")
		w.Close()
		if b := <-got; !bytes.Equal(b, data) {
			t.Fatalf("pipe got %d bytes, want the file's %d", len(b), len(data))
		}
	})
	t.Run("append", func(t *testing.T) {
		name := filepath.Join(t.TempDir(), "log")
		if err := os.WriteFile(name, []byte(earlier), 0o644); err != nil {
			t.Fatal(err)
		}
		f, err := os.OpenFile(name, os.O_WRONLY|os.O_APPEND, 0) // >> log
		if err != nil {
			t.Fatal(err)
		}
		cpOut(t, f, "-")
		f.Close()
		if b, _ := os.ReadFile(name); !bytes.Equal(b, append([]byte(earlier), data...)) {
			t.Fatalf(">> file holds %d bytes, want %d: the earlier line then the file", len(b), len(earlier)+len(data))
		}
	})
	t.Run("after earlier output", func(t *testing.T) {
		// { echo earlier; gateway cp S:P -; } > out
		name := filepath.Join(t.TempDir(), "out")
		f, err := os.Create(name)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := f.WriteString(earlier); err != nil {
			t.Fatal(err)
		}
		cpOut(t, f, "-")
		f.Close()
		if b, _ := os.ReadFile(name); !bytes.Equal(b, append([]byte(earlier), data...)) {
			t.Fatalf("file holds %d bytes, want %d: the earlier line then the file", len(b), len(earlier)+len(data))
		}
	})
	t.Run("fifo", func(t *testing.T) {
		name := filepath.Join(t.TempDir(), "fifo")
		if err := syscall.Mkfifo(name, 0o600); err != nil {
			t.Fatal(err)
		}
		got := make(chan []byte, 1)
		go func() {
			r, err := os.Open(name) // blocks until cp opens it for writing
			if err != nil {
				got <- nil
				return
			}
			got <- <-readAll(r)
		}()
		cpOut(t, io.Discard, name)
		if b := <-got; !bytes.Equal(b, data) {
			t.Fatalf("fifo got %d bytes, want the file's %d", len(b), len(data))
		}
	})
}

// TestCpProgress: on a terminal stderr, cp draws the file's name, percent
// and sizes in binary units, says where a resume started, and ends the
// line; --quiet draws nothing.
func TestCpProgress(t *testing.T) {
	data := make([]byte, 1<<20+7)
	rand.Read(data)
	id := cpSession(t, "in/data.bin", data)
	local := filepath.Join(t.TempDir(), "data.bin")
	// cpOnTTY runs cp with a pseudo-terminal as stderr and returns what
	// was drawn on it.
	cpOnTTY := func(t *testing.T, args ...string) string {
		t.Helper()
		ptm, tty, err := pty.Open()
		if err != nil {
			t.Skipf("no pseudo-terminal: %v", err)
		}
		defer ptm.Close()
		drawn := make(chan []byte, 1)
		go func() {
			b, _ := io.ReadAll(ptm) // EIO once tty is closed
			drawn <- b
		}()
		var stdout bytes.Buffer
		code := run(append([]string{"cp"}, args...), &stdout, tty)
		tty.Close()
		out := string(<-drawn)
		if code != 0 {
			t.Fatalf("cp: %d %q", code, out)
		}
		return out
	}

	out := cpOnTTY(t, id+":in/data.bin", local)
	for _, want := range []string{"in/data.bin", "100%", "1.0 MiB"} {
		if !strings.Contains(out, want) {
			t.Errorf("progress %q lacks %q", out, want)
		}
	}
	if !strings.HasSuffix(out, "\n") {
		t.Errorf("progress %q does not end its line", out)
	}
	if err := os.Truncate(local, 512<<10); err != nil {
		t.Fatal(err)
	}
	if out := cpOnTTY(t, id+":in/data.bin", local); !strings.Contains(out, "resuming at 512 KiB") || !strings.HasSuffix(out, "\n") {
		t.Errorf("resumed progress %q does not say where it resumed", out)
	}
	if got, _ := os.ReadFile(local); !bytes.Equal(got, data) {
		t.Fatalf("resumed download differs (%d bytes)", len(got))
	}
	if out := cpOnTTY(t, "--quiet", "--no-resume", id+":in/data.bin", local); out != "" {
		t.Errorf("--quiet drew %q", out)
	}
}
