package authn

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"os"
	"path/filepath"
	"testing"

	"github.com/golang-jwt/jwt/v5"
)

func pemOf(t testing.TB, typ string, der []byte, err error) []byte {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der})
}

func TestLoadKeyFile(t *testing.T) {
	t.Parallel()
	rsaKey := testRSA()
	edPKIX, edErr := x509.MarshalPKIXPublicKey(testEd.Public())
	rsaPKIX, rsaErr := x509.MarshalPKIXPublicKey(&rsaKey.PublicKey)
	edPKCS8, edPrivErr := x509.MarshalPKCS8PrivateKey(testEd)
	rsaPKCS8, rsaPrivErr := x509.MarshalPKCS8PrivateKey(rsaKey)

	tests := []struct {
		name     string
		file     string
		data     []byte
		wantID   string
		wantKind keyKind
		// sign returns a token only this key verifies.
		method jwt.SigningMethod
		signer any
	}{
		{"Ed25519 PKIX", "ed.pub.pem", pemOf(t, "PUBLIC KEY", edPKIX, edErr), "ed.pub", kindEd25519, jwt.SigningMethodEdDSA, testEd},
		{"RSA PKIX", "rsa.pem", pemOf(t, "PUBLIC KEY", rsaPKIX, rsaErr), "rsa", kindRSA, jwt.SigningMethodRS256, rsaKey},
		{"RSA PKCS1 public", "rsa1.pem", pemOf(t, "RSA PUBLIC KEY", x509.MarshalPKCS1PublicKey(&rsaKey.PublicKey), nil), "rsa1", kindRSA, jwt.SigningMethodPS256, rsaKey},
		{"Ed25519 PKCS8 private", "edpriv.pem", pemOf(t, "PRIVATE KEY", edPKCS8, edPrivErr), "edpriv", kindEd25519, jwt.SigningMethodEdDSA, testEd},
		{"RSA PKCS8 private", "rsapriv.key", pemOf(t, "PRIVATE KEY", rsaPKCS8, rsaPrivErr), "rsapriv", kindRSA, jwt.SigningMethodRS384, rsaKey},
		{"RSA PKCS1 private", "rsa1priv", pemOf(t, "RSA PRIVATE KEY", x509.MarshalPKCS1PrivateKey(rsaKey), nil), "rsa1priv", kindRSA, jwt.SigningMethodRS256, rsaKey},
		{"HMAC secret with newline", "hs.secret", append(bytes.Clone(testSecret), '\n'), "hs", kindHMAC, jwt.SigningMethodHS256, testSecret},
		{"HMAC secret with CRLF", "hs2.txt", append(bytes.Clone(testSecret), '\r', '\n'), "hs2", kindHMAC, jwt.SigningMethodHS384, testSecret},
		{"HMAC secret bare", "hs3", testSecret, "hs3", kindHMAC, jwt.SigningMethodHS512, testSecret},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			path := filepath.Join(t.TempDir(), tt.file)
			if err := os.WriteFile(path, tt.data, 0o600); err != nil {
				t.Fatal(err)
			}
			k, err := LoadKeyFile(path)
			if err != nil {
				t.Fatal(err)
			}
			if k.ID != tt.wantID {
				t.Errorf("ID = %q, want %q", k.ID, tt.wantID)
			}
			if kind, err := kindOfKey(k.Public); err != nil || kind != tt.wantKind {
				t.Fatalf("kind = %v, %v; want %v", kind, err, tt.wantKind)
			}
			if secret, ok := k.Public.([]byte); ok && !bytes.Equal(secret, testSecret) {
				t.Errorf("secret = %q, want %q", secret, testSecret)
			}
			v, err := NewVerifier([]Key{k}, WithClock(fixedClock))
			if err != nil {
				t.Fatal(err)
			}
			if _, err := v.Verify(signToken(t, tt.method, tt.signer, tt.wantID, validClaims())); err != nil {
				t.Errorf("token signed with the matching key rejected: %v", err)
			}
		})
	}
}

func TestLoadKeyFileRejects(t *testing.T) {
	t.Parallel()
	ec, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	ecPKIX, ecErr := x509.MarshalPKIXPublicKey(&ec.PublicKey)
	ecPKCS8, ecPrivErr := x509.MarshalPKCS8PrivateKey(ec)
	small, err := rsa.GenerateKey(rand.Reader, 1024)
	if err != nil {
		t.Fatal(err)
	}
	smallPKIX, smallErr := x509.MarshalPKIXPublicKey(&small.PublicKey)

	tests := []struct {
		name string
		data []byte
	}{
		{"short HMAC secret", []byte("only-31-bytes-long-secret-value\n")},
		{"empty file", nil},
		{"ECDSA public key", pemOf(t, "PUBLIC KEY", ecPKIX, ecErr)},
		{"ECDSA private key", pemOf(t, "PRIVATE KEY", ecPKCS8, ecPrivErr)},
		{"RSA 1024", pemOf(t, "PUBLIC KEY", smallPKIX, smallErr)},
		{"certificate", pemOf(t, "CERTIFICATE", []byte("not really"), nil)},
		// A broken PEM must not silently become an HMAC secret anyone can
		// compute from the public file.
		{"truncated PEM", []byte("-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEA" + string(bytes.Repeat([]byte("A"), 40)) + "\n")},
		{"PEM with garbage body", pemOf(t, "PUBLIC KEY", bytes.Repeat([]byte{1}, 64), nil)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			path := filepath.Join(t.TempDir(), "key.pem")
			if err := os.WriteFile(path, tt.data, 0o600); err != nil {
				t.Fatal(err)
			}
			if k, err := LoadKeyFile(path); err == nil {
				t.Fatalf("LoadKeyFile accepted it: %T", k.Public)
			}
		})
	}
	if _, err := LoadKeyFile(filepath.Join(t.TempDir(), "missing.pem")); err == nil {
		t.Error("LoadKeyFile of a missing file succeeded")
	}
}

// TestKeyFileKeyConfusion loads the RSA public key the way an operator
// would, then replays the HS256-with-the-PEM attack against it.
func TestKeyFileKeyConfusion(t *testing.T) {
	t.Parallel()
	pemBytes := rsaPublicPEM(t)
	path := filepath.Join(t.TempDir(), "issuer.pem")
	if err := os.WriteFile(path, pemBytes, 0o644); err != nil {
		t.Fatal(err)
	}
	k, err := LoadKeyFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := k.Public.(*rsa.PublicKey); !ok {
		t.Fatalf("Public = %T, want *rsa.PublicKey", k.Public)
	}
	v, err := NewVerifier([]Key{k}, WithClock(fixedClock))
	if err != nil {
		t.Fatal(err)
	}
	for _, kid := range []string{"issuer", ""} {
		if _, err := v.Verify(signToken(t, jwt.SigningMethodHS256, pemBytes, kid, validClaims())); err == nil {
			t.Errorf("kid %q: HS256 signed with the public PEM accepted", kid)
		}
	}
	if _, err := v.Verify(signToken(t, jwt.SigningMethodRS256, testRSA(), "issuer", validClaims())); err != nil {
		t.Errorf("genuine RS256 token rejected: %v", err)
	}
}
