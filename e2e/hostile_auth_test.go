package e2e

import (
	"crypto/ed25519"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/nimbus/gateway/client"
)

// claims is a tenant token's claim set, as an attacker would write it.
func claims(tenant string, mut func(jwt.MapClaims)) jwt.MapClaims {
	now := time.Now()
	c := jwt.MapClaims{
		"sub": "mallory", "tid": tenant, "aud": []string{"nimbus"},
		"iat": now.Unix(), "exp": now.Add(time.Hour).Unix(), "jti": "j1",
		"grants": map[string]any{"services": []string{"worker"}, "sandboxes": []string{"sbx-cat"}},
		"admin":  true,
	}
	if mut != nil {
		mut(c)
	}
	return c
}

func sign(t testing.TB, m jwt.SigningMethod, key any, kid string, c jwt.MapClaims) string {
	t.Helper()
	tok := jwt.NewWithClaims(m, c)
	if kid != "" {
		tok.Header["kid"] = kid
	}
	s, err := tok.SignedString(key)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// unsigned builds header.payload. with no signature (alg none and kin).
func unsigned(header map[string]any, c jwt.MapClaims) string {
	h, _ := json.Marshal(header)
	p, _ := json.Marshal(c)
	enc := base64.RawURLEncoding
	return enc.EncodeToString(h) + "." + enc.EncodeToString(p) + "."
}

// tamper replaces the payload of a signed token, keeping its signature.
func tamper(tok string, c jwt.MapClaims) string {
	parts := strings.Split(tok, ".")
	p, _ := json.Marshal(c)
	parts[1] = base64.RawURLEncoding.EncodeToString(p)
	return strings.Join(parts, ".")
}

// TestHostileTenantTokens presents forged, expired, misdirected and
// malformed tenant tokens to a gateway that trusts its development key
// (Ed25519, kid "dev") and to one that trusts an RSA public key (kid
// "rsa"): every one is 401 (403 for another tenant's valid token), no
// session is created and, for 401, nothing enters the audit trail.
func TestHostileTenantTokens(t *testing.T) {
	t.Parallel()
	dev := startGateway(t)

	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	pubDER, _ := x509.MarshalPKIXPublicKey(&rsaKey.PublicKey)
	pubPEM := pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pubDER})
	keyDir := t.TempDir()
	rsaFile := filepath.Join(keyDir, "rsa.pem")
	if err := os.WriteFile(rsaFile, pubPEM, 0o644); err != nil {
		t.Fatal(err)
	}
	rsaGW := startGateway(t, "--tenant-key", rsaFile)
	// rsaGW has no development key; snapshot it with RS256 admin tokens.
	rsaAdmin := sign(t, jwt.SigningMethodRS256, rsaKey, "rsa", claims("demo", nil))

	_, mallory, _ := ed25519.GenerateKey(rand.Reader)
	otherRSA, _ := rsa.GenerateKey(rand.Reader, 2048)
	devPub := dev.key.Public().(ed25519.PublicKey)
	devTok := func(mut func(jwt.MapClaims)) string {
		return sign(t, jwt.SigningMethodEdDSA, dev.key, "dev", claims("demo", mut))
	}
	valid := devTok(nil)
	connectTok := func() string {
		s := dev.open(dev.admin(), serviceTarget("worker"), "stdio")
		u := s.Status.Connect["stdio"]
		return u[strings.Index(u, "token=")+len("token="):]
	}()

	type tc struct {
		name   string
		gw     *gateway
		auth   string // the Authorization header; "" sends none
		query  string
		status int
		code   string
	}
	b := func(tok string) string { return "Bearer " + tok }
	cases := []tc{
		{name: "no Authorization", gw: dev, status: 401, code: "unauthenticated"},
		{name: "empty bearer", gw: dev, auth: "Bearer ", status: 401, code: "unauthenticated"},
		{name: "Basic scheme", gw: dev, auth: "Basic " + base64.StdEncoding.EncodeToString([]byte("demo:"+valid)), status: 401, code: "unauthenticated"},
		{name: "token without scheme", gw: dev, auth: valid, status: 401, code: "unauthenticated"},
		{name: "Token scheme", gw: dev, auth: "Token " + valid, status: 401, code: "unauthenticated"},
		{name: "two tokens", gw: dev, auth: "Bearer " + valid + " " + valid, status: 401, code: "unauthenticated"},
		{name: "token in query instead", gw: dev, query: "?access_token=" + valid, status: 401, code: "unauthenticated"},
		{name: "alg none", gw: dev, auth: b(unsigned(map[string]any{"alg": "none", "typ": "JWT"}, claims("demo", nil))), status: 401, code: "unauthenticated"},
		{name: "alg None with kid", gw: dev, auth: b(unsigned(map[string]any{"alg": "None", "kid": "dev"}, claims("demo", nil))), status: 401, code: "unauthenticated"},
		{name: "alg none with a signature", gw: dev, auth: b(unsigned(map[string]any{"alg": "none", "kid": "dev"}, claims("demo", nil)) + "c2ln"), status: 401, code: "unauthenticated"},
		{name: "HS256 keyed with the Ed25519 public key", gw: dev, auth: b(sign(t, jwt.SigningMethodHS256, []byte(devPub), "dev", claims("demo", nil))), status: 401, code: "unauthenticated"},
		{name: "HS256 keyed with the RSA public PEM", gw: rsaGW, auth: b(sign(t, jwt.SigningMethodHS256, pubPEM, "rsa", claims("demo", nil))), status: 401, code: "unauthenticated"},
		{name: "HS256 keyed with the RSA public DER", gw: rsaGW, auth: b(sign(t, jwt.SigningMethodHS256, pubDER, "rsa", claims("demo", nil))), status: 401, code: "unauthenticated"},
		{name: "HS256 keyed with the RSA PEM, no kid", gw: rsaGW, auth: b(sign(t, jwt.SigningMethodHS256, pubPEM, "", claims("demo", nil))), status: 401, code: "unauthenticated"},
		{name: "RS256 by another RSA key", gw: rsaGW, auth: b(sign(t, jwt.SigningMethodRS256, otherRSA, "rsa", claims("demo", nil))), status: 401, code: "unauthenticated"},
		{name: "PS256 by another RSA key", gw: rsaGW, auth: b(sign(t, jwt.SigningMethodPS256, otherRSA, "rsa", claims("demo", nil))), status: 401, code: "unauthenticated"},
		{name: "EdDSA by another key under kid dev", gw: dev, auth: b(sign(t, jwt.SigningMethodEdDSA, mallory, "dev", claims("demo", nil))), status: 401, code: "unauthenticated"},
		{name: "EdDSA by another key, no kid", gw: dev, auth: b(sign(t, jwt.SigningMethodEdDSA, mallory, "", claims("demo", nil))), status: 401, code: "unauthenticated"},
		{name: "unknown kid", gw: dev, auth: b(sign(t, jwt.SigningMethodEdDSA, dev.key, "dev2", claims("demo", nil))), status: 401, code: "unauthenticated"},
		{name: "kid path traversal", gw: dev, auth: b(sign(t, jwt.SigningMethodEdDSA, dev.key, "../keys/dev", claims("demo", nil))), status: 401, code: "unauthenticated"},
		{name: "jku header to an attacker key", gw: dev, auth: b(func() string {
			tok := jwt.NewWithClaims(jwt.SigningMethodEdDSA, claims("demo", nil))
			tok.Header["jku"], tok.Header["kid"] = "http://127.0.0.1:1/jwks.json", "dev"
			s, _ := tok.SignedString(mallory)
			return s
		}()), status: 401, code: "unauthenticated"},
		{name: "wrong aud", gw: dev, auth: b(devTok(func(c jwt.MapClaims) { c["aud"] = "nimbus-connect" })), status: 401, code: "unauthenticated"},
		{name: "aud as another string", gw: dev, auth: b(devTok(func(c jwt.MapClaims) { c["aud"] = "nimbus2" })), status: 401, code: "unauthenticated"},
		{name: "no aud", gw: dev, auth: b(devTok(func(c jwt.MapClaims) { delete(c, "aud") })), status: 401, code: "unauthenticated"},
		{name: "expired", gw: dev, auth: b(devTok(func(c jwt.MapClaims) { c["exp"] = time.Now().Add(-time.Minute).Unix() })), status: 401, code: "unauthenticated"},
		{name: "no exp", gw: dev, auth: b(devTok(func(c jwt.MapClaims) { delete(c, "exp") })), status: 401, code: "unauthenticated"},
		{name: "exp a string", gw: dev, auth: b(devTok(func(c jwt.MapClaims) { c["exp"] = "tomorrow" })), status: 401, code: "unauthenticated"},
		{name: "nbf in the future", gw: dev, auth: b(devTok(func(c jwt.MapClaims) { c["nbf"] = time.Now().Add(time.Hour).Unix() })), status: 401, code: "unauthenticated"},
		{name: "tid of wrong type", gw: dev, auth: b(devTok(func(c jwt.MapClaims) { c["tid"] = []string{"demo"} })), status: 401, code: "unauthenticated"},
		{name: "tampered payload", gw: dev, auth: b(tamper(devTok(func(c jwt.MapClaims) { c["admin"] = false }), claims("demo", nil))), status: 401, code: "unauthenticated"},
		{name: "tampered signature", gw: dev, auth: b(valid[:len(valid)-4] + flip(valid[len(valid)-4:])), status: 401, code: "unauthenticated"},
		{name: "truncated signature", gw: dev, auth: b(valid[:len(valid)-10]), status: 401, code: "unauthenticated"},
		{name: "two segments", gw: dev, auth: b(valid[:strings.LastIndexByte(valid, '.')]), status: 401, code: "unauthenticated"},
		{name: "four segments", gw: dev, auth: b(valid + ".AAAA"), status: 401, code: "unauthenticated"},
		{name: "garbage", gw: dev, auth: b("not-a-jwt"), status: 401, code: "unauthenticated"},
		{name: "base64 garbage segments", gw: dev, auth: b("!!!.@@@.###"), status: 401, code: "unauthenticated"},
		{name: "oversized token", gw: dev, auth: b(devTok(func(c jwt.MapClaims) { c["pad"] = strings.Repeat("p", 20<<10) })), status: 401, code: "unauthenticated"},
		{name: "connect token as tenant token", gw: dev, auth: b(connectTok), status: 401, code: "unauthenticated"},
		{name: "another tenant's token", gw: dev, auth: b(sign(t, jwt.SigningMethodEdDSA, dev.key, "dev", claims("other", nil))), status: 403, code: "permission_denied"},
		{name: "another tenant's token, RSA", gw: rsaGW, auth: b(sign(t, jwt.SigningMethodRS256, rsaKey, "rsa", claims("other", nil))), status: 403, code: "permission_denied"},
	}
	snapshot := func(g *gateway) storeState {
		if g == rsaGW {
			return rsaSnapshot(t, rsaGW, rsaAdmin)
		}
		return g.snapshot("demo")
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			before := snapshot(c.gw)
			for _, m := range []struct{ method, path, body string }{
				{"GET", "/v1/tenants/demo/sessions", ""},
				{"POST", "/v1/tenants/demo/sessions", openBody(workerTarget, stdioOnly, "")},
			} {
				hdr := map[string]string{}
				if c.auth != "" {
					hdr["Authorization"] = c.auth
				}
				r := do(t, m.method, c.gw.URL+m.path+c.query, strings.NewReader(m.body), hdr)
				wantProblem(t, m.method+" "+c.name, r, c.status, c.code)
			}
			unchangedBut(t, c.name, before, snapshot(c.gw), c.status != 401)
		})
	}
	// The controls: the genuine tokens work, so the refusals above are
	// about the forgeries, not a broken gateway.
	for _, ok := range []struct {
		g   *gateway
		tok string
	}{{dev, valid}, {rsaGW, rsaAdmin}} {
		r := do(t, "GET", ok.g.URL+"/v1/tenants/demo/sessions", nil, map[string]string{"Authorization": "Bearer " + ok.tok})
		if r.status != http.StatusOK {
			t.Errorf("control: a genuine token got %d %s", r.status, r.body)
		}
	}
	t.Run("scheme is case-insensitive", func(t *testing.T) {
		// RFC 9110 §11.1: the auth scheme is case-insensitive.
		r := do(t, "GET", dev.URL+"/v1/tenants/demo/sessions", nil, map[string]string{"Authorization": "bearer " + valid})
		if r.status != http.StatusOK {
			t.Errorf("lower-case bearer: %d %s", r.status, r.body)
		}
	})
}

// flip changes every character of s to another base64url character.
func flip(s string) string {
	b := []byte(s)
	for i, c := range b {
		if c == 'A' {
			b[i] = 'B'
		} else {
			b[i] = 'A'
		}
	}
	return string(b)
}

// rsaSnapshot is gateway.snapshot for a gateway without a development key.
func rsaSnapshot(t testing.TB, g *gateway, adminTok string) storeState {
	t.Helper()
	c := clientFor(g, "demo", adminTok)
	var st storeState
	p, err := c.List(t.Context(), client.ListOptions{PageSize: 500})
	if err != nil {
		t.Fatalf("list: %v", err)
	}
	for _, s := range p.Items {
		st.sessions = append(st.sessions, s.Metadata.ID+"/"+s.Status.State)
	}
	st.events = g.audit(c, "")
	return st
}
