package channels

import (
	"errors"
	"net/http"
	"os"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/nimbus/gateway/problem"
)

// Issue 12: uploads filled the disk the store shares with every sandbox
// root, and then every tenant's opens failed. FilesOptions.MinFreeBytes
// keeps a reserve: an upload stops, 507 resource_exhausted, before the
// file system it writes to has less than that free. Sandbox roots can
// also live on a file system of their own (--sandbox-root-dir), and
// /readyz fails while the store cannot write (store.CheckWritable).

// beginUpload is beginUpload with o's limits, refused when writing the
// announced size (if any) would leave less than o.MinFreeBytes free.
func (o *FilesOptions) beginUpload(root *os.Root, p string, size int64, mode string) (*upload, *problem.Error) {
	u, perr := beginUpload(root, p, size, o.MaxFileSize, mode, o.Owner)
	if perr != nil {
		return nil, perr
	}
	if perr := o.checkSpace(u, max(size, 0)); perr != nil {
		u.abort()
		return nil, perr
	}
	return u, nil
}

// writeUpload is u.Write, refused when it would leave less than
// o.MinFreeBytes free, or when the file system is full: both are 507
// resource_exhausted, so that a client tells a full disk from the
// request limits (429) it may wait out.
func (o *FilesOptions) writeUpload(u *upload, b []byte) (int, error) {
	if perr := o.checkSpace(u, int64(len(b))); perr != nil {
		return 0, perr
	}
	n, err := u.Write(b)
	if errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT) {
		return n, noSpace(u.p, "the sandbox's file system is full")
	}
	return n, err
}

// checkSpace refuses need more bytes to u's file when they would leave
// less than o.MinFreeBytes free on its file system (fstatfs of the temp
// file itself, so a root with a file system of its own is measured).
func (o *FilesOptions) checkSpace(u *upload, need int64) *problem.Error {
	if o.MinFreeBytes <= 0 || u.f == nil {
		return nil
	}
	var st unix.Statfs_t
	if err := unix.Fstatfs(int(u.f.Fd()), &st); err != nil {
		return nil // unknown: the write itself will tell
	}
	free := int64(st.Bavail) * st.Bsize
	if free-need < o.MinFreeBytes {
		return noSpace(u.p, "the upload would leave less than the reserved free space on the sandbox's file system").
			With("freeBytes", free).With("minFreeBytes", o.MinFreeBytes)
	}
	return nil
}

// noSpace is the refusal of an upload for want of disk space.
func noSpace(p, why string) *problem.Error {
	e := problem.New(problem.ResourceExhausted, "%s: %s", p, why)
	e.Status = http.StatusInsufficientStorage
	return e
}
