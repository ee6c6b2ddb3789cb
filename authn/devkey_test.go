package authn

import (
	"bytes"
	"crypto/ed25519"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/nimbus/gateway/problem"
)

func TestLoadOrCreateDevKey(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	first, err := LoadOrCreateDevKey(dir)
	if err != nil {
		t.Fatal(err)
	}
	again, err := LoadOrCreateDevKey(dir)
	if err != nil {
		t.Fatal(err)
	}
	if !first.Equal(again) {
		t.Error("reloaded development key differs from the created one")
	}
	if runtime.GOOS == "windows" {
		return
	}
	path := filepath.Join(dir, "keys", "dev-tenant.pem")
	for p, want := range map[string]os.FileMode{path: 0o600, filepath.Dir(path): 0o700} {
		fi, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		if got := fi.Mode().Perm(); got != want {
			t.Errorf("%s mode = %v, want %v", p, got, want)
		}
	}
	entries, err := os.ReadDir(filepath.Dir(path))
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 1 {
		t.Errorf("keys dir holds %d entries, want only the key (temp files left behind?)", len(entries))
	}
}

func TestLoadOrCreateDevKeyConcurrent(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	const n = 16
	keys := make([]ed25519.PrivateKey, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() { keys[i], errs[i] = LoadOrCreateDevKey(dir) })
	}
	wg.Wait()
	for i := range n {
		if errs[i] != nil {
			t.Fatalf("caller %d: %v", i, errs[i])
		}
		if !keys[i].Equal(keys[0]) {
			t.Fatalf("caller %d got a different key than caller 0", i)
		}
	}
	onDisk, err := LoadOrCreateDevKey(dir)
	if err != nil {
		t.Fatal(err)
	}
	if !onDisk.Equal(keys[0]) {
		t.Fatal("the key on disk differs from the one handed out")
	}
}

func TestLoadOrCreateDevKeyRejectsCorruptFile(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, "keys"), 0o700); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "keys", "dev-tenant.pem")
	garbage := []byte("not a key\n")
	if err := os.WriteFile(path, garbage, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadOrCreateDevKey(dir); err == nil {
		t.Fatal("corrupt key file accepted")
	}
	// It must not be replaced: tokens minted earlier would silently die.
	if got, _ := os.ReadFile(path); !bytes.Equal(got, garbage) {
		t.Error("corrupt key file was overwritten")
	}
}

func TestMintVerifyRoundTrip(t *testing.T) {
	t.Parallel()
	priv, err := LoadOrCreateDevKey(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	v, err := NewVerifier([]Key{DevKey(priv)}, WithClock(fixedClock))
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		kid  string
		req  MintRequest
	}{
		{"full", DevKeyID, MintRequest{Tenant: "demo", Subject: "alice", Services: []string{"worker", "browser"}, Sandboxes: []string{"sbx-worker"}, Admin: true, TTL: 10 * time.Minute, Now: testNow}},
		{"default TTL", DevKeyID, MintRequest{Tenant: "demo", Subject: "bob", Now: testNow.Add(-30 * time.Minute)}},
		{"no kid", "", MintRequest{Tenant: "t2", Subject: "carol", Now: testNow}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			token, err := Mint(priv, tt.kid, tt.req)
			if err != nil {
				t.Fatal(err)
			}
			p, err := v.Verify(token)
			if err != nil {
				t.Fatal(err)
			}
			ttl := tt.req.TTL
			if ttl == 0 {
				ttl = DefaultMintTTL
			}
			if p.Subject != tt.req.Subject || p.Tenant != tt.req.Tenant || p.Admin != tt.req.Admin ||
				!slices.Equal(p.Services, tt.req.Services) || !slices.Equal(p.Sandboxes, tt.req.Sandboxes) ||
				!p.ExpiresAt.Equal(tt.req.Now.Add(ttl)) {
				t.Errorf("principal = %+v, request %+v", *p, tt.req)
			}
		})
	}

	t.Run("expired mint", func(t *testing.T) {
		t.Parallel()
		token, err := Mint(priv, DevKeyID, MintRequest{Tenant: "demo", Subject: "alice", TTL: time.Minute, Now: testNow.Add(-2 * time.Minute)})
		if err != nil {
			t.Fatal(err)
		}
		_, err = v.Verify(token)
		wantProblem(t, err, problem.Unauthenticated, "expired", token)
	})
	t.Run("other dev key", func(t *testing.T) {
		t.Parallel()
		token, err := Mint(ed25519NewKey(t), DevKeyID, MintRequest{Tenant: "demo", Subject: "alice", Now: testNow})
		if err != nil {
			t.Fatal(err)
		}
		_, err = v.Verify(token)
		wantProblem(t, err, problem.Unauthenticated, "signature", token)
	})
}

func TestMintRejects(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		priv ed25519.PrivateKey
		req  MintRequest
	}{
		{"no tenant", testEd, MintRequest{Subject: "alice"}},
		{"no subject", testEd, MintRequest{Tenant: "demo"}},
		{"negative TTL", testEd, MintRequest{Tenant: "demo", Subject: "alice", TTL: -time.Second}},
		{"nil key", nil, MintRequest{Tenant: "demo", Subject: "alice"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			if _, err := Mint(tt.priv, DevKeyID, tt.req); err == nil {
				t.Fatal("Mint accepted it")
			}
		})
	}
}
