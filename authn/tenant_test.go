package authn

import (
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/nimbus/gateway/problem"
)

func TestVerifyAccepts(t *testing.T) {
	t.Parallel()
	v := newTestVerifier(t)
	tests := []struct {
		name   string
		method jwt.SigningMethod
		key    func() any
		kid    string
	}{
		{"HS256 with kid", jwt.SigningMethodHS256, func() any { return testSecret }, "hs"},
		{"HS512 without kid", jwt.SigningMethodHS512, func() any { return testSecret }, ""},
		{"EdDSA with kid", jwt.SigningMethodEdDSA, func() any { return testEd }, "ed"},
		{"EdDSA without kid", jwt.SigningMethodEdDSA, func() any { return testEd }, ""},
		{"RS256 with kid", jwt.SigningMethodRS256, func() any { return testRSA() }, "rsa"},
		{"RS512 without kid", jwt.SigningMethodRS512, func() any { return testRSA() }, ""},
		{"PS256 with kid", jwt.SigningMethodPS256, func() any { return testRSA() }, "rsa"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			p, err := v.Verify(signToken(t, tt.method, tt.key(), tt.kid, validClaims()))
			if err != nil {
				t.Fatal(err)
			}
			want := Principal{
				Subject:   "alice",
				Tenant:    "demo",
				Services:  []string{"worker"},
				Sandboxes: []string{"sbx-worker"},
				Admin:     true,
				ExpiresAt: testNow.Add(time.Hour),
			}
			if p.Subject != want.Subject || p.Tenant != want.Tenant || p.Admin != want.Admin ||
				!slices.Equal(p.Services, want.Services) || !slices.Equal(p.Sandboxes, want.Sandboxes) ||
				!p.ExpiresAt.Equal(want.ExpiresAt) {
				t.Errorf("principal = %+v, want %+v", *p, want)
			}
		})
	}
}

