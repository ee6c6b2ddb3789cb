package authn

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/nimbus/gateway/problem"
)

var (
	connectK1 = bytes.Repeat([]byte{0x11}, 32)
	connectK2 = bytes.Repeat([]byte{0x22}, 32)
)

func mustConnectKeys(t testing.TB, signing string, secrets map[string][]byte, opts ...ConnectOption) *ConnectKeys {
	t.Helper()
	k, err := NewConnectKeys(signing, secrets, append([]ConnectOption{WithConnectClock(fixedClock)}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// testConnectClaims is a connect grant for a session expiring at a
// sub-second instant, to exercise rounding.
func testConnectClaims() ConnectClaims {
	return ConnectClaims{
		SessionID: "ses_abc",
		Tenant:    "demo",
		Channel:   "stdio",
		ExpiresAt: testNow.Add(10*time.Minute + 250*time.Millisecond),
	}
}

func TestConnectRoundTrip(t *testing.T) {
	t.Parallel()
	k := mustConnectKeys(t, "k1", map[string][]byte{"k1": connectK1})
	in := testConnectClaims()
	token, err := k.Sign(in)
	if err != nil {
		t.Fatal(err)
	}
	got, err := k.VerifyFor(token, "ses_abc", "stdio")
	if err != nil {
		t.Fatal(err)
	}
	if got.SessionID != in.SessionID || got.Tenant != in.Tenant || got.Channel != in.Channel {
		t.Errorf("claims = %+v, want %+v", *got, in)
	}
	if got.ID == "" {
		t.Error("Sign drew no jti")
	}
	// Rounded up, never down: the URL must live as long as the session.
	if want := testNow.Add(10*time.Minute + time.Second); !got.ExpiresAt.Equal(want) {
		t.Errorf("ExpiresAt = %v, want %v", got.ExpiresAt, want)
	}

	again, err := k.Sign(in)
	if err != nil {
		t.Fatal(err)
	}
	if again == token {
		t.Error("two signatures of the same claims are identical; jti is not random")
	}
	in.ID = "fixed-jti"
	fixed, err := k.Sign(in)
	if err != nil {
		t.Fatal(err)
	}
	if c, err := k.Verify(fixed); err != nil || c.ID != "fixed-jti" {
		t.Errorf("Verify = %+v, %v; want jti fixed-jti", c, err)
	}
}

func TestConnectExpiry(t *testing.T) {
	t.Parallel()
	var now atomic.Int64
	now.Store(testNow.UnixNano())
	clock := func() time.Time { return time.Unix(0, now.Load()) }
	k, err := NewConnectKeys("k1", map[string][]byte{"k1": connectK1}, WithConnectClock(clock))
	if err != nil {
		t.Fatal(err)
	}
	c := testConnectClaims()
	c.ExpiresAt = testNow.Add(time.Minute) // whole second: no rounding
	token, err := k.Sign(c)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		at time.Duration
		ok bool
	}{
		{0, true},
		{time.Minute - time.Millisecond, true},
		{time.Minute, false}, // no leeway: dead at expiresAt
		{time.Minute + time.Second, false},
	}
	for _, tt := range tests {
		now.Store(testNow.Add(tt.at).UnixNano())
		_, err := k.Verify(token)
		if (err == nil) != tt.ok {
			t.Fatalf("at +%v: err = %v, want ok=%v", tt.at, err, tt.ok)
		}
		if err != nil {
			wantProblem(t, err, problem.Unauthenticated, "expired", token)
		}
	}
}

func TestConnectRotation(t *testing.T) {
	t.Parallel()
	old := mustConnectKeys(t, "k1", map[string][]byte{"k1": connectK1})
	oldToken, err := old.Sign(testConnectClaims())
	if err != nil {
		t.Fatal(err)
	}
	rotated := mustConnectKeys(t, "k2", map[string][]byte{"k1": connectK1, "k2": connectK2})
	if _, err := rotated.Verify(oldToken); err != nil {
		t.Fatalf("token under the previous key rejected after rotation: %v", err)
	}
	newToken, err := rotated.Sign(testConnectClaims())
	if err != nil {
		t.Fatal(err)
	}
	if kid := headerOf(t, newToken)["kid"]; kid != "k2" {
		t.Errorf("new token kid = %v, want k2", kid)
	}
	if _, err := old.Verify(newToken); err == nil {
		t.Error("a replica that does not know k2 accepted a k2 token")
	}
	retired := mustConnectKeys(t, "k2", map[string][]byte{"k2": connectK2})
	if _, err := retired.Verify(newToken); err != nil {
		t.Errorf("k2 token rejected: %v", err)
	}
	_, err = retired.Verify(oldToken)
	wantProblem(t, err, problem.Unauthenticated, "unknown key", oldToken)
	if got := rotated.IDs(); !slices.Equal(got, []string{"k1", "k2"}) || rotated.SigningID() != "k2" {
		t.Errorf("IDs = %v, SigningID = %q", got, rotated.SigningID())
	}
}

func TestConnectVerifyForScope(t *testing.T) {
	t.Parallel()
	k := mustConnectKeys(t, "k1", map[string][]byte{"k1": connectK1})
	token, err := k.Sign(testConnectClaims())
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name, session, channel, detail string
	}{
		{"other session", "ses_other", "stdio", "another session"},
		{"other channel", "ses_abc", "files", "another channel"},
		{"case differs", "ses_abc", "STDIO", "another channel"},
		{"empty session", "", "stdio", "another session"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			_, err := k.VerifyFor(token, tt.session, tt.channel)
			wantProblem(t, err, problem.PermissionDenied, tt.detail, token)
		})
	}
	// A bad token stays Unauthenticated even when scoped.
	_, err = k.VerifyFor(tamper(t, token, "sub", "ses_other"), "ses_other", "stdio")
	wantProblem(t, err, problem.Unauthenticated, "signature", "")
}

