package e2e

// The operational holes of issue 12: secrets in argv, a header flood,
// a full disk, and /metrics open to anyone. Each test runs a real gateway
// process.

import (
	"bufio"
	"bytes"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/procfs"
)

// memStatus reads the gateway's resident set and its peak (VmHWM) with
// procfs, the project's one way to read /proc.
func (g *gateway) memStatus() (rss, peak uint64) {
	g.t.Helper()
	p, err := procfs.NewProc(g.pid())
	if err != nil {
		g.t.Fatal(err)
	}
	st, err := p.NewStatus()
	if err != nil {
		g.t.Fatal(err)
	}
	return st.VmRSS, st.VmHWM
}

// unread is how many bytes sent to the gateway's port sit in its sockets'
// receive queues, not yet read by the process (/proc/net/tcp).
func (g *gateway) unread() uint64 {
	g.t.Helper()
	fs, err := procfs.NewDefaultFS()
	if err != nil {
		g.t.Fatal(err)
	}
	lines, err := fs.NetTCP()
	if err != nil {
		g.t.Fatal(err)
	}
	_, port, _ := net.SplitHostPort(g.addr)
	var n uint64
	for _, l := range lines {
		if strconv.FormatUint(l.LocalPort, 10) == port {
			n += l.RxQueue
		}
	}
	return n
}

// TestHeaderFlood floods the gateway with 200 unauthenticated connections
// sending 900 KiB of header each, every one holding its request open
// (no blank line) until all have sent theirs, so that a gateway that
// buffers whole headers holds all of them at once (issue 12 saw 1,000
// such connections take RSS from 22 MB to 1.74 GB). The gateway's peak
// RSS must stay under 300 MB and within 128 MiB of its RSS before the
// flood; /healthz must answer during and after it; and one connection
// that sends an 80 KiB header and then reads gets 431 problem+json
// header_too_large. A bound on memory, not on speed.
func TestHeaderFlood(t *testing.T) {
	g := startGateway(t)
	rss0, _ := g.memStatus()

	const conns, headerBytes = 200, 900 << 10
	line := []byte("X-Pad: " + strings.Repeat("a", 8<<10) + "\r\n")
	var sent, done sync.WaitGroup
	release := make(chan struct{})
	sent.Add(conns)
	done.Add(conns)
	for i := 0; i < conns; i++ {
		go func() {
			defer done.Done()
			c, err := net.Dial("tcp", g.addr)
			if err != nil {
				sent.Done()
				t.Errorf("dial: %v", err)
				return
			}
			defer c.Close()
			_ = c.SetDeadline(time.Now().Add(60 * time.Second))
			// Write errors are expected: a bounded gateway answers 431
			// and closes while the header still comes.
			_, err = c.Write([]byte("GET /healthz HTTP/1.1\r\nHost: flood\r\n"))
			for n := 0; err == nil && n < headerBytes; n += len(line) {
				_, err = c.Write(line)
			}
			sent.Done()
			<-release
			if err == nil {
				_, _ = c.Write([]byte("\r\n"))
			}
			_, _ = c.Read(make([]byte, 512))
		}()
	}
	sentAll := make(chan struct{})
	go func() { sent.Wait(); close(sentAll) }()
	select {
	case <-sentAll:
	case <-time.After(90 * time.Second):
		t.Error("the flood's connections did not finish sending in 90 s")
	}
	// The flood is in the kernel's socket buffers until the gateway reads
	// it: wait until it has read everything sent to it.
	for i := 0; g.unread() > 0; i++ {
		if i == 1200 {
			t.Errorf("the gateway has not read the flood after 60 s (%d bytes unread)", g.unread())
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if r := do(t, http.MethodGet, g.URL+"/healthz", nil, nil); r.status != http.StatusOK {
		t.Errorf("/healthz during the flood: %d %s", r.status, r.body)
	}
	_, peak := g.memStatus()
	close(release)
	done.Wait()

	t.Logf("RSS before the flood %.1f MiB, peak %.1f MiB", float64(rss0)/(1<<20), float64(peak)/(1<<20))
	if peak > 300e6 || peak > rss0+128<<20 {
		t.Errorf("a header flood of %d × %d KiB took the gateway's peak RSS to %.1f MiB (from %.1f MiB)",
			conns, headerBytes>>10, float64(peak)/(1<<20), float64(rss0)/(1<<20))
	}
	if r := do(t, http.MethodGet, g.URL+"/healthz", nil, nil); r.status != http.StatusOK {
		t.Errorf("/healthz after the flood: %d %s", r.status, r.body)
	}

	// One oversized header, sent whole, then read: the refusal is
	// problem+json like every other.
	c, err := net.Dial("tcp", g.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(30 * time.Second))
	var req bytes.Buffer
	req.WriteString("GET /healthz HTTP/1.1\r\nHost: big\r\n")
	for req.Len() < 80<<10 {
		req.Write(line)
	}
	req.WriteString("\r\n")
	if _, err := c.Write(req.Bytes()); err != nil {
		t.Fatalf("writing an 80 KiB header: %v", err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatalf("reading the answer to an 80 KiB header: %v", err)
	}
	defer resp.Body.Close()
	var b bytes.Buffer
	_, _ = b.ReadFrom(resp.Body)
	wantProblem(t, "an 80 KiB header", result{status: resp.StatusCode, header: resp.Header, body: b.Bytes()},
		http.StatusRequestHeaderFieldsTooLarge, "header_too_large")
}

// rawExchange sends raw on a new connection and reads one answer.
func rawExchange(t *testing.T, addr, raw string) result {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(30 * time.Second))
	if _, err := c.Write([]byte(raw)); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatalf("reading the answer to %q: %v", raw, err)
	}
	defer resp.Body.Close()
	var b bytes.Buffer
	_, _ = b.ReadFrom(resp.Body)
	return result{status: resp.StatusCode, header: resp.Header, body: b.Bytes()}
}

// TestEarlyRefusalsAreProblems: the requests net/http refuses before any
// handler runs (no Host header, an unknown Transfer-Encoding) are
// answered in problem+json with a code and a request id, like every
// other rejection, not in net/http's text/plain.
func TestEarlyRefusalsAreProblems(t *testing.T) {
	t.Parallel()
	g := startGateway(t)
	wantProblem(t, "no Host header", rawExchange(t, g.addr, "GET /healthz HTTP/1.1\r\n\r\n"),
		http.StatusBadRequest, "invalid_argument")
	r := rawExchange(t, g.addr, "POST /healthz HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n")
	wantProblem(t, "Transfer-Encoding: gzip", r, http.StatusNotImplemented, "invalid_argument")
	if r := rawExchange(t, g.addr, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"); r.status != http.StatusOK {
		t.Errorf("a plain request after them: %d %s", r.status, r.body)
	}
}
