package channels_test

import (
	"io"
	"os/exec"
	"strconv"
	"testing"

	"github.com/nimbus/gateway/channels"
	"github.com/nimbus/gateway/client"
)

// BenchmarkStdioThroughput moves 1 GiB of workload output to one client:
// "gateway" through the hub, ServeStdio and a loopback WebSocket to
// client.Stdio; "pipe" straight from the process's stdout pipe, the
// ceiling. Run with -benchtime 1x.
func BenchmarkStdioThroughput(b *testing.B) {
	const size = 1 << 30
	head := "head -c " + strconv.Itoa(size) + " /dev/zero"

	b.Run("gateway", func(b *testing.B) {
		b.SetBytes(size)
		b.StopTimer()
		for range b.N {
			h := newHarness(b, false, channels.StdioOptions{}, "/bin/sh", "-c", "read x; exec "+head)
			s := h.dial()
			release(b, s)
			b.StartTimer()
			stdout, _, err := drainCount(b, s)
			b.StopTimer()
			wantExit(b, s, err, 0)
			if stdout != size {
				b.Fatalf("got %d bytes", stdout)
			}
		}
	})

	b.Run("pipe", func(b *testing.B) {
		b.SetBytes(size)
		buf := make([]byte, 64<<10) // the workload reader's size
		b.StopTimer()
		for range b.N {
			cmd := exec.Command("/bin/sh", "-c", "exec "+head)
			out, err := cmd.StdoutPipe()
			if err != nil {
				b.Fatal(err)
			}
			b.StartTimer()
			if err := cmd.Start(); err != nil {
				b.Fatal(err)
			}
			n, err := io.CopyBuffer(io.Discard, out, buf)
			if err := cmd.Wait(); err != nil {
				b.Fatal(err)
			}
			b.StopTimer()
			if err != nil || n != size {
				b.Fatalf("got %d bytes, %v", n, err)
			}
		}
	})
}

// drainCount reads s to its end, counting stdout bytes.
func drainCount(b *testing.B, s *client.Stdio) (int, int, error) {
	ctx := b.Context()
	var stdout, stderr int
	for {
		stream, data, err := s.Next(ctx)
		if err != nil {
			return stdout, stderr, err
		}
		if stream == client.StreamStdout {
			stdout += len(data)
		} else {
			stderr += len(data)
		}
	}
}
