package channels

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io/fs"
	"os"
	"path"
	"slices"
	"strconv"
	"strings"
	"syscall"

	"github.com/nimbus/gateway/problem"
)

// The file-system half of the files channel, shared by its WebSocket and
// HTTP faces: path checks, error mapping, entries and atomic uploads. Every
// access goes through an *os.Root, which refuses a name that leaves the
// root by "..", by an absolute symlink or by a symlink pointing out —
// checked at each call, so a symlink the workload creates mid-session is
// refused as well.

const (
	// filesMaxPath bounds a path (PATH_MAX); filesMaxName one component
	// (NAME_MAX).
	filesMaxPath = 4096
	filesMaxName = 255
	// filesMaxEntries bounds a listing, so a directory of a million files
	// costs a bounded message; past it the listing says truncated.
	filesMaxEntries = 10000
	// filesDefaultMax is the default FilesOptions.MaxFileSize: 16 GiB.
	filesDefaultMax = 16 << 30
	// filesDefaultMode is the mode of a new file written without one.
	filesDefaultMode fs.FileMode = 0o644
	// filesDirMode is the mode of parent directories created by writes.
	filesDirMode fs.FileMode = 0o755
)

// filesPath checks a client's path and returns its name relative to the
// root ("." for the root itself). A leading "/" is relative to the root;
// the path is cleaned lexically, like a URL path ("a/../b" is "b"), and a
// ".." that would climb above the root is permission_denied.
func filesPath(p string) (string, *problem.Error) {
	if strings.IndexByte(p, 0) >= 0 {
		return "", problem.New(problem.InvalidArgument, "path contains a NUL byte").With("field", "path")
	}
	if len(p) > filesMaxPath {
		return "", problem.New(problem.InvalidArgument, "path is longer than %d bytes", filesMaxPath).With("field", "path")
	}
	name := path.Clean(strings.TrimLeft(p, "/"))
	if name == ".." || strings.HasPrefix(name, "../") {
		return "", problem.New(problem.PermissionDenied, "%s: path leaves the sandbox root", p)
	}
	for part := range strings.SplitSeq(name, "/") {
		if len(part) > filesMaxName {
			return "", problem.New(problem.InvalidArgument, "a path component is longer than %d bytes", filesMaxName).With("field", "path")
		}
	}
	return name, nil
}

// filesLeaf is filesPath for a name that must not be the root (a write,
// mkdir, rename or remove target).
func filesLeaf(p string) (string, *problem.Error) {
	name, perr := filesPath(p)
	if perr != nil {
		return "", perr
	}
	if name == "." {
		return "", problem.New(problem.InvalidArgument, "the sandbox root itself cannot be the target").With("field", "path")
	}
	return name, nil
}

// errPathEscapes is the text of os.Root's (unexported) error for a name
// that leaves the root, by ".." or through a symlink.
const errPathEscapes = "path escapes from parent"

// isEscape reports whether err is os.Root's refusal of a name that
// leaves the root (wrapped in one or more *fs.PathError or *os.LinkError).
func isEscape(err error) bool {
	for ; err != nil; err = errors.Unwrap(err) {
		if err.Error() == errPathEscapes {
			return true
		}
	}
	return false
}