func TestConnectRejects(t *testing.T) {
	t.Parallel()
	k := mustConnectKeys(t, "k1", map[string][]byte{"k1": connectK1})
	valid, err := k.Sign(testConnectClaims())
	if err != nil {
		t.Fatal(err)
	}
	claims := func(mod func(jwt.MapClaims)) jwt.MapClaims {
		c := jwt.MapClaims{
			"sub": "ses_abc", "tid": "demo", "ch": "stdio",
			"aud": []string{ConnectAudience}, "exp": testNow.Add(time.Minute).Unix(),
		}
		mod(c)
		return c
	}
	k1 := func(c jwt.MapClaims) string { return signToken(t, jwt.SigningMethodHS256, connectK1, "k1", c) }
	devToken, err := Mint(testEd, DevKeyID, MintRequest{Tenant: "demo", Subject: "alice", Now: testNow})
	if err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		name, token, detail string
	}{
		{"empty", "", "malformed"},
		{"garbage", "garbage", "malformed"},
		{"tampered sub", tamper(t, valid, "sub", "ses_other"), "signature"},
		{"tampered ch", tamper(t, valid, "ch", "cdp"), "signature"},
		{"tampered exp", tamper(t, valid, "exp", testNow.Add(100*time.Hour).Unix()), "signature"},
		{"wrong secret", signToken(t, jwt.SigningMethodHS256, connectK2, "k1", claims(func(jwt.MapClaims) {})), "signature"},
		{"no kid", signToken(t, jwt.SigningMethodHS256, connectK1, "", claims(func(jwt.MapClaims) {})), "unknown key"},
		{"unknown kid", signToken(t, jwt.SigningMethodHS256, connectK1, "k9", claims(func(jwt.MapClaims) {})), "unknown key"},
		{"HS512", signToken(t, jwt.SigningMethodHS512, connectK1, "k1", claims(func(jwt.MapClaims) {})), "algorithm not allowed"},
		{"alg none", rawToken(map[string]any{"alg": "none", "kid": "k1"}, claims(func(jwt.MapClaims) {}), nil), "algorithm not allowed"},
		{"missing exp", k1(claims(func(c jwt.MapClaims) { delete(c, "exp") })), "no expiry"},
		{"expired", k1(claims(func(c jwt.MapClaims) { c["exp"] = testNow.Add(-time.Second).Unix() })), "expired"},
		{"missing ch", k1(claims(func(c jwt.MapClaims) { delete(c, "ch") })), "lacks"},
		{"missing sub", k1(claims(func(c jwt.MapClaims) { delete(c, "sub") })), "lacks"},
		{"missing tid", k1(claims(func(c jwt.MapClaims) { c["tid"] = "" })), "lacks"},
		// Same secret, same kid, tenant audience: only aud tells them apart.
		{"tenant token under the connect key", k1(claims(func(c jwt.MapClaims) { c["aud"] = []string{TenantAudience} })), "audience"},
		{"tenant token from Mint", devToken, "algorithm not allowed"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			if c, err := k.Verify(tt.token); err == nil {
				t.Fatalf("accepted: %+v", c)
			} else {
				wantProblem(t, err, problem.Unauthenticated, tt.detail, tt.token)
			}
		})
	}
}

