package channels_test

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/nimbus/gateway/channels"
)

// TestFilesOwner: with an Owner (the workload's user), everything the
// channel creates — files, parents made on the way, directories, over
// WebSocket and HTTP — belongs to that user, so the workload can change
// what a client uploaded. Chown needs root; CI runs as root.
func TestFilesOwner(t *testing.T) {
	t.Parallel()
	if os.Geteuid() != 0 {
		if os.Getenv("CI") == "true" {
			t.Fatal("CI must run the tests as root")
		}
		t.Skip("chown needs root")
	}
	const uid, gid = 65534, 65534
	fs := newFilesServer(t, channels.FilesOptions{Owner: &channels.Owner{UID: uid, GID: gid}})
	c := dialFiles(t, fs)
	wantCode(t, "write", c.write("up/load/ws.txt", strings.NewReader("hi"), -1, 1), "")
	wantCode(t, "mkdir", c.do(map[string]any{"op": "mkdir", "path": "made/by/mkdir", "parents": true}), "")
	wantCode(t, "mkdir one", c.do(map[string]any{"op": "mkdir", "path": "single"}), "")
	if resp, b := fs.do(t, "PUT", "via/http.txt", strings.NewReader("x"), nil); resp.StatusCode != 201 {
		t.Fatalf("PUT: %d %s", resp.StatusCode, b)
	}
	for _, p := range []string{"up", "up/load", "up/load/ws.txt", "made", "made/by", "made/by/mkdir", "single", "via", "via/http.txt"} {
		fi, err := os.Lstat(filepath.Join(fs.root, p))
		if err != nil {
			t.Fatal(err)
		}
		if st := fi.Sys().(*syscall.Stat_t); st.Uid != uid || st.Gid != gid {
			t.Errorf("%s is owned by %d:%d, want %d:%d", p, st.Uid, st.Gid, uid, gid)
		}
	}
	noTemps(t, fs.root)
}