func TestVerifyRejects(t *testing.T) {
	t.Parallel()
	v := newTestVerifier(t)
	with := func(mod func(jwt.MapClaims)) jwt.MapClaims {
		c := validClaims()
		mod(c)
		return c
	}
	hs := func(c jwt.MapClaims) string { return signToken(t, jwt.SigningMethodHS256, testSecret, "hs", c) }
	valid := hs(validClaims())
	otherSecret := []byte("another-secret-that-is-long-enough-for-hs256")
	otherEd := ed25519NewKey(t)

	tests := []struct {
		name   string
		token  string
		detail string
	}{
		{"empty", "", "malformed"},
		{"garbage", "not a token", "malformed"},
		{"two segments", "aaaa.bbbb", "malformed"},
		{"four segments", valid + ".x", "malformed"},
		{"bad base64", "!!!.###.$$$", "malformed"},
		{"header not JSON", "bm90IGpzb24.e30.", "malformed"},
		{"alg none", signToken(t, jwt.SigningMethodNone, jwt.UnsafeAllowNoneSignatureType, "", validClaims()), "algorithm not allowed"},
		{"alg none with kid", rawToken(map[string]any{"alg": "none", "kid": "hs"}, validClaims(), nil), "algorithm not allowed"},
		{"alg NONE", rawToken(map[string]any{"alg": "NONE"}, validClaims(), nil), "algorithm not allowed"},
		{"alg missing", rawToken(map[string]any{"typ": "JWT"}, validClaims(), []byte("x")), "algorithm not allowed"},
		{"alg ES256", rawToken(map[string]any{"alg": "ES256"}, validClaims(), []byte("x")), "algorithm not allowed"},
		{"alg PS512", signToken(t, jwt.SigningMethodPS512, testRSA(), "rsa", validClaims()), "algorithm not allowed"},
		{"wrong aud", hs(with(func(c jwt.MapClaims) { c["aud"] = []string{"other"} })), "audience"},
		{"connect aud", hs(with(func(c jwt.MapClaims) { c["aud"] = ConnectAudience })), "audience"},
		{"no aud", hs(with(func(c jwt.MapClaims) { delete(c, "aud") })), "audience"},
		{"missing exp", hs(with(func(c jwt.MapClaims) { delete(c, "exp") })), "no expiry"},
		{"exp as string", hs(with(func(c jwt.MapClaims) { c["exp"] = "tomorrow" })), "malformed"},
		{"expired beyond leeway", hs(with(func(c jwt.MapClaims) { c["exp"] = testNow.Add(-6 * time.Second).Unix() })), "expired"},
		{"future nbf", hs(with(func(c jwt.MapClaims) { c["nbf"] = testNow.Add(time.Minute).Unix() })), "not valid yet"},
		{"future iat", hs(with(func(c jwt.MapClaims) { c["iat"] = testNow.Add(time.Minute).Unix() })), "not valid yet"},
		{"unknown kid", signToken(t, jwt.SigningMethodHS256, testSecret, "nope", validClaims()), "unknown key"},
		{"empty kid", rawTokenSigned(t, map[string]any{"alg": "HS256", "typ": "JWT", "kid": ""}, validClaims()), "unknown key"},
		{"numeric kid", rawTokenSigned(t, map[string]any{"alg": "HS256", "typ": "JWT", "kid": 7}, validClaims()), "unknown key"},
		{"kid of another family", signToken(t, jwt.SigningMethodHS256, testSecret, "ed", validClaims()), "unknown key"},
		{"tampered tid", tamper(t, valid, "tid", "other-tenant"), "signature"},
		{"tampered grants", tamper(t, valid, "grants", map[string]any{"services": []string{"browser"}}), "signature"},
		{"tampered exp", tamper(t, valid, "exp", testNow.Add(1000*time.Hour).Unix()), "signature"},
		{"signature stripped", valid[:strings.LastIndex(valid, ".")+1], "signature"},
		{"wrong HMAC secret", signToken(t, jwt.SigningMethodHS256, otherSecret, "hs", validClaims()), "signature"},
		{"wrong HMAC secret no kid", signToken(t, jwt.SigningMethodHS256, otherSecret, "", validClaims()), "signature"},
		{"wrong Ed25519 key", signToken(t, jwt.SigningMethodEdDSA, otherEd, "ed", validClaims()), "signature"},
		{"missing sub", hs(with(func(c jwt.MapClaims) { delete(c, "sub") })), "no subject"},
		{"empty sub", hs(with(func(c jwt.MapClaims) { c["sub"] = "" })), "no subject"},
		{"missing tid", hs(with(func(c jwt.MapClaims) { delete(c, "tid") })), "no tenant"},
		{"tid not a string", hs(with(func(c jwt.MapClaims) { c["tid"] = 42 })), "malformed"},
		{"oversized", hs(with(func(c jwt.MapClaims) { c["pad"] = string(make([]byte, maxTokenLen)) })), "too large"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			p, err := v.Verify(tt.token)
			if err == nil {
				t.Fatalf("accepted: %+v", p)
			}
			wantProblem(t, err, problem.Unauthenticated, tt.detail, tt.token)
		})
	}
}

// TestVerifyKeyConfusion is the RS256→HS256 attack: the attacker signs an
// HS256 token using the (public) RSA key's PEM bytes as the HMAC secret,
// hoping the verifier feeds the configured public key to HMAC.
func TestVerifyKeyConfusion(t *testing.T) {
	t.Parallel()
	pemBytes := rsaPublicPEM(t)
	rsaOnly, err := NewVerifier([]Key{{ID: "rsa", Public: &testRSA().PublicKey}}, WithClock(fixedClock))
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		v    *Verifier
		kid  string
	}{
		{"rsa-only verifier, kid names the RSA key", rsaOnly, "rsa"},
		{"rsa-only verifier, no kid", rsaOnly, ""},
		{"mixed verifier, kid names the RSA key", newTestVerifier(t), "rsa"},
		{"mixed verifier, no kid", newTestVerifier(t), ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			for _, m := range []jwt.SigningMethod{jwt.SigningMethodHS256, jwt.SigningMethodHS384, jwt.SigningMethodHS512} {
				token := signToken(t, m, pemBytes, tt.kid, validClaims())
				if p, err := tt.v.Verify(token); err == nil {
					t.Fatalf("%s with the RSA PEM as secret accepted: %+v", m.Alg(), p)
				} else {
					wantProblem(t, err, problem.Unauthenticated, "", token)
				}
			}
		})
	}
}