// TestConnectTokenIsNotATenantToken replays a connect URL's token as a
// bearer token against a Verifier that even shares the HMAC secret.
func TestConnectTokenIsNotATenantToken(t *testing.T) {
	t.Parallel()
	k := mustConnectKeys(t, "k1", map[string][]byte{"k1": connectK1})
	token, err := k.Sign(testConnectClaims())
	if err != nil {
		t.Fatal(err)
	}
	v, err := NewVerifier([]Key{{ID: "k1", Public: connectK1}}, WithClock(fixedClock))
	if err != nil {
		t.Fatal(err)
	}
	_, err = v.Verify(token)
	wantProblem(t, err, problem.Unauthenticated, "audience", token)
}

func TestNewConnectKeysRejects(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		signing string
		secrets map[string][]byte
	}{
		{"no keys", "k1", nil},
		{"signing key absent", "k3", map[string][]byte{"k1": connectK1}},
		{"empty signing id", "", map[string][]byte{"": connectK1}},
		{"short secret", "k1", map[string][]byte{"k1": connectK1[:31]}},
		{"short non-signing secret", "k1", map[string][]byte{"k1": connectK1, "k0": []byte("x")}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			if _, err := NewConnectKeys(tt.signing, tt.secrets); err == nil {
				t.Fatal("NewConnectKeys accepted it")
			}
		})
	}
}

func TestConnectSignRejects(t *testing.T) {
	t.Parallel()
	k := mustConnectKeys(t, "k1", map[string][]byte{"k1": connectK1})
	tests := []struct {
		name string
		mod  func(*ConnectClaims)
	}{
		{"no session", func(c *ConnectClaims) { c.SessionID = "" }},
		{"no tenant", func(c *ConnectClaims) { c.Tenant = "" }},
		{"no channel", func(c *ConnectClaims) { c.Channel = "" }},
		{"no expiry", func(c *ConnectClaims) { c.ExpiresAt = time.Time{} }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			c := testConnectClaims()
			tt.mod(&c)
			if _, err := k.Sign(c); err == nil {
				t.Fatal("Sign accepted it")
			}
		})
	}
}

func TestLoadConnectKeys(t *testing.T) {
	t.Parallel()
	enc := base64.StdEncoding.EncodeToString
	tests := []struct {
		name string
		json string
		ok   bool
	}{
		{"two keys", `{"signing":"k2","keys":{"k1":"` + enc(connectK1) + `","k2":"` + enc(connectK2) + `"}}`, true},
		{"signing key missing", `{"signing":"k3","keys":{"k1":"` + enc(connectK1) + `"}}`, false},
		{"bad base64", `{"signing":"k1","keys":{"k1":"***"}}`, false},
		{"short key", `{"signing":"k1","keys":{"k1":"` + enc(connectK1[:16]) + `"}}`, false},
		{"unknown field", `{"signing":"k1","signingKey":"k1","keys":{"k1":"` + enc(connectK1) + `"}}`, false},
		{"not JSON", `signing=k1`, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			path := filepath.Join(t.TempDir(), "connect.json")
			if err := os.WriteFile(path, []byte(tt.json), 0o600); err != nil {
				t.Fatal(err)
			}
			k, err := LoadConnectKeys(path, WithConnectClock(fixedClock))
			if (err == nil) != tt.ok {
				t.Fatalf("err = %v, want ok=%v", err, tt.ok)
			}
			if !tt.ok {
				return
			}
			// The loaded k1 must verify a token NewConnectKeys signed with it.
			token, err := mustConnectKeys(t, "k1", map[string][]byte{"k1": connectK1}).Sign(testConnectClaims())
			if err != nil {
				t.Fatal(err)
			}
			if _, err := k.Verify(token); err != nil {
				t.Errorf("token under k1 rejected: %v", err)
			}
			if k.SigningID() != "k2" {
				t.Errorf("SigningID = %q, want k2", k.SigningID())
			}
		})
	}
}

