package targets

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// startT starts a workload for a test in a fresh root and stops it at the
// end of the test.
func startT(t testing.TB, tty bool, argv ...string) *Workload {
	t.Helper()
	w, err := startWorkload(Sandbox{ID: "t", Command: argv, TTY: tty, Root: t.TempDir()}, workloadConfig{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { w.Stop(time.Second) })
	return w
}

// drain reads s until it ends and returns the bytes of each stream and
// the final error.
func drain(t testing.TB, s *Subscription) (stdout, stderr []byte, err error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var buf []Chunk
	for {
		buf, err = s.Next(ctx, buf[:0])
		for _, c := range buf {
			switch c.Stream {
			case Stdout:
				stdout = append(stdout, c.Data...)
			case Stderr:
				stderr = append(stderr, c.Data...)
			default:
				t.Fatalf("chunk with stream %d", c.Stream)
			}
		}
		ReleaseAll(buf)
		if err != nil {
			return stdout, stderr, err
		}
	}
}

// waitFor reads s until its stdout contains want, returning all read.
func waitFor(t testing.TB, s *Subscription, want string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var out []byte
	var buf []Chunk
	for !bytes.Contains(out, []byte(want)) {
		var err error
		buf, err = s.Next(ctx, buf[:0])
		for _, c := range buf {
			out = append(out, c.Data...)
		}
		ReleaseAll(buf)
		if err != nil {
			t.Fatalf("waiting for %q: %v; got %q", want, err, out)
		}
	}
	return string(out)
}

func seqOutput(n int, nl string) []byte {
	var b bytes.Buffer
	for i := 1; i <= n; i++ {
		b.WriteString(strconv.Itoa(i))
		b.WriteString(nl)
	}
	return b.Bytes()
}

func waitDone(t testing.TB, w *Workload, d time.Duration) {
	t.Helper()
	select {
	case <-w.Done():
	case <-time.After(d):
		t.Fatalf("workload %d not done after %v", w.PID(), d)
	}
}

func TestWorkloadSeqCompleteInOrder(t *testing.T) {
	t.Parallel()
	// Output waits for the go-ahead, so the subscriber sees it all, not
	// just the ring's tail.
	w := startT(t, false, "sh", "-c", "read go; exec seq 1 200000")
	s := w.Subscribe(SubscribeOptions{})
	defer s.Close()
	goAhead(t, w)
	out, errOut, err := drain(t, s)
	if err != io.EOF {
		t.Fatalf("err = %v", err)
	}
	if !bytes.Equal(out, seqOutput(200000, "\n")) || len(errOut) != 0 {
		t.Fatalf("got %d bytes stdout, %d stderr; want %d", len(out), len(errOut), len(seqOutput(200000, "\n")))
	}
	waitDone(t, w, time.Second) // EOF implies Done
	if st := w.Exit(); st != (ExitStatus{Code: 0, Reason: ReasonExited}) {
		t.Fatalf("exit = %+v", st)
	}
	if st := w.Stats(); st.BytesOut != uint64(len(out)) {
		t.Fatalf("stats = %+v", st)
	}
}

func TestWorkloadExitCodeAndStderr(t *testing.T) {
	t.Parallel()
	w := startT(t, false, "sh", "-c", "echo out; echo err >&2; exit 3")
	s := w.Subscribe(SubscribeOptions{})
	defer s.Close()
	out, errOut, err := drain(t, s)
	if err != io.EOF || string(out) != "out\n" || string(errOut) != "err\n" {
		t.Fatalf("out %q err %q: %v", out, errOut, err)
	}
	if st := w.Exit(); st != (ExitStatus{Code: 3, Reason: ReasonExited}) {
		t.Fatalf("exit = %+v", st)
	}
	if err := w.Signal(syscall.SIGTERM); !errors.Is(err, os.ErrProcessDone) {
		t.Fatalf("signal after exit = %v", err)
	}
	if _, err := w.Write([]byte("x")); err == nil {
		t.Fatal("write after exit succeeded")
	}
}

func TestWorkloadKilledBySignal(t *testing.T) {
	t.Parallel()
	w := startT(t, false, "sleep", "100")
	w.Stop(2 * time.Second)
	if st := w.Exit(); st != (ExitStatus{Code: 128 + 15, Signal: "SIGTERM", Reason: ReasonSignaled}) {
		t.Fatalf("exit = %+v", st)
	}
	if err := syscall.Kill(w.PID(), 0); !errors.Is(err, syscall.ESRCH) {
		t.Fatalf("process %d still there: %v", w.PID(), err)
	}
}

func TestWorkloadStdinRoundTrip(t *testing.T) {
	t.Parallel()
	w := startT(t, false, "cat")
	s := w.Subscribe(SubscribeOptions{})
	defer s.Close()
	// Several writers at once; cat echoes each write whole.
	const writers, lines = 4, 200
	errc := make(chan error, writers)
	for i := range writers {
		go func() {
			for j := range lines {
				if _, err := fmt.Fprintf(w, "w%d-%d\n", i, j); err != nil {
					errc <- err
					return
				}
			}
			errc <- nil
		}()
	}
	for range writers {
		if err := <-errc; err != nil {
			t.Fatal(err)
		}
	}
	if err := w.CloseStdin(); err != nil {
		t.Fatal(err)
	}
	if err := w.CloseStdin(); err != nil {
		t.Fatal("second CloseStdin:", err)
	}
	out, _, err := drain(t, s)
	if err != io.EOF {
		t.Fatal(err)
	}
	got := strings.Split(strings.TrimSuffix(string(out), "\n"), "\n")
	if len(got) != writers*lines {
		t.Fatalf("%d lines back, want %d", len(got), writers*lines)
	}
	seen := map[string]bool{}
	for _, l := range got {
		seen[l] = true
	}
	for i := range writers {
		for j := range lines {
			if !seen[fmt.Sprintf("w%d-%d", i, j)] {
				t.Fatalf("line w%d-%d missing", i, j)
			}
		}
	}
	if w.Exit().Code != 0 || w.Stats().BytesIn != uint64(len(out)) {
		t.Fatalf("exit %+v stats %+v", w.Exit(), w.Stats())
	}
}

func TestWorkloadPTYResize(t *testing.T) {
	t.Parallel()
	w := startT(t, true, "sh", "-c", "stty size; read line; stty size; echo TERM=$TERM")
	if !w.TTY() {
		t.Fatal("not a tty")
	}
	s := w.Subscribe(SubscribeOptions{})
	defer s.Close()
	waitFor(t, s, "24 80")
	if err := w.Resize(100, 40); err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write([]byte("go\n")); err != nil {
		t.Fatal(err)
	}
	out, _, err := drain(t, s)
	if err != io.EOF || w.Exit().Code != 0 || !bytes.Contains(out, []byte("40 100\r\n")) ||
		!bytes.Contains(out, []byte("TERM=xterm-256color")) {
		t.Fatalf("%v, exit %+v, out %q", err, w.Exit(), out)
	}
}

func TestWorkloadPTYEOFAndOutputComplete(t *testing.T) {
	t.Parallel()
	w := startT(t, true, "sh", "-c", "stty -echo; echo ready; cat >/dev/null; seq 1 50000")
	s := w.Subscribe(SubscribeOptions{})
	defer s.Close()
	waitFor(t, s, "ready")
	// ^D ends cat's input; the terminal stays open for seq.
	if err := w.CloseStdin(); err != nil {
		t.Fatal(err)
	}
	out, _, err := drain(t, s)
	if err != io.EOF {
		t.Fatal(err)
	}
	if !bytes.HasSuffix(out, seqOutput(50000, "\r\n")) {
		t.Fatalf("pty output incomplete: %d bytes, tail %q", len(out), out[max(0, len(out)-40):])
	}
}

func TestWorkloadResizePipesFails(t *testing.T) {
	t.Parallel()
	w := startT(t, false, "true")
	if err := w.Resize(80, 24); err == nil {
		t.Fatal("resize on pipes succeeded")
	}
}

func TestWorkloadSignalReachesTrap(t *testing.T) {
	t.Parallel()
	w := startT(t, false, "sh", "-c", `trap 'echo got INT; exit 7' INT; echo ready; while :; do sleep 0.05; done`)
	s := w.Subscribe(SubscribeOptions{})
	defer s.Close()
	waitFor(t, s, "ready")
	if err := w.Signal(syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	out, _, err := drain(t, s)
	if err != io.EOF || !strings.Contains(string(out), "got INT") || w.Exit().Code != 7 {
		t.Fatalf("out %q, %v, exit %+v", out, err, w.Exit())
	}
}

func TestWorkloadTwoSubscribers(t *testing.T) {
	t.Parallel()
	w := startT(t, false, "sh", "-c", "read go; seq 1 100000")
	a, b := w.Subscribe(SubscribeOptions{}), w.Subscribe(SubscribeOptions{})
	defer a.Close()
	defer b.Close()
	if _, err := w.Write([]byte("\n")); err != nil {
		t.Fatal(err)
	}
	type result struct {
		out []byte
		err error
	}
	rc := make(chan result, 2)
	for _, s := range []*Subscription{a, b} {
		go func() {
			out, _, err := drain(t, s)
			rc <- result{out, err}
		}()
	}
	want := seqOutput(100000, "\n")
	for range 2 {
		r := <-rc
		if r.err != io.EOF || !bytes.Equal(r.out, want) {
			t.Fatalf("subscriber got %d bytes (%v), want %d", len(r.out), r.err, len(want))
		}
	}
}

func TestWorkloadLateSubscriberReplay(t *testing.T) {
	t.Parallel()
	w := startT(t, false, "sh", "-c", "seq 1 100000; read x; echo err >&2; read y; echo bye")
	seq := seqOutput(100000, "\n")
	waitBytesOut(t, w, len(seq))
	goAhead(t, w) // stderr only after all of stdout was read: a deterministic ring
	waitBytesOut(t, w, len(seq)+4)
	s := w.Subscribe(SubscribeOptions{})
	defer s.Close()
	if s.Replayed() != defaultRingSize {
		t.Fatalf("replayed %d, want %d", s.Replayed(), defaultRingSize)
	}
	goAhead(t, w)
	out, errOut, err := drain(t, s)
	if err != io.EOF {
		t.Fatal(err)
	}
	// The ring keeps stream tags: stdout is seq's tail, then "bye".
	wantOut := append(seq[len(seq)-(defaultRingSize-4):len(seq):len(seq)], "bye\n"...)
	if string(errOut) != "err\n" || !bytes.Equal(out, wantOut) {
		t.Fatalf("replay: stdout %d bytes (want %d), stderr %q", len(out), len(wantOut), errOut)
	}

	// After exit a subscriber still gets the ring, then EOF.
	s2 := w.Subscribe(SubscribeOptions{})
	defer s2.Close()
	if _, _, err := drain(t, s2); err != io.EOF || s2.Replayed() != defaultRingSize {
		t.Fatalf("post-exit subscribe: %v, replayed %d", err, s2.Replayed())
	}
}

// TestWorkloadSlowConsumer is the twin of tailscale derp's TestSendFreeze:
// one stalled subscriber is dropped after its grace, by the timer even
// though the producer has gone quiet, while another gets every byte.
func TestWorkloadSlowConsumer(t *testing.T) {
	t.Parallel()
	const size = 4 << 20
	w := startT(t, false, "sh", "-c", fmt.Sprintf("read go; head -c %d /dev/zero; read x", size))
	// The 4 MiB arrive at once, so the fast subscriber too is over its
	// bound until its next Next: the grace leaves a loaded -race machine
	// time to schedule it.
	opts := SubscribeOptions{MaxBacklog: 1 << 20, Grace: 750 * time.Millisecond}
	slow := w.Subscribe(opts)
	defer slow.Close()
	fast := w.Subscribe(opts)
	defer fast.Close()

	type result struct {
		n   int
		err error
	}
	rc := make(chan result, 1)
	go func() { // already waiting in Next when the output comes
		out, _, err := drain(t, fast)
		rc <- result{len(out), err}
	}()
	start := time.Now()
	goAhead(t, w)

	// The producer stalls on `read`; only the timer can drop slow.
	deadline := time.Now().Add(10 * time.Second)
	for w.Stats().DroppedSlowConsumers == 0 {
		if time.Now().After(deadline) {
			t.Fatal("slow subscriber never dropped")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if d := time.Since(start); d < opts.Grace {
		t.Fatalf("dropped after %v, before its grace", d)
	}
	select {
	case <-w.Done():
		t.Fatal("workload done before the drop: the timer was not tested")
	default:
	}
	if _, err := slow.Next(context.Background(), nil); err != ErrSlowConsumer {
		t.Fatalf("slow Next = %v", err)
	}
	goAhead(t, w)
	r := <-rc
	if r.err != io.EOF || r.n != size {
		t.Fatalf("fast got %d bytes (%v), want %d", r.n, r.err, size)
	}
	if st := w.Stats(); st.DroppedSlowConsumers != 1 || st.Subscribers != 1 {
		t.Fatalf("stats = %+v", st)
	}
}

func TestWorkloadHardLimit(t *testing.T) {
	t.Parallel()
	w := startT(t, false, "head", "-c", "10000000", "/dev/zero")
	s := w.Subscribe(SubscribeOptions{MaxBacklog: 64 << 10, HardLimit: 256 << 10, Grace: time.Hour})
	defer s.Close()
	waitDone(t, w, 10*time.Second)
	if _, err := s.Next(context.Background(), nil); err != ErrSlowConsumer {
		t.Fatalf("Next = %v", err)
	}
}

func TestWorkloadNoSubscribersNeverBlocks(t *testing.T) {
	t.Parallel()
	w := startT(t, false, "head", "-c", "10000000", "/dev/zero")
	waitDone(t, w, 10*time.Second)
	if st := w.Stats(); st.BytesOut != 10000000 || w.Exit().Code != 0 {
		t.Fatalf("stats %+v exit %+v", st, w.Exit())
	}
}

func TestSubscriptionCloseAndContext(t *testing.T) {
	t.Parallel()
	w := startT(t, false, "sleep", "100")
	s := w.Subscribe(SubscribeOptions{})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if _, err := s.Next(ctx, nil); err != context.DeadlineExceeded {
		t.Fatalf("Next = %v", err)
	}
	errc := make(chan error, 1)
	go func() {
		_, err := s.Next(context.Background(), nil)
		errc <- err
	}()
	// Close while Next is blocked: Next must not have returned by itself.
	select {
	case err := <-errc:
		t.Fatalf("Next returned %v before Close", err)
	case <-time.After(20 * time.Millisecond):
	}
	s.Close()
	s.Close()
	if err := <-errc; err != ErrClosed {
		t.Fatalf("Next after Close = %v", err)
	}
	if w.Stats().Subscribers != 0 {
		t.Fatal("closed subscription still attached")
	}
}

func TestIdleSubscribersAreSmall(t *testing.T) {
	w := startT(t, false, "sleep", "100")
	const n = 10000
	subs := make([]*Subscription, n)
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	for i := range subs {
		subs[i] = w.Subscribe(SubscribeOptions{})
	}
	runtime.GC()
	runtime.ReadMemStats(&after)
	per := (int64(after.HeapAlloc) - int64(before.HeapAlloc)) / n
	t.Logf("%d bytes per idle subscriber", per)
	if per > 2048 {
		t.Fatalf("%d bytes per idle subscriber", per)
	}
	for _, s := range subs {
		s.Close()
	}
}

func TestStartWorkloadFailures(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	if err := os.WriteFile(dir+"/noexec", []byte("#!/bin/sh\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, argv := range [][]string{{"/nonexistent"}, {"no-such-command-xyz"}, {dir + "/noexec"}} {
		if _, err := startWorkload(Sandbox{Command: argv, Root: dir}, workloadConfig{}); err == nil {
			t.Errorf("%q started", argv)
		}
	}
	if _, err := startWorkload(Sandbox{Command: []string{"true"}, Root: dir + "/missing"}, workloadConfig{}); err == nil {
		t.Error("started in a missing root")
	}
}

func TestWorkloadEnvAndRoot(t *testing.T) {
	t.Setenv("NIMBUS_SECRET_FOR_TEST", "leak") // must not reach the workload
	root := t.TempDir()
	w, err := startWorkload(Sandbox{Command: []string{"sh", "-c", "pwd; env | sort"}, Root: root, Env: []string{"FOO=bar", "LANG=fr_FR.UTF-8"}}, workloadConfig{})
	if err != nil {
		t.Fatal(err)
	}
	s := w.Subscribe(SubscribeOptions{})
	defer s.Close()
	out, _, _ := drain(t, s)
	for _, want := range []string{root + "\n", "HOME=" + root + "\n", "FOO=bar\n", "LANG=fr_FR.UTF-8\n", "PATH=" + defaultPath + "\n"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(string(out), "NIMBUS_SECRET") || strings.Contains(string(out), "TERM=") {
		t.Errorf("gateway env or TERM leaked:\n%s", out)
	}
}

// goAhead ends a `read` the workload waits on.
func goAhead(t testing.TB, w *Workload) {
	t.Helper()
	if _, err := w.Write([]byte("\n")); err != nil {
		t.Fatal(err)
	}
}

func waitBytesOut(t testing.TB, w *Workload, n int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for w.Stats().BytesOut < uint64(n) {
		if time.Now().After(deadline) {
			t.Fatalf("only %d bytes out, want %d", w.Stats().BytesOut, n)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
