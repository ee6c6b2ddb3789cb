package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/nimbus/gateway/targets"
)

func TestParseSandboxUsers(t *testing.T) {
	if os.Geteuid() != 0 {
		// Without root every valid spec is refused (it could not be used).
		if _, _, err := parseSandboxUsers("nobody"); err == nil || !strings.Contains(err.Error(), "root") {
			t.Fatalf("as non-root: %v", err)
		}
		t.Skip("the rest needs root, as --sandbox-user does")
	}
	for _, c := range []struct {
		spec    string
		cred    *targets.Credential
		block   *targets.UIDRange
		failure string
	}{
		{"", nil, nil, ""},
		{"nobody", &targets.Credential{UID: 65534, GID: 65534}, nil, ""},
		{"65534:0", nil, nil, ""}, // group 0 is allowed; only uid 0 is not
		{"4242", &targets.Credential{UID: 4242, GID: 4242}, nil, ""},
		{"200000-299999", nil, &targets.UIDRange{First: 200000, Last: 299999}, ""},
		{"root", nil, nil, "is root"},
		{"0", nil, nil, "is root"},
		{"www-data", &targets.Credential{UID: 33, GID: 33}, nil, ""}, // a dash in a name is not a block
		{"no-such-user-x", nil, nil, "no user"},
		{"nosuchuser", nil, nil, "no user"},
		{"5-3", nil, nil, "first-last"},
		{"0-10", nil, nil, "first-last"},
		{"1000-2000", nil, nil, "from 65536"}, // the system's ids and its users'
		{"300000-2147483648", nil, nil, "first-last"},
		{"nobody:nosuchgroup", nil, nil, "no group"},
	} {
		cred, block, err := parseSandboxUsers(c.spec)
		switch {
		case c.failure != "":
			if err == nil || !strings.Contains(err.Error(), c.failure) {
				t.Errorf("%q: err %v, want %q", c.spec, err, c.failure)
			}
		case err != nil:
			t.Errorf("%q: %v", c.spec, err)
		case c.spec == "65534:0":
			if cred == nil || cred.UID != 65534 || cred.GID != 0 {
				t.Errorf("%q: %+v", c.spec, cred)
			}
		case (cred == nil) != (c.cred == nil) || cred != nil && *cred != *c.cred || (block == nil) != (c.block == nil) || block != nil && *block != *c.block:
			t.Errorf("%q: %+v %+v, want %+v %+v", c.spec, cred, block, c.cred, c.block)
		}
	}
}

// A block is refused when a user or group of the system has an id in it.
func TestIDInBlock(t *testing.T) {
	if id, name, ok := idInBlock(65000, 65535); !ok || id != 65534 || !strings.Contains(name, "nobody") {
		t.Fatalf("idInBlock(65000, 65535) = %d %q %v, want nobody's 65534", id, name, ok)
	}
	if _, _, ok := idInBlock(400000, 400999); ok {
		t.Fatal("a block above every system id reported taken")
	}
}

// openDataDirTo opens the way to the sandbox roots and closes the rest: a
// database an older gateway made 0644 becomes 0600.
func TestOpenDataDirTo(t *testing.T) {
	dir := t.TempDir()
	for _, d := range []string{filepath.Dir(dir), dir} {
		if err := os.Chmod(d, 0o711); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(dir, "nimbus.db"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(filepath.Join(dir, "keys"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := openDataDirTo(dir, targets.Credential{UID: 400000, GID: 400000}); err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string]os.FileMode{".": 0o711, "nimbus.db": 0o600, "keys": 0o700, "sandboxes": 0o711} {
		fi, err := os.Stat(filepath.Join(dir, name))
		if err != nil || fi.Mode().Perm() != want {
			t.Errorf("%s: %v, want %v (%v)", name, fi.Mode().Perm(), want, err)
		}
	}
}

// Two gateways with a block of ids cannot share a data directory.
func TestLockDataDir(t *testing.T) {
	dir := t.TempDir()
	unlock, err := lockDataDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := lockDataDir(dir); err == nil || !strings.Contains(err.Error(), "another gateway") {
		t.Fatalf("second lock: %v", err)
	}
	unlock()
	again, err := lockDataDir(dir)
	if err != nil {
		t.Fatalf("after unlock: %v", err)
	}
	again()
}
