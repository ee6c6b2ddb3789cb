package authn

import (
	"errors"
	"strings"
	"testing"

	"github.com/golang-jwt/jwt/v5"

	"github.com/nimbus/gateway/problem"
)

// FuzzVerify feeds arbitrary strings to both verifiers. Neither may panic,
// every rejection must be a *problem.Error that does not quote the input,
// and anything accepted must name who and where (Subject/Tenant, or the
// session, tenant and channel of a connect token).
func FuzzVerify(f *testing.F) {
	v := newTestVerifier(f)
	ck := mustConnectKeys(f, "k1", map[string][]byte{"k1": connectK1})

	hs := signToken(f, jwt.SigningMethodHS256, testSecret, "hs", validClaims())
	ed := signToken(f, jwt.SigningMethodEdDSA, testEd, "", validClaims())
	rs := signToken(f, jwt.SigningMethodRS256, testRSA(), "rsa", validClaims())
	noSub := validClaims()
	delete(noSub, "sub")
	connect, err := ck.Sign(testConnectClaims())
	if err != nil {
		f.Fatal(err)
	}
	for _, seed := range []string{
		hs, ed, rs, connect,
		tamper(f, hs, "tid", "other"),
		tamper(f, ed, "sub", ""),
		tamper(f, connect, "ch", "cdp"),
		signToken(f, jwt.SigningMethodHS256, testSecret, "hs", noSub),
		signToken(f, jwt.SigningMethodNone, jwt.UnsafeAllowNoneSignatureType, "", validClaims()),
		signToken(f, jwt.SigningMethodHS256, rsaPublicPEM(f), "rsa", validClaims()),
		rawToken(map[string]any{"alg": "HS256", "kid": []any{"hs"}}, validClaims(), nil),
		rawToken(map[string]any{"alg": "HS256", "crit": []string{"b64"}}, map[string]any{"exp": 1e300}, nil),
		hs[:strings.LastIndex(hs, ".")+1],
		"", ".", "..", "...", "a.b.c", "e30.e30.", "eyJhbGciOiJub25lIn0.e30.",
		strings.Repeat("A", 100) + "." + strings.Repeat("B", 100) + ".",
	} {
		f.Add(seed)
	}

	f.Fuzz(func(t *testing.T, token string) {
		p, err := v.Verify(token)
		checkFuzzResult(t, token, err)
		if err == nil && (p.Subject == "" || p.Tenant == "" || p.ExpiresAt.IsZero()) {
			t.Fatalf("accepted a principal without subject, tenant or expiry: %+v", p)
		}
		c, err := ck.Verify(token)
		checkFuzzResult(t, token, err)
		if err == nil && (c.SessionID == "" || c.Tenant == "" || c.Channel == "" || !c.ExpiresAt.After(testNow)) {
			t.Fatalf("accepted connect claims that are incomplete or expired: %+v", c)
		}
	})
}

// checkFuzzResult checks the shape of a verification error.
func checkFuzzResult(t *testing.T, token string, err error) {
	t.Helper()
	if err == nil {
		return
	}
	var pe *problem.Error
	if !errors.As(err, &pe) || pe.Code != problem.Unauthenticated {
		t.Fatalf("rejection is not an Unauthenticated problem: %v (%T)", err, err)
	}
	if len(token) > 16 && strings.Contains(pe.Detail, token) {
		t.Fatalf("detail %q quotes the token", pe.Detail)
	}
}