// filesError maps a file-system error on name (the client's spelling) to
// a catalog error. The message never shows the host path of the root.
func filesError(name string, err error) *problem.Error {
	var pe *problem.Error
	if errors.As(err, &pe) {
		return pe
	}
	code, msg := problem.Internal, "internal error"
	switch {
	case isEscape(err):
		code, msg = problem.PermissionDenied, "path leaves the sandbox root"
	case errors.Is(err, syscall.ENOTEMPTY):
		// Before ErrExist: syscall.Errno reports ENOTEMPTY as ErrExist too.
		code, msg = problem.InvalidArgument, "directory not empty (remove it with recursive)"
	case errors.Is(err, fs.ErrNotExist), errors.Is(err, syscall.ENOTDIR):
		code, msg = problem.NotFound, "no such file or directory"
	case errors.Is(err, fs.ErrPermission):
		code, msg = problem.PermissionDenied, "permission denied"
	case errors.Is(err, fs.ErrExist):
		code, msg = problem.AlreadyExists, "already exists"
	case errors.Is(err, syscall.ELOOP):
		code, msg = problem.InvalidArgument, "too many levels of symbolic links"
	case errors.Is(err, syscall.ENAMETOOLONG):
		code, msg = problem.InvalidArgument, "name too long"
	case errors.Is(err, syscall.EISDIR):
		code, msg = problem.InvalidArgument, "is a directory"
	case errors.Is(err, syscall.EINVAL):
		code, msg = problem.InvalidArgument, "invalid argument"
	case errors.Is(err, syscall.ENOSPC), errors.Is(err, syscall.EDQUOT):
		code, msg = problem.ResourceExhausted, "no space left in the sandbox"
	case errors.Is(err, syscall.EWOULDBLOCK):
		// open(2) with O_NONBLOCK on a file someone holds a lease on
		// (fcntl F_SETLEASE), instead of waiting out the lease break.
		code, msg = problem.Unavailable, "busy (the workload holds a lease on it); try again"
	}
	e := problem.New(code, "%s: %s", name, msg)
	e.Err = err
	return e
}

// fileEntry is one file in a stat or list answer.
type fileEntry struct {
	Name string `json:"name"`
	// Type is "file", "dir", "symlink" or "other" (device, pipe, socket).
	Type string `json:"type"`
	Size int64  `json:"size"`
	// Mode is the permission bits (with setuid, setgid, sticky) as a
	// four-digit octal string, e.g. "0644".
	Mode string `json:"mode"`
	// MTime is the modification time, RFC 3339 UTC with milliseconds.
	MTime string `json:"mtime"`
}

func newFileEntry(name string, fi fs.FileInfo) fileEntry {
	t := "other"
	switch m := fi.Mode(); {
	case m.IsRegular():
		t = "file"
	case m.IsDir():
		t = "dir"
	case m&fs.ModeSymlink != 0:
		t = "symlink"
	}
	return fileEntry{Name: name, Type: t, Size: fi.Size(), Mode: formatMode(fi.Mode()), MTime: fi.ModTime().UTC().Format(rfc3339Milli)}
}

const rfc3339Milli = "2006-01-02T15:04:05.000Z07:00"

func formatMode(m fs.FileMode) string {
	v := uint32(m.Perm())
	if m&fs.ModeSetuid != 0 {
		v |= 0o4000
	}
	if m&fs.ModeSetgid != 0 {
		v |= 0o2000
	}
	if m&fs.ModeSticky != 0 {
		v |= 0o1000
	}
	return fmt.Sprintf("%04o", v)
}

// parseMode reads an octal mode string ("0644", "755", sticky "1777");
// "" means none. Setuid and setgid bits are refused.
func parseMode(s string) (fs.FileMode, bool, *problem.Error) {
	if s == "" {
		return 0, false, nil
	}
	v, err := strconv.ParseUint(s, 8, 32)
	if err != nil || v > 0o7777 {
		return 0, false, problem.New(problem.InvalidArgument, "mode must be an octal string up to 1777, like \"0644\"").With("field", "mode")
	}
	if v&0o6000 != 0 {
		// A client must not plant a set-id program for the workload (or
		// anyone on the host) to run with the owner's rights.
		return 0, false, problem.New(problem.InvalidArgument, "setuid and setgid modes are refused").With("field", "mode")
	}
	m := fs.FileMode(v & 0o777)
	if v&0o1000 != 0 {
		m |= fs.ModeSticky
	}
	return m, true, nil
}

// statEntry is the lstat of name: a symlink is reported as itself.
func statEntry(root *os.Root, p, name string) (fileEntry, *problem.Error) {
	fi, err := root.Lstat(name)
	if err != nil {
		return fileEntry{}, filesError(p, err)
	}
	base := path.Base(name)
	if name == "." {
		base = "/"
	}
	return newFileEntry(base, fi), nil
}

