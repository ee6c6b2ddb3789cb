package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"os"
	"path/filepath"
	"testing"

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
