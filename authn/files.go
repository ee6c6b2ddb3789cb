package authn

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
)

// keysDir is the directory under the data directory that holds generated
// keys. It is created 0700: it contains signing material.
func keysDir(dataDir string) (string, error) {
	if dataDir == "" {
		return "", errors.New("authn: empty data directory")
	}
	dir := filepath.Join(dataDir, "keys")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", fmt.Errorf("authn: create key directory: %w", err)
	}
	return dir, nil
}

// createExclusive writes data to path, mode 0600, only if path does not
// exist yet, and reports whether it did. The data goes to a temporary file
// first and is then hard-linked into place: a reader never sees a partial
// file, and unlike rename, link never replaces a file another process
// created meanwhile, so concurrent creators all end up with the same key
// (with rename, the first one would hand out a key that was then
// overwritten). On filesystems without hard links it falls back to rename,
// which keeps atomicity but not the "first writer wins" property.
func createExclusive(path string, data []byte) (created bool, err error) {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return false, err
	}
	tmpName := tmp.Name()
	defer os.Remove(tmpName) // after a link the name is a second entry; drop it
	if err := tmp.Chmod(0o600); err != nil {
		tmp.Close()
		return false, err
	}
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return false, err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return false, err
	}
	if err := tmp.Close(); err != nil {
		return false, err
	}
	switch err := os.Link(tmpName, path); {
	case err == nil:
	case errors.Is(err, fs.ErrExist):
		return false, nil
	default:
		if _, statErr := os.Stat(path); statErr == nil {
			return false, nil
		}
		if err := os.Rename(tmpName, path); err != nil {
			return false, err
		}
	}
	syncDir(filepath.Dir(path))
	return true, nil
}

// syncDir makes a new directory entry durable. It is best effort: some
// platforms cannot fsync a directory, and the file itself is already synced.
func syncDir(dir string) {
	if d, err := os.Open(dir); err == nil {
		_ = d.Sync()
		_ = d.Close()
	}
}
