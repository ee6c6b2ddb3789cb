package channels_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"flag"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nimbus/gateway/channels"
)

var bigSize = flag.Int64("files.big", 0, "bytes of TestFilesBigRoundTrip (default 256 MiB; 1 GiB when -run names it; 64 MiB under -race)")

// prng is a deterministic stream of n pseudo-random bytes, generated as
// it is read so a gigabyte costs no memory.
type prng struct {
	r    *rand.ChaCha8
	left int64
}

func newPRNG(seed uint64, n int64) *prng { return &prng{r: rand.NewChaCha8(seedOf(seed)), left: n} }

func (p *prng) Read(b []byte) (int, error) {
	if p.left == 0 {
		return 0, io.EOF
	}
	if int64(len(b)) > p.left {
		b = b[:p.left]
	}
	n, _ := p.r.Read(b)
	p.left -= int64(n)
	return n, nil
}

// bigDir is a temp dir for size bytes twice over: in /dev/shm when it
// has room, so the test measures the channel rather than the disk's
// write-back (on a small VM disk, 2 GiB of fsync'd writes alone can take
// half a minute), else in t.TempDir.
func bigDir(t *testing.T, size int64) string {
	var st syscall.Statfs_t
	if syscall.Statfs("/dev/shm", &st) == nil && int64(st.Bavail)*st.Bsize > 3*size {
		if dir, err := os.MkdirTemp("/dev/shm", "nimbus-files-"); err == nil {
			t.Cleanup(func() { os.RemoveAll(dir) })
			return dir
		}
	}
	return t.TempDir()
}

// procStatus reads a kB field of /proc/self/status, in bytes.
func procStatus(t testing.TB, field string) int64 {
	t.Helper()
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Skip("no /proc/self/status:", err)
	}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), field+":"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			return kb << 10
		}
	}
	t.Fatalf("no %s in /proc/self/status", field)
	return 0
}

// TestFilesBigRoundTrip moves a large file through both faces — written
// over WebSocket and read back over HTTP, uploaded over HTTP and read back
// over WebSocket — with equal sha256 each way, while the test process
// (client and server) grows by less than 64 MiB: nothing buffers a whole
// file. Not parallel, so the peak RSS is this test's own.
func TestFilesBigRoundTrip(t *testing.T) {
	// 1 GiB takes 15-35 s on two busy cores, so the normal run moves
	// 256 MiB; -run naming this test (or -files.big) moves the full GiB.
	size := *bigSize
	if size == 0 {
		size = 256 << 20
		if f := flag.Lookup("test.run"); f != nil && strings.Contains(f.Value.String(), "FilesBig") {
			size = 1 << 30
		}
		if raceEnabled {
			size = 64 << 20
		}
	}
	fs := newFilesServerIn(t, bigDir(t, size), channels.FilesOptions{})
	c := dialFiles(t, fs)
	// Warm up both faces so their fixed costs are in the baseline.
	c.write("warm", strings.NewReader("warm"), -1, 4)
	fs.do(t, "GET", "warm", nil, nil)

	// Reset the peak (Linux ≥ 4.0), so VmHWM is this test's.
	_ = os.WriteFile("/proc/self/clear_refs", []byte("5"), 0)
	before := procStatus(t, "VmRSS")
	start := time.Now()

	// WebSocket write, HTTP read.
	want := sha256.New()
	r := c.write("big1", io.TeeReader(newPRNG(1, size), want), size, 1<<20)
	wantSum := hex.EncodeToString(want.Sum(nil))
	if !r.OK || r.Bytes != size || r.SHA256 != wantSum {
		t.Fatalf("ws write: %+v", r)
	}
	resp, err := http.Get(fs.fileURL("big1"))
	if err != nil {
		t.Fatal(err)
	}
	got := sha256.New()
	n, err := io.Copy(got, resp.Body)
	resp.Body.Close()
	<-fs.httpDone
	if err != nil || n != size || hex.EncodeToString(got.Sum(nil)) != wantSum {
		t.Fatalf("http read: %d bytes, %v", n, err)
	}
	mid := time.Now()

	// HTTP upload, WebSocket read.
	want.Reset()
	req, _ := http.NewRequestWithContext(context.Background(), "PUT", fs.fileURL("big2"), io.TeeReader(newPRNG(2, size), want))
	req.ContentLength = size
	resp, err = http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	<-fs.httpDone
	wantSum = hex.EncodeToString(want.Sum(nil))
	if resp.StatusCode != http.StatusCreated {
		t.Fatalf("http upload: %d", resp.StatusCode)
	}
	got.Reset()
	r = c.readFile("big2", 0, 0, got)
	if !r.OK || r.Bytes != size || r.SHA256 != wantSum || hex.EncodeToString(got.Sum(nil)) != wantSum {
		t.Fatalf("ws read: %+v", r)
	}
	end := time.Now()

	peak := procStatus(t, "VmHWM")
	t.Logf("%d MiB each way: ws→http %v, http→ws %v; RSS %d MiB before, peak %d MiB",
		size>>20, mid.Sub(start).Round(time.Millisecond), end.Sub(mid).Round(time.Millisecond), before>>20, peak>>20)
	if grow := peak - before; grow >= 64<<20 {
		t.Errorf("RSS grew by %d MiB moving %d MiB", grow>>20, size>>20)
	}
	for _, f := range []string{"big1", "big2"} {
		if fi, err := os.Stat(filepath.Join(fs.root, f)); err != nil || fi.Size() != size {
			t.Fatalf("%s on disk: %v", f, err)
		}
	}
	noTemps(t, fs.root)
}
