package authn

import (
	"crypto/ed25519"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/nimbus/gateway/problem"
)

// testNow is the fixed clock of the tests; tokens are minted around it.
var testNow = time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)

func fixedClock() time.Time { return testNow }

// testSecret is the HMAC secret of the "hs" key.
var testSecret = []byte("0123456789abcdef0123456789abcdef-nimbus-test")

// testEd is a deterministic Ed25519 key (kid "ed").
var testEd = func() ed25519.PrivateKey {
	seed := sha256.Sum256([]byte("nimbus authn test seed"))
	return ed25519.NewKeyFromSeed(seed[:])
}()

// testRSA is generated once per run: RSA generation is slow.
var testRSA = sync.OnceValue(func() *rsa.PrivateKey {
	k, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		panic(err)
	}
	return k
})

// testKeys is the verifier keyset of most tests: one key of each family.
func testKeys() []Key {
	return []Key{
		{ID: "hs", Public: testSecret},
		{ID: "ed", Public: testEd.Public()},
		{ID: "rsa", Public: &testRSA().PublicKey},
	}
}

func newTestVerifier(t testing.TB, opts ...VerifierOption) *Verifier {
	t.Helper()
	v, err := NewVerifier(testKeys(), append([]VerifierOption{WithClock(fixedClock)}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// validClaims is a complete, valid tenant claim set as a map, so a test can
// delete or change any claim.
func validClaims() jwt.MapClaims {
	return jwt.MapClaims{
		"sub":    "alice",
		"tid":    "demo",
		"aud":    []string{"nimbus"},
		"iat":    testNow.Add(-time.Minute).Unix(),
		"exp":    testNow.Add(time.Hour).Unix(),
		"jti":    "j1",
		"grants": map[string]any{"services": []string{"worker"}, "sandboxes": []string{"sbx-worker"}},
		"admin":  true,
	}
}

// signToken signs claims with method and key, setting kid when non-empty.
func signToken(t testing.TB, method jwt.SigningMethod, key any, kid string, claims jwt.Claims) string {
	t.Helper()
	tok := jwt.NewWithClaims(method, claims)
	if kid != "" {
		tok.Header["kid"] = kid
	}
	s, err := tok.SignedString(key)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// rawToken assembles a token from JSON header and payload and a raw
// signature, for shapes jwt refuses to produce.
func rawToken(header, payload map[string]any, sig []byte) string {
	enc := func(v any) string {
		b, err := json.Marshal(v)
		if err != nil {
			panic(err)
		}
		return base64.RawURLEncoding.EncodeToString(b)
	}
	return enc(header) + "." + enc(payload) + "." + base64.RawURLEncoding.EncodeToString(sig)
}

// tamper rewrites one claim of a signed token and keeps the old signature.
func tamper(t testing.TB, token, claim string, value any) string {
	t.Helper()
	parts := strings.Split(token, ".")
	raw, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		t.Fatal(err)
	}
	var payload map[string]any
	if err := json.Unmarshal(raw, &payload); err != nil {
		t.Fatal(err)
	}
	payload[claim] = value
	b, err := json.Marshal(payload)
	if err != nil {
		t.Fatal(err)
	}
	parts[1] = base64.RawURLEncoding.EncodeToString(b)
	return strings.Join(parts, ".")
}

// rsaPublicPEM is the PKIX PEM of the test RSA public key: public knowledge,
// and the secret of the key-confusion attack.
func rsaPublicPEM(t testing.TB) []byte {
	t.Helper()
	der, err := x509.MarshalPKIXPublicKey(&testRSA().PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})
}

// wantProblem fails unless err is a *problem.Error with code and, when
// detail is non-empty, containing detail. It also checks that the client
// text never quotes the token.
func wantProblem(t testing.TB, err error, code problem.Code, detail, token string) {
	t.Helper()
	var pe *problem.Error
	if !errors.As(err, &pe) {
		t.Fatalf("error %v (%T) is not a *problem.Error", err, err)
	}
	if pe.Code != code {
		t.Fatalf("code = %q (%v), want %q", pe.Code, err, code)
	}
	if detail != "" && !strings.Contains(pe.Detail, detail) {
		t.Errorf("detail = %q, want it to contain %q", pe.Detail, detail)
	}
	if len(token) > 16 && (strings.Contains(pe.Detail, token) || strings.Contains(err.Error(), token)) {
		t.Errorf("error quotes the token: %v", err)
	}
}

// rawTokenSigned signs claims with testSecret (HS256) under a hand-made
// header, for kid shapes jwt would not produce.
func rawTokenSigned(t testing.TB, header map[string]any, claims jwt.MapClaims) string {
	t.Helper()
	tok := jwt.NewWithClaims(jwt.SigningMethodHS256, claims)
	tok.Header = header
	s, err := tok.SignedString(testSecret)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// ed25519NewKey returns a fresh Ed25519 private key.
func ed25519NewKey(t testing.TB) ed25519.PrivateKey {
	t.Helper()
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return priv
}