// openFile opens name (following symlinks that stay inside the root)
// for reading, refusing anything but a regular file or a directory, and
// never blocks in open(2). Issue 12: `mkfifo fifo.txt` in a workload made
// each GET of it hang in open(2) until a writer came — forever — with a
// thread and a connection slot each, past the session's end. So the type
// is checked by stat before any open (which also keeps open's side
// effects on devices away), and the open itself is O_NONBLOCK, so a FIFO
// swapped in between returns at once and is refused by the fstat after
// it (as is a file under a lease: EWOULDBLOCK, not the 45 s lease break).
// O_NOCTTY keeps a terminal from becoming the gateway's. Reads of
// regular files and directories ignore O_NONBLOCK.
func openFile(root *os.Root, p, name string) (*os.File, fs.FileInfo, *problem.Error) {
	fi, err := root.Stat(name)
	if err != nil {
		return nil, nil, filesError(p, err)
	}
	if perr := refuseSpecial(p, fi); perr != nil {
		return nil, nil, perr
	}
	f, err := root.OpenFile(name, os.O_RDONLY|syscall.O_NONBLOCK|syscall.O_NOCTTY, 0)
	if err != nil {
		return nil, nil, filesError(p, err)
	}
	if fi, err = f.Stat(); err != nil {
		f.Close()
		return nil, nil, filesError(p, err)
	}
	if perr := refuseSpecial(p, fi); perr != nil {
		f.Close()
		return nil, nil, perr
	}
	return f, fi, nil
}

// refuseSpecial is invalid_argument for what is neither a regular file
// nor a directory: a FIFO, a device or a socket, which the files channel
// never opens (stat and list still describe them, type "other").
func refuseSpecial(p string, fi fs.FileInfo) *problem.Error {
	m := fi.Mode()
	if m.IsRegular() || m.IsDir() {
		return nil
	}
	kind := "special file"
	switch {
	case m&fs.ModeNamedPipe != 0:
		kind = "named pipe (FIFO)"
	case m&fs.ModeSocket != 0:
		kind = "socket"
	case m&fs.ModeDevice != 0:
		kind = "device"
	}
	return problem.New(problem.InvalidArgument, "%s: is a %s; only regular files and directories can be opened", p, kind)
}

// listDir lists the directory name, sorted by name, at most
// filesMaxEntries entries. Entries are stat'ed through the root (not
// through os.File.ReadDir's Info, which lstats by host path and so could
// follow a directory swapped for a symlink mid-listing).
func listDir(root *os.Root, p, name string) (entries []fileEntry, truncated bool, perr *problem.Error) {
	f, fi, perr := openFile(root, p, name)
	if perr != nil {
		return nil, false, perr
	}
	defer f.Close()
	if !fi.IsDir() {
		return nil, false, problem.New(problem.InvalidArgument, "%s: not a directory", p)
	}
	entries = []fileEntry{}
	for {
		names, err := f.Readdirnames(256)
		for _, n := range names {
			if len(entries) == filesMaxEntries {
				truncated = true
				break
			}
			fi, err := root.Lstat(path.Join(name, n))
			if err != nil {
				continue // removed since readdir
			}
			entries = append(entries, newFileEntry(n, fi))
		}
		if truncated || err != nil || len(names) == 0 {
			break
		}
	}
	slices.SortFunc(entries, func(a, b fileEntry) int { return strings.Compare(a.Name, b.Name) })
	return entries, truncated, nil
}

// makeDir creates name; with parents, missing parents too and an
// existing directory is fine. Without parents an existing name is
// already_exists. What it creates is given to owner (if not nil).
func makeDir(root *os.Root, p, name string, parents bool, owner *Owner) *problem.Error {
	var err error
	if parents {
		err = mkdirAll(root, name, owner)
	} else if err = root.Mkdir(name, filesDirMode); err == nil {
		if err = chown(root, name, owner); err != nil {
			_ = root.Remove(name) // not left behind as the gateway's
		}
	}
	if err != nil {
		return filesError(p, err)
	}
	return nil
}

