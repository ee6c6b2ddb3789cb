package authn

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// TenantAudience is the "aud" every tenant token must carry. Connect tokens
// carry ConnectAudience instead, so neither kind is accepted as the other.
const TenantAudience = "nimbus"

// DefaultLeeway is the clock skew tolerated on exp, nbf and iat of tenant
// tokens, which are minted by issuers whose clocks we do not control.
const DefaultLeeway = 5 * time.Second

// TenantClaims is the JWT claim set of a tenant token (SPEC §4.2).
type TenantClaims struct {
	jwt.RegisteredClaims
	// Tenant is the tenant the token acts in ("tid").
	Tenant string `json:"tid"`
	// Grants lists what the token may open sessions on.
	Grants Grants `json:"grants"`
	// Admin allows the catalog and audit endpoints of SPEC §4.3.
	Admin bool `json:"admin,omitempty"`
}

// Grants is the "grants" claim. Entries are exact names and ids: they are
// compared byte for byte, never as patterns (see Principal.CanService).
type Grants struct {
	Services  []string `json:"services,omitempty"`
	Sandboxes []string `json:"sandboxes,omitempty"`
}

// Verifier verifies tenant tokens against a fixed set of keys. It is
// immutable after NewVerifier and safe for concurrent use; to rotate keys,
// build a new Verifier and swap it in.
type Verifier struct {
	parser *jwt.Parser
	byID   map[string]verifyKey
	// byKind holds, per key family, the keys tried when a token has no kid.
	byKind map[keyKind][]jwt.VerificationKey
	cache  *tokenCache
}

// verifyKey is a configured key with its family resolved once.
type verifyKey struct {
	kind     keyKind
	material jwt.VerificationKey
}

// VerifierOption configures NewVerifier.
type VerifierOption func(*verifierOptions)

type verifierOptions struct {
	leeway time.Duration
	now    func() time.Time
}

// WithLeeway sets the clock skew tolerated on exp, nbf and iat. The default
// is DefaultLeeway; negative values are an error.
func WithLeeway(d time.Duration) VerifierOption {
	return func(o *verifierOptions) { o.leeway = d }
}

// WithClock replaces time.Now, so tests can check expiry without sleeping.
// nil means time.Now.
func WithClock(now func() time.Time) VerifierOption {
	return func(o *verifierOptions) { o.now = now }
}

// NewVerifier returns a Verifier for keys. There must be at least one key,
// each with a non-empty unique ID and valid material (see Key). Secrets are
// copied, so the caller may reuse its slices.
func NewVerifier(keys []Key, opts ...VerifierOption) (*Verifier, error) {
	o := verifierOptions{leeway: DefaultLeeway}
	for _, opt := range opts {
		opt(&o)
	}
	if o.leeway < 0 {
		return nil, fmt.Errorf("authn: negative leeway %v", o.leeway)
	}
	if o.now == nil {
		o.now = time.Now
	}
	if len(keys) == 0 {
		return nil, errors.New("authn: no tenant-token keys")
	}
	v := &Verifier{
		byID:   make(map[string]verifyKey, len(keys)),
		byKind: make(map[keyKind][]jwt.VerificationKey),
	}
	for _, k := range keys {
		if k.ID == "" {
			return nil, errors.New("authn: key with an empty ID")
		}
		if _, dup := v.byID[k.ID]; dup {
			return nil, fmt.Errorf("authn: duplicate key ID %q", k.ID)
		}
		kind, err := kindOfKey(k.Public)
		if err != nil {
			return nil, fmt.Errorf("authn: key %q: %w", k.ID, err)
		}
		material := k.Public
		if secret, ok := material.([]byte); ok {
			material = append([]byte(nil), secret...)
		}
		v.byID[k.ID] = verifyKey{kind: kind, material: material}
		v.byKind[kind] = append(v.byKind[kind], material)
	}
	v.cache = newTokenCache(defaultCacheSize, o.leeway, o.now)
	v.parser = jwt.NewParser(
		jwt.WithValidMethods(tenantAlgs),
		jwt.WithAudience(TenantAudience),
		jwt.WithExpirationRequired(),
		jwt.WithIssuedAt(),
		jwt.WithLeeway(o.leeway),
		jwt.WithTimeFunc(o.now),
	)
	return v, nil
}

// Verify checks a tenant token and returns whom it speaks for. Every failure
// is a *problem.Error with code problem.Unauthenticated whose detail never
// quotes the token. The rules: the alg is allow-listed and matches the family
// of the key (an HMAC token is never checked against a public key's bytes);
// a kid, when present, must name a configured key, and without one every key
// of the family is tried; exp is required; aud contains "nimbus"; nbf and iat
// hold within the leeway; sub and tid are non-empty.
func (v *Verifier) Verify(token string) (*Principal, error) {
	if len(token) > maxTokenLen {
		return nil, unauthenticated("token is too large", errTooLong)
	}
	key := sha256.Sum256([]byte(token))
	if p, ok := v.cache.get(key); ok {
		return p, nil
	}
	var c TenantClaims
	tok, err := v.parser.ParseWithClaims(token, &c, v.key)
	if err != nil {
		return nil, rejectParse("token", tok, err, tenantAlgs, c.ExpiresAt != nil, len(c.Audience) > 0)
	}
	if c.Subject == "" {
		return nil, unauthenticated("token has no subject", errors.New("sub claim is empty"))
	}
	if c.Tenant == "" {
		return nil, unauthenticated("token has no tenant", errors.New("tid claim is empty"))
	}
	p := &Principal{
		Subject:   c.Subject,
		Tenant:    c.Tenant,
		Services:  c.Grants.Services,
		Sandboxes: c.Grants.Sandboxes,
		Admin:     c.Admin,
		ExpiresAt: c.ExpiresAt.Time,
	}
	v.cache.put(key, p)
	return p, nil
}

// key is the jwt.Keyfunc of Verify. The parser has already rejected any alg
// outside tenantAlgs when it runs.
func (v *Verifier) key(tok *jwt.Token) (any, error) {
	kind := kindOfAlg(tok.Method.Alg())
	raw, hasKID := tok.Header["kid"]
	if !hasKID {
		set := v.byKind[kind]
		if len(set) == 0 {
			return nil, errNoKey
		}
		return jwt.VerificationKeySet{Keys: set}, nil
	}
	kid, ok := raw.(string)
	if !ok || kid == "" {
		return nil, errBadKID
	}
	k, ok := v.byID[kid]
	if !ok {
		return nil, errUnknownKID
	}
	if k.kind != kind {
		return nil, errKeyMismatch
	}
	return k.material, nil
}
