package channels

import (
	"errors"
	"io/fs"
	"os"
	"path"
	"strings"
	"sync"
	"syscall"
)

// Leftover upload temp files. An upload holds an exclusive flock(2) on
// its temp file from creation to rename or removal; the kernel drops it
// when the process dies, however it dies. Issue 12: a gateway killed
// with SIGKILL mid-upload left its .nimbus-*.part files in the sandbox
// forever. The first files request of a root in a process sweeps them:
// a temp file whose lock can be taken has no live upload (this process
// has none yet on that root, and another replica's still holds its
// lock), so it is removed.

const (
	// tempPrefix and tempSuffix frame an upload's temp file name:
	// .nimbus-<random>-<name>.part.
	tempPrefix = ".nimbus-"
	tempSuffix = ".part"
	// sweepMaxEntries bounds the directory entries one sweep visits, so
	// a sandbox of millions of files costs its first request a bounded
	// walk (about a second); temp files past it stay.
	sweepMaxEntries = 1 << 20
)

// sweptRoots holds a *sync.Once per file root (host path) whose leftover
// temp files this process has swept or is sweeping.
var sweptRoots sync.Map

// sweepOnce sweeps root's leftover temp files the first time this
// process serves root; requests that come meanwhile wait for it, so no
// upload of this process starts on root during its sweep.
func sweepOnce(root *os.Root, dir string) {
	once, _ := sweptRoots.LoadOrStore(dir, new(sync.Once))
	once.(*sync.Once).Do(func() { sweepTemps(root) })
}

// sweepTemps walks root, never following a symlink, and removes the temp
// files of uploads that no process runs any more. It returns how many.
func sweepTemps(root *os.Root) int {
	removed, seen := 0, 0
	dirs := []string{"."}
	for len(dirs) > 0 && seen < sweepMaxEntries {
		dir := dirs[len(dirs)-1]
		dirs = dirs[:len(dirs)-1]
		// O_DIRECTORY: a directory swapped for a FIFO is refused before
		// open(2) could wait for a writer.
		d, err := root.OpenFile(dir, os.O_RDONLY|syscall.O_DIRECTORY|syscall.O_NONBLOCK, 0)
		if err != nil {
			continue // gone, or not a directory any more
		}
		for seen < sweepMaxEntries {
			ents, err := d.ReadDir(256)
			for _, e := range ents {
				seen++
				name := path.Join(dir, e.Name())
				switch {
				case e.IsDir():
					dirs = append(dirs, name)
				case e.Type().IsRegular() && isTempName(e.Name()):
					if removeDeadTemp(root, name) {
						removed++
					}
				}
			}
			if err != nil || len(ents) == 0 {
				break // the end (io.EOF), or a directory that went away
			}
		}
		d.Close()
	}
	return removed
}

func isTempName(n string) bool {
	return strings.HasPrefix(n, tempPrefix) && strings.HasSuffix(n, tempSuffix) && len(n) > len(tempPrefix)+len(tempSuffix)
}

// removeDeadTemp removes the temp file name if no upload holds its lock.
// It opens it without blocking, refuses what is not a regular file, and
// removes the name only while it still names the file it locked (not a
// symlink swapped in, which os.Root would have followed).
func removeDeadTemp(root *os.Root, name string) bool {
	f, err := root.OpenFile(name, os.O_RDONLY|syscall.O_NONBLOCK|syscall.O_NOCTTY, 0)
	if err != nil {
		return false
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil || !fi.Mode().IsRegular() {
		return false
	}
	if lockTemp(f) != nil {
		return false // a live upload's, or locked by the workload
	}
	cur, err := root.Lstat(name)
	if err != nil || !os.SameFile(fi, cur) {
		return false
	}
	return root.Remove(name) == nil
}

// lockTemp takes f's exclusive flock without waiting: EWOULDBLOCK when
// another open file holds it.
func lockTemp(f *os.File) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var lerr error
	if err := rc.Control(func(fd uintptr) {
		for {
			lerr = syscall.Flock(int(fd), syscall.LOCK_EX|syscall.LOCK_NB)
			if !errors.Is(lerr, syscall.EINTR) {
				return
			}
		}
	}); err != nil {
		return err
	}
	if lerr != nil {
		return &fs.PathError{Op: "flock", Path: f.Name(), Err: lerr}
	}
	return nil
}