// mkdirAll is root.MkdirAll, giving each directory it creates to owner.
func mkdirAll(root *os.Root, name string, owner *Owner) error {
	if owner == nil {
		return root.MkdirAll(name, filesDirMode)
	}
	cur := ""
	for part := range strings.SplitSeq(name, "/") {
		cur = path.Join(cur, part)
		err := root.Mkdir(cur, filesDirMode)
		if err == nil {
			if err = chown(root, cur, owner); err != nil {
				_ = root.Remove(cur) // not left behind as the gateway's
			}
		} else if errors.Is(err, fs.ErrExist) {
			err = nil
		}
		if err != nil {
			return err
		}
	}
	if fi, err := root.Stat(name); err != nil {
		return err
	} else if !fi.IsDir() {
		return &fs.PathError{Op: "mkdir", Path: name, Err: syscall.ENOTDIR}
	}
	return nil
}

// chown gives name (not a symlink's target) to owner; nil is a no-op.
func chown(root *os.Root, name string, owner *Owner) error {
	if owner == nil {
		return nil
	}
	return root.Lchown(name, owner.UID, owner.GID)
}

// removePath removes a file, symlink or empty directory; with recursive,
// a whole tree (symlinks in it are removed, never followed).
func removePath(root *os.Root, p, name string, recursive bool) *problem.Error {
	if !recursive {
		if err := root.Remove(name); err != nil {
			return filesError(p, err)
		}
		return nil
	}
	// RemoveAll reports success for a missing name; a client asking to
	// remove something that is not there should hear so.
	if _, err := root.Lstat(name); err != nil {
		return filesError(p, err)
	}
	if err := root.RemoveAll(name); err != nil {
		return filesError(p, err)
	}
	return nil
}

// renamePath renames from to to (replacing a file at to, like rename(2)).
func renamePath(root *os.Root, from, to string) *problem.Error {
	f, perr := filesLeaf(from)
	if perr != nil {
		return perr
	}
	t, perr := filesLeaf(to)
	if perr != nil {
		return perr
	}
	if err := root.Rename(f, t); err != nil {
		return filesError(from+" -> "+to, err)
	}
	return nil
}

// upload is one file being written: to a temp file beside its target,
// renamed over the target only once complete, so a reader of the target
// sees the old file or the new one, never half of one, and an upload cut
// off midway leaves nothing behind.
type upload struct {
	root *os.Root
	p    string // the client's spelling, for messages
	name string // the target, relative to the root
	tmp  string // the temp file, relative to the root
	f    *os.File
	h    hash.Hash
	n    int64
	// size is the announced size, or -1; max bounds n.
	size, max int64
	mode      fs.FileMode
}

// errTooLarge: an upload went over its size or MaxFileSize.
var errTooLarge = errors.New("files: upload too large")

// beginUpload validates the target, creates its missing parents and the
// temp file, all given to owner (if not nil). size is the announced size
// or -1; mode "" keeps the mode of the file it replaces, or 0644.
func beginUpload(root *os.Root, p string, size, max int64, mode string, owner *Owner) (*upload, *problem.Error) {
	name, perr := filesLeaf(p)
	if perr != nil {
		return nil, perr
	}
	m, hasMode, perr := parseMode(mode)
	if perr != nil {
		return nil, perr
	}
	if size > max {
		return nil, problem.New(problem.PayloadTooLarge, "%s: %d bytes is over the %d-byte file limit", p, size, max).With("limit", max)
	}
	dir, base := path.Split(name)
	dir = path.Clean(dir)
	if dir != "." {
		if err := mkdirAll(root, dir, owner); err != nil {
			return nil, filesError(p, err)
		}
	}
	if fi, err := root.Stat(name); err == nil {
		if fi.IsDir() {
			return nil, problem.New(problem.InvalidArgument, "%s: is a directory", p)
		}
		if !hasMode {
			m = fi.Mode() & (fs.ModePerm | fs.ModeSticky) // never set-id: see parseMode
			hasMode = true
		}
	} else if !errors.Is(err, fs.ErrNotExist) {
		return nil, filesError(p, err)
	}
	if !hasMode {
		m = filesDefaultMode
	}
	var rnd [8]byte
	_, _ = rand.Read(rnd[:])
	// The temp name stays short whatever base is, so it fits NAME_MAX.
	short := base
	if len(short) > 32 {
		short = short[:32]
	}
	tmp := path.Join(dir, tempPrefix+hex.EncodeToString(rnd[:])+"-"+short+tempSuffix)
	f, err := root.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return nil, filesError(p, err)
	}
	// The lock says "a live upload": a sweep after a crash removes only
	// temp files nobody holds it on (files_sweep.go). It fails only if a
	// replica's sweep took it in the instant since the create.
	if err := lockTemp(f); err != nil {
		f.Close()
		_ = root.Remove(tmp)
		return nil, filesError(p, err)
	}
	if owner != nil {
		if err := f.Chown(owner.UID, owner.GID); err != nil {
			f.Close()
			_ = root.Remove(tmp)
			return nil, filesError(p, err)
		}
	}
	return &upload{root: root, p: p, name: name, tmp: tmp, f: f, h: sha256.New(), size: size, max: max, mode: m}, nil
}

