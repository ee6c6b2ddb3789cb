package channels_test

import (
	"bytes"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"testing"

	"github.com/nimbus/gateway/channels"
)

// BenchmarkFiles compares the files channel with a direct local copy of
// the same bytes: upload (HTTP PUT, fsync'd) and download (HTTP GET)
// through FilesHTTP over loopback, the same over WebSocket, and io.Copy
// file→file with an fsync.
func BenchmarkFiles(b *testing.B) {
	const size = 64 << 20
	data := randBytes(42, size)
	fs := newFilesServer(b, channels.FilesOptions{})
	src := filepath.Join(fs.root, "src")
	mustWrite(b, src, data)

	b.Run("local-copy", func(b *testing.B) {
		b.SetBytes(size)
		for b.Loop() {
			in, err := os.Open(src)
			if err != nil {
				b.Fatal(err)
			}
			out, err := os.Create(filepath.Join(fs.root, "copy"))
			if err != nil {
				b.Fatal(err)
			}
			if _, err := io.Copy(out, in); err != nil {
				b.Fatal(err)
			}
			if err := out.Sync(); err != nil {
				b.Fatal(err)
			}
			in.Close()
			out.Close()
		}
	})
	b.Run("http-upload", func(b *testing.B) {
		b.SetBytes(size)
		for b.Loop() {
			req, _ := http.NewRequest("PUT", fs.fileURL("up"), bytes.NewReader(data))
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				b.Fatal(err)
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			<-fs.httpDone
			if resp.StatusCode >= 300 {
				b.Fatal(resp.Status)
			}
		}
	})
	b.Run("http-download", func(b *testing.B) {
		b.SetBytes(size)
		for b.Loop() {
			resp, err := http.Get(fs.fileURL("src"))
			if err != nil {
				b.Fatal(err)
			}
			n, _ := io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			<-fs.httpDone
			if n != size {
				b.Fatal(n)
			}
		}
	})
	c := dialFiles(b, fs)
	b.Run("ws-write", func(b *testing.B) {
		b.SetBytes(size)
		for b.Loop() {
			if r := c.write("wsup", bytes.NewReader(data), size, 1<<20); !r.OK {
				b.Fatal(r)
			}
		}
	})
	b.Run("ws-read", func(b *testing.B) {
		b.SetBytes(size)
		for b.Loop() {
			if r := c.readFile("src", 0, 0, io.Discard); !r.OK || r.Bytes != size {
				b.Fatal(r)
			}
		}
	})
}
