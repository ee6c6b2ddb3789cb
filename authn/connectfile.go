package authn

import (
	"bytes"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
)

// connectKeysFile is the connect keyset's file name inside <dataDir>/keys.
const connectKeysFile = "connect.json"

// connectFile is the JSON form of a keyset:
//
//	{"signing": "k2", "keys": {"k1": "<base64>", "k2": "<base64>"}}
//
// with standard (padded) base64 secrets.
type connectFile struct {
	Signing string            `json:"signing"`
	Keys    map[string]string `json:"keys"`
}

// LoadConnectKeys reads a connect keyset from a JSON file (see connectFile).
// Every replica of a fleet must load the same file, so that any of them
// accepts any connect URL (SPEC §5).
func LoadConnectKeys(path string, opts ...ConnectOption) (*ConnectKeys, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("authn: read connect keys: %w", err)
	}
	k, err := parseConnectFile(data, opts)
	if err != nil {
		return nil, fmt.Errorf("authn: connect keys %s: %w", path, err)
	}
	return k, nil
}

// ParseConnectKeys reads a keyset in the file format of LoadConnectKeys
// from data, for keys passed inline (an environment variable) rather than
// in a file.
func ParseConnectKeys(data []byte, opts ...ConnectOption) (*ConnectKeys, error) {
	k, err := parseConnectFile(data, opts)
	if err != nil {
		return nil, fmt.Errorf("authn: connect keys: %w", err)
	}
	return k, nil
}

// LoadOrCreateConnectKeys loads <dataDir>/keys/connect.json, first creating
// it (one random 32-byte key with an id like "c-1a2b3c4d", mode 0600) if it
// is absent. Creation is atomic and first-writer-wins, so concurrent callers
// end up with the same keyset.
func LoadOrCreateConnectKeys(dataDir string, opts ...ConnectOption) (*ConnectKeys, error) {
	dir, err := keysDir(dataDir)
	if err != nil {
		return nil, err
	}
	path := filepath.Join(dir, connectKeysFile)
	k, err := LoadConnectKeys(path, opts...)
	if !errors.Is(err, fs.ErrNotExist) {
		return k, err
	}
	data, err := newConnectFile()
	if err != nil {
		return nil, err
	}
	if _, err := createExclusive(path, data); err != nil {
		return nil, fmt.Errorf("authn: write connect keys: %w", err)
	}
	// Whether we or a concurrent caller created it, the file is the truth.
	return LoadConnectKeys(path, opts...)
}

// newConnectFile returns the JSON of a fresh one-key keyset.
func newConnectFile() ([]byte, error) {
	var id [4]byte
	secret := make([]byte, minSecretLen)
	if _, err := rand.Read(id[:]); err != nil {
		return nil, err
	}
	if _, err := rand.Read(secret); err != nil {
		return nil, err
	}
	kid := "c-" + hex.EncodeToString(id[:])
	data, err := json.MarshalIndent(connectFile{
		Signing: kid,
		Keys:    map[string]string{kid: base64.StdEncoding.EncodeToString(secret)},
	}, "", "  ")
	if err != nil {
		return nil, err
	}
	return append(data, '\n'), nil
}

// parseConnectFile decodes a keyset file strictly: an unknown field is more
// likely a typo ("signing_key") than something safe to ignore.
func parseConnectFile(data []byte, opts []ConnectOption) (*ConnectKeys, error) {
	var f connectFile
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&f); err != nil {
		return nil, fmt.Errorf("decode: %w", err)
	}
	secrets := make(map[string][]byte, len(f.Keys))
	for id, enc := range f.Keys {
		secret, err := base64.StdEncoding.DecodeString(enc)
		if err != nil {
			return nil, fmt.Errorf("key %q: %w", id, err)
		}
		secrets[id] = secret
	}
	return newConnectKeys(f.Signing, secrets, opts)
}