// Write appends p to the temp file; over the announced size or the
// limit it fails with errTooLarge and writes nothing.
func (u *upload) Write(p []byte) (int, error) {
	if u.n+int64(len(p)) > u.max || (u.size >= 0 && u.n+int64(len(p)) > u.size) {
		return 0, errTooLarge
	}
	n, err := u.f.Write(p)
	u.h.Write(p[:n])
	u.n += int64(n)
	return n, err
}

// writeError maps a failed Write.
func (u *upload) writeError(err error) *problem.Error {
	if errors.Is(err, errTooLarge) {
		if u.size >= 0 && u.size <= u.max {
			return problem.New(problem.InvalidArgument, "%s: more data than the announced %d bytes", u.p, u.size).With("field", "size")
		}
		return problem.New(problem.PayloadTooLarge, "%s: over the %d-byte file limit", u.p, u.max).With("limit", u.max)
	}
	return filesError(u.p, err)
}

// commit checks the size, syncs the data and renames the temp file into
// place. On failure the temp file is removed.
func (u *upload) commit() (*uploadResult, *problem.Error) {
	if u.size >= 0 && u.n != u.size {
		u.abort()
		return nil, problem.New(problem.InvalidArgument, "%s: got %d bytes, announced %d", u.p, u.n, u.size).With("field", "size")
	}
	err := u.f.Chmod(u.mode)
	if err == nil {
		err = u.f.Sync()
	}
	if cerr := u.f.Close(); err == nil {
		err = cerr
	}
	u.f = nil
	if err == nil {
		err = u.root.Rename(u.tmp, u.name)
	}
	if err != nil {
		u.abort()
		return nil, filesError(u.p, err)
	}
	// Make the rename itself durable; a failure here loses nothing the
	// client can act on, so it is not reported.
	// O_DIRECTORY: the workload may have swapped the directory for a
	// FIFO meanwhile, and open(2) must not wait for a writer (issue 12).
	if d, err := u.root.OpenFile(path.Dir(u.name), os.O_RDONLY|syscall.O_DIRECTORY|syscall.O_NONBLOCK, 0); err == nil {
		_ = d.Sync()
		_ = d.Close()
	}
	res := &uploadResult{Bytes: u.n, SHA256: hex.EncodeToString(u.h.Sum(nil))}
	if fi, err := u.root.Stat(u.name); err == nil {
		res.fi = fi
	}
	return res, nil
}

// abort drops the upload: the temp file is closed and removed, the
// target untouched.
func (u *upload) abort() {
	if u.f != nil {
		_ = u.f.Close()
		u.f = nil
	}
	_ = u.root.Remove(u.tmp)
}

type uploadResult struct {
	Bytes  int64
	SHA256 string
	fi     fs.FileInfo // of the new file, when stat'able
}

// etag is a strong validator of a file version: inode, size and mtime in
// nanoseconds. A rewrite through an upload is a new inode, so two
// versions with the same size and a coarse mtime still differ.
func etag(fi fs.FileInfo) string {
	var ino uint64
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		ino = st.Ino
	}
	return fmt.Sprintf(`"%x-%x-%x"`, ino, fi.Size(), fi.ModTime().UnixNano())
}
