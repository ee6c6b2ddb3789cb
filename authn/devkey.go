package authn

import (
	"crypto/ed25519"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
)

// DevKeyID is the kid of the development key, used in the tokens Mint signs
// with it and in the Key DevKey returns.
const DevKeyID = "dev"

// devKeyFile is the development key's file name inside <dataDir>/keys.
const devKeyFile = "dev-tenant.pem"

// LoadOrCreateDevKey returns the development tenant-token signing key kept in
// <dataDir>/keys/dev-tenant.pem (PKCS#8 PEM, mode 0600, directory 0700),
// creating it if absent. The gateway uses it when no keys are configured, and
// `gateway token mint` signs with it. Creation is atomic and first-writer-wins,
// so concurrent callers (a server starting while a mint runs) all return the
// same key.
func LoadOrCreateDevKey(dataDir string) (ed25519.PrivateKey, error) {
	dir, err := keysDir(dataDir)
	if err != nil {
		return nil, err
	}
	path := filepath.Join(dir, devKeyFile)
	priv, err := readDevKey(path)
	if !errors.Is(err, fs.ErrNotExist) {
		return priv, err
	}
	_, fresh, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("authn: generate development key: %w", err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(fresh)
	if err != nil {
		return nil, fmt.Errorf("authn: encode development key: %w", err)
	}
	data := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
	created, err := createExclusive(path, data)
	if err != nil {
		return nil, fmt.Errorf("authn: write development key: %w", err)
	}
	if created {
		return fresh, nil
	}
	// Another process won the race; its key is the one.
	return readDevKey(path)
}

// DevKey returns the verification Key (ID DevKeyID) of a development key.
// An invalid priv yields a Key without material, which NewVerifier rejects.
func DevKey(priv ed25519.PrivateKey) Key {
	if len(priv) != ed25519.PrivateKeySize {
		return Key{ID: DevKeyID}
	}
	return Key{ID: DevKeyID, Public: priv.Public().(ed25519.PublicKey)}
}

// readDevKey parses the development key file. A missing file is reported
// with an error matching fs.ErrNotExist.
func readDevKey(path string) (ed25519.PrivateKey, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("authn: read development key: %w", err)
	}
	block, _ := pem.Decode(data)
	if block == nil || block.Type != "PRIVATE KEY" {
		return nil, fmt.Errorf("authn: %s: not a PEM private key", path)
	}
	key, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("authn: %s: %w", path, err)
	}
	priv, ok := key.(ed25519.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("authn: %s: %T is not an Ed25519 key", path, key)
	}
	return priv, nil
}
