package channels_test

import (
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/nimbus/gateway/channels"
	"github.com/nimbus/gateway/problem"
)

// zeros reads n zero bytes and counts what was read.
type zeros struct{ n, read int64 }

func (z *zeros) Read(p []byte) (int, error) {
	if z.read >= z.n {
		return 0, io.EOF
	}
	k := int(min(int64(len(p)), z.n-z.read))
	clear(p[:k])
	z.read += int64(k)
	return k, nil
}

// TestFilesMinFreeBytes (issue 12): with MinFreeBytes a few MiB below
// the free space of the root's file system, a 64 MiB upload over HTTP is
// refused 507 resource_exhausted: at once, reading none of the body,
// when its length is announced; when it is not, as soon as it nears the
// reserve, well before its end. Either way nothing is left behind.
func TestFilesMinFreeBytes(t *testing.T) {
	t.Parallel()
	root := t.TempDir()
	var st unix.Statfs_t
	if err := unix.Statfs(root, &st); err != nil {
		t.Fatal(err)
	}
	free := int64(st.Bavail) * st.Bsize
	if free < 16<<20 {
		t.Skipf("%d bytes free under %s: too few to leave a reserve", free, root)
	}
	o := channels.FilesOptions{MinFreeBytes: free - 4<<20}
	const size = 64 << 20

	put := func(name string, announced bool) (*zeros, error) {
		body := &zeros{n: size}
		req := httptest.NewRequest(http.MethodPut, "/files/"+name, body)
		req.ContentLength = -1
		if announced {
			req.ContentLength = size
		}
		return body, channels.FilesHTTP(httptest.NewRecorder(), req, root, name, o)
	}
	want507 := func(what string, err error) {
		t.Helper()
		var pe *problem.Error
		if !errors.As(err, &pe) || pe.Code != problem.ResourceExhausted || pe.HTTPStatus() != http.StatusInsufficientStorage {
			t.Errorf("%s: %v, want 507 resource_exhausted", what, err)
		}
	}

	body, err := put("announced.bin", true)
	want507("a 64 MiB upload announced", err)
	if body.read != 0 {
		t.Errorf("the announced upload was refused after reading %d bytes of its body, want none", body.read)
	}
	body, err = put("streamed.bin", false)
	want507("a 64 MiB upload of unknown length", err)
	if body.read >= size/2 {
		t.Errorf("the streamed upload was refused only after %d bytes", body.read)
	}
	ents, err := os.ReadDir(root)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		t.Errorf("left in the root after refused uploads: %s", filepath.Join(root, e.Name()))
	}

	o.MinFreeBytes = 0
	if _, err := put("fine.bin", false); err != nil && !strings.Contains(err.Error(), "no space") {
		t.Errorf("without a reserve the upload fails: %v", err)
	}
}