func TestLoadOrCreateConnectKeys(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	const n = 8
	sets := make([]*ConnectKeys, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() { sets[i], errs[i] = LoadOrCreateConnectKeys(dir, WithConnectClock(fixedClock)) })
	}
	wg.Wait()
	for i := range n {
		if errs[i] != nil {
			t.Fatalf("caller %d: %v", i, errs[i])
		}
	}
	id := sets[0].SigningID()
	if !strings.HasPrefix(id, "c-") || len(id) != len("c-")+8 {
		t.Errorf("signing id = %q, want c-<8 hex>", id)
	}
	token, err := sets[0].Sign(testConnectClaims())
	if err != nil {
		t.Fatal(err)
	}
	for i, k := range sets {
		if _, err := k.Verify(token); err != nil {
			t.Errorf("caller %d does not share caller 0's key: %v", i, err)
		}
	}
	path := filepath.Join(dir, "keys", "connect.json")
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var f connectFile
	if err := json.Unmarshal(data, &f); err != nil || f.Signing != id || len(f.Keys) != 1 {
		t.Errorf("file = %s (%v)", data, err)
	}
	if runtime.GOOS != "windows" {
		if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != 0o600 {
			t.Errorf("connect.json mode = %v, %v; want 0600", fi.Mode().Perm(), err)
		}
	}
}

func TestCeilSecond(t *testing.T) {
	t.Parallel()
	tests := []struct{ in, want time.Time }{
		{testNow, testNow},
		{testNow.Add(time.Nanosecond), testNow.Add(time.Second)},
		{testNow.Add(999 * time.Millisecond), testNow.Add(time.Second)},
		{testNow.Add(-time.Nanosecond), testNow},
	}
	for _, tt := range tests {
		if got := ceilSecond(tt.in); !got.Equal(tt.want) {
			t.Errorf("ceilSecond(%v) = %v, want %v", tt.in, got, tt.want)
		}
	}
}

func BenchmarkConnectVerify(b *testing.B) {
	k := mustConnectKeys(b, "k2", map[string][]byte{"k1": connectK1, "k2": connectK2})
	token, err := k.Sign(testConnectClaims())
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := k.VerifyFor(token, "ses_abc", "stdio"); err != nil {
			b.Fatal(err)
		}
	}
}

// headerOf decodes a token's JOSE header.
func headerOf(t testing.TB, token string) map[string]any {
	t.Helper()
	seg, _, _ := strings.Cut(token, ".")
	raw, err := base64.RawURLEncoding.DecodeString(seg)
	if err != nil {
		t.Fatal(err)
	}
	var h map[string]any
	if err := json.Unmarshal(raw, &h); err != nil {
		t.Fatal(err)
	}
	return h
}

// TestConnectVerifyForLate: a token past its exp still verifies through
// VerifyForLate, marked Expired, while signature, scope and audience are
// checked as ever.
func TestConnectVerifyForLate(t *testing.T) {
	t.Parallel()
	now := time.Now()
	clock := func() time.Time { return now }
	k, err := NewConnectKeys("k1", map[string][]byte{"k1": []byte("0123456789abcdef0123456789abcdef")}, WithConnectClock(clock))
	if err != nil {
		t.Fatal(err)
	}
	tok, err := k.Sign(ConnectClaims{SessionID: "ses_1", Tenant: "demo", Channel: "stdio", ExpiresAt: now.Add(-time.Minute)})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := k.VerifyFor(tok, "ses_1", "stdio"); err == nil {
		t.Fatal("VerifyFor accepted an expired token")
	}
	c, err := k.VerifyForLate(tok, "ses_1", "stdio")
	if err != nil || !c.Expired {
		t.Fatalf("VerifyForLate: %+v %v", c, err)
	}
	if _, err := k.VerifyForLate(tok, "ses_2", "stdio"); err == nil {
		t.Fatal("VerifyForLate accepted another session")
	}
	if _, err := k.VerifyForLate(tok[:len(tok)-2]+"xx", "ses_1", "stdio"); err == nil {
		t.Fatal("VerifyForLate accepted a tampered token")
	}
	fresh, _ := k.Sign(ConnectClaims{SessionID: "ses_1", Tenant: "demo", Channel: "stdio", ExpiresAt: now.Add(time.Minute)})
	if c, err := k.VerifyForLate(fresh, "ses_1", "stdio"); err != nil || c.Expired {
		t.Fatalf("fresh token: %+v %v", c, err)
	}
}
