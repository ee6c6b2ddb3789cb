package authn

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// Key is one tenant-token verification key. Signing keys never live in a Key:
// the gateway only signs tenant tokens with its development key (see Mint).
type Key struct {
	// ID is matched against a token's "kid" header. It must be non-empty and
	// unique within a Verifier.
	ID string
	// Public is the verification material: a []byte HMAC secret of at least
	// 32 bytes, an ed25519.PublicKey, or an *rsa.PublicKey of at least 2048
	// bits. Its type decides which algorithms it may verify.
	Public any
}

const (
	// minSecretLen is the shortest HMAC secret accepted: RFC 7518 §3.2
	// requires a key at least as long as the HS256 hash output.
	minSecretLen = 32
	// minRSABits rejects RSA keys that are factorable in practice.
	minRSABits = 2048
)

// LoadKeyFile reads a tenant-token verification key from path. The file is
// either a PEM "PUBLIC KEY" (PKIX, Ed25519 or RSA) or "RSA PUBLIC KEY"
// (PKCS#1) block, a PEM private key ("PRIVATE KEY" PKCS#8 Ed25519/RSA, or
// "RSA PRIVATE KEY"), of which only the public half is kept, or else raw bytes
// used as an HMAC secret (a trailing newline is trimmed; at least 32 bytes).
// The key's ID is the file's base name without its extension.
//
// A file that looks like PEM but does not parse is an error, never a secret:
// otherwise a public key of an unsupported type would become an HMAC secret
// that anyone could sign with (the classic RS256→HS256 key-confusion attack).
func LoadKeyFile(path string) (Key, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return Key{}, fmt.Errorf("authn: read key file: %w", err)
	}
	base := filepath.Base(path)
	k := Key{ID: strings.TrimSuffix(base, filepath.Ext(base))}
	if k.Public, err = parseKey(data); err != nil {
		return Key{}, fmt.Errorf("authn: key file %s: %w", path, err)
	}
	if _, err := kindOfKey(k.Public); err != nil {
		return Key{}, fmt.Errorf("authn: key file %s: %w", path, err)
	}
	return k, nil
}

// parseKey turns the bytes of a key file into verification material.
func parseKey(data []byte) (any, error) {
	block, _ := pem.Decode(data)
	if block == nil {
		if bytes.Contains(data, []byte("-----BEGIN")) {
			return nil, errors.New("malformed PEM")
		}
		secret := bytes.TrimSuffix(bytes.TrimSuffix(data, []byte("\n")), []byte("\r"))
		return secret, nil
	}
	switch block.Type {
	case "PUBLIC KEY":
		return x509.ParsePKIXPublicKey(block.Bytes)
	case "RSA PUBLIC KEY":
		return x509.ParsePKCS1PublicKey(block.Bytes)
	case "PRIVATE KEY":
		priv, err := x509.ParsePKCS8PrivateKey(block.Bytes)
		if err != nil {
			return nil, err
		}
		switch priv := priv.(type) {
		case ed25519.PrivateKey:
			return priv.Public(), nil
		case *rsa.PrivateKey:
			return &priv.PublicKey, nil
		default:
			return nil, fmt.Errorf("unsupported private key type %T", priv)
		}
	case "RSA PRIVATE KEY":
		priv, err := x509.ParsePKCS1PrivateKey(block.Bytes)
		if err != nil {
			return nil, err
		}
		return &priv.PublicKey, nil
	default:
		return nil, fmt.Errorf("unsupported PEM block %q", block.Type)
	}
}

// keyKind is the family of a key; a token's alg must belong to the same
// family as the key that verifies it.
type keyKind int

const (
	kindHMAC keyKind = iota + 1
	kindEd25519
	kindRSA
)

// tenantAlgs is the allow-list of tenant-token algorithms. "none" and every
// algorithm not listed (ES*, PS384, PS512) are rejected before any key is
// consulted.
var tenantAlgs = []string{"HS256", "HS384", "HS512", "EdDSA", "RS256", "RS384", "RS512", "PS256"}

// kindOfAlg returns the key family that may verify alg, or 0 for none.
func kindOfAlg(alg string) keyKind {
	switch alg {
	case "HS256", "HS384", "HS512":
		return kindHMAC
	case "EdDSA":
		return kindEd25519
	case "RS256", "RS384", "RS512", "PS256":
		return kindRSA
	}
	return 0
}

// kindOfKey classifies and checks verification material.
func kindOfKey(pub any) (keyKind, error) {
	switch pub := pub.(type) {
	case []byte:
		if len(pub) < minSecretLen {
			return 0, fmt.Errorf("HMAC secret is %d bytes, need at least %d", len(pub), minSecretLen)
		}
		return kindHMAC, nil
	case ed25519.PublicKey:
		if len(pub) != ed25519.PublicKeySize {
			return 0, fmt.Errorf("Ed25519 public key is %d bytes, need %d", len(pub), ed25519.PublicKeySize)
		}
		return kindEd25519, nil
	case *rsa.PublicKey:
		if pub == nil || pub.N == nil {
			return 0, errors.New("nil RSA public key")
		}
		if pub.N.BitLen() < minRSABits {
			return 0, fmt.Errorf("RSA key is %d bits, need at least %d", pub.N.BitLen(), minRSABits)
		}
		return kindRSA, nil
	default:
		return 0, fmt.Errorf("unsupported key type %T", pub)
	}
}