func TestVerifyLeeway(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		leeway []VerifierOption
		exp    time.Duration // relative to testNow
		nbf    time.Duration
		ok     bool
	}{
		{"expired 4s ago, default leeway", nil, -4 * time.Second, 0, true},
		{"expired 6s ago, default leeway", nil, -6 * time.Second, 0, false},
		{"expired 4s ago, no leeway", []VerifierOption{WithLeeway(0)}, -4 * time.Second, 0, false},
		{"expired 50s ago, 1m leeway", []VerifierOption{WithLeeway(time.Minute)}, -50 * time.Second, 0, true},
		{"nbf 4s ahead, default leeway", nil, time.Hour, 4 * time.Second, true},
		{"nbf 6s ahead, default leeway", nil, time.Hour, 6 * time.Second, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			v := newTestVerifier(t, tt.leeway...)
			c := validClaims()
			c["exp"] = testNow.Add(tt.exp).Unix()
			if tt.nbf != 0 {
				c["nbf"] = testNow.Add(tt.nbf).Unix()
			}
			_, err := v.Verify(signToken(t, jwt.SigningMethodEdDSA, testEd, "ed", c))
			if (err == nil) != tt.ok {
				t.Fatalf("err = %v, want ok=%v", err, tt.ok)
			}
			if err != nil {
				wantProblem(t, err, problem.Unauthenticated, "", "")
			}
		})
	}
}

func TestNewVerifierRejectsBadKeys(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		keys []Key
		opts []VerifierOption
	}{
		{"no keys", nil, nil},
		{"empty id", []Key{{Public: testSecret}}, nil},
		{"duplicate id", []Key{{ID: "a", Public: testSecret}, {ID: "a", Public: testEd.Public()}}, nil},
		{"short secret", []Key{{ID: "a", Public: []byte("short")}}, nil},
		{"private key", []Key{{ID: "a", Public: testEd}}, nil},
		{"string secret", []Key{{ID: "a", Public: string(testSecret)}}, nil},
		{"nil key", []Key{{ID: "a"}}, nil},
		{"negative leeway", []Key{{ID: "a", Public: testSecret}}, []VerifierOption{WithLeeway(-time.Second)}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			if _, err := NewVerifier(tt.keys, tt.opts...); err == nil {
				t.Fatal("NewVerifier accepted it")
			}
		})
	}
}

// TestVerifierCopiesSecrets guards against the caller reusing its buffer.
func TestVerifierCopiesSecrets(t *testing.T) {
	t.Parallel()
	secret := append([]byte(nil), testSecret...)
	v, err := NewVerifier([]Key{{ID: "hs", Public: secret}}, WithClock(fixedClock))
	if err != nil {
		t.Fatal(err)
	}
	clear(secret)
	if _, err := v.Verify(signToken(t, jwt.SigningMethodHS256, testSecret, "hs", validClaims())); err != nil {
		t.Fatal(err)
	}
}

func TestVerifyConcurrent(t *testing.T) {
	t.Parallel()
	v := newTestVerifier(t)
	good := signToken(t, jwt.SigningMethodEdDSA, testEd, "", validClaims())
	bad := tamper(t, good, "sub", "mallory")
	var wg sync.WaitGroup
	for i := range 16 {
		wg.Go(func() {
			for range 50 {
				_, err := v.Verify(good)
				if err != nil {
					t.Errorf("goroutine %d: %v", i, err)
					return
				}
				if _, err := v.Verify(bad); err == nil {
					t.Errorf("goroutine %d: tampered token accepted", i)
					return
				}
			}
		})
	}
	wg.Wait()
}

// TestVerifyCacheHonoursExpiry: a token served from the cache stops
// verifying when it expires, exactly as an uncached one does.
func TestVerifyCacheHonoursExpiry(t *testing.T) {
	t.Parallel()
	priv := ed25519NewKey(t)
	now := time.Now()
	var mu sync.Mutex
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	v, err := NewVerifier([]Key{DevKey(priv)}, WithClock(clock), WithLeeway(0))
	if err != nil {
		t.Fatal(err)
	}
	tok, err := Mint(priv, DevKeyID, MintRequest{Tenant: "demo", Subject: "a", TTL: time.Minute, Now: now})
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 2; i++ { // second round is a cache hit
		p, err := v.Verify(tok)
		if err != nil || p.Subject != "a" {
			t.Fatalf("round %d: %+v %v", i, p, err)
		}
		p.Subject = "mutated" // callers cannot poison the cache
	}
	if p, _ := v.Verify(tok); p.Subject != "a" {
		t.Fatal("cached principal was mutated by a caller")
	}
	mu.Lock()
	now = now.Add(time.Minute + time.Second)
	mu.Unlock()
	if _, err := v.Verify(tok); err == nil {
		t.Fatal("an expired token verified from the cache")
	}
}
