package authn

import (
	"crypto/rand"
	"errors"
	"fmt"
	"sort"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/nimbus/gateway/problem"
)

// ConnectAudience is the "aud" of connect tokens (SPEC §5). It differs from
// TenantAudience so that a connect token, which ends up in URLs and browser
// history, can never be replayed as a tenant bearer token, and vice versa.
const ConnectAudience = "nimbus-connect"

// connectAlgs is the only algorithm connect tokens use: the gateway signs and
// verifies them itself, so there is no reason to accept anything else.
var connectAlgs = []string{"HS256"}

// ConnectClaims is what a connect token asserts: one session, one channel,
// until the session's expiry.
type ConnectClaims struct {
	SessionID string // sub
	Tenant    string // tid
	Channel   string // ch
	// ID is the token's jti. Sign draws a random one when it is empty.
	ID string
	// ExpiresAt is the session's expiresAt. Sign rounds it up to the next
	// whole second (JWT times are seconds), so the token never dies before
	// the session; Verify returns that rounded value.
	ExpiresAt time.Time
	// Expired is set only by VerifyForLate, for a token past its exp.
	Expired bool
}

// connectJWT is the wire form of ConnectClaims.
type connectJWT struct {
	jwt.RegisteredClaims
	Tenant  string `json:"tid"`
	Channel string `json:"ch"`
}

// ConnectKeys is the connect-token keyset: one signing key plus every key
// still accepted, so keys rotate without breaking URLs already handed out
// (add the new key and make it the signing one; drop the old one once the
// longest session TTL has passed). It is immutable after construction and
// safe for concurrent use; rotation builds a new ConnectKeys.
type ConnectKeys struct {
	signingID string
	secrets   map[string][]byte
	now       func() time.Time
	parser    *jwt.Parser
	// lateParser is parser without the exp check (its clock is the zero
	// time), for VerifyForLate.
	lateParser *jwt.Parser
}

// ConnectOption configures NewConnectKeys and the loaders.
type ConnectOption func(*connectOptions)

type connectOptions struct {
	now func() time.Time
}

// WithConnectClock replaces time.Now for signing (iat) and for expiry
// checks, so tests can expire a token without sleeping. nil means time.Now.
func WithConnectClock(now func() time.Time) ConnectOption {
	return func(o *connectOptions) { o.now = now }
}

// NewConnectKeys returns a keyset that signs with secrets[signingID] and
// verifies with any of secrets. Every secret must be at least 32 bytes; the
// secrets are copied.
func NewConnectKeys(signingID string, secrets map[string][]byte, opts ...ConnectOption) (*ConnectKeys, error) {
	k, err := newConnectKeys(signingID, secrets, opts)
	if err != nil {
		return nil, fmt.Errorf("authn: %w", err)
	}
	return k, nil
}

// newConnectKeys is NewConnectKeys with errors its callers prefix.
func newConnectKeys(signingID string, secrets map[string][]byte, opts []ConnectOption) (*ConnectKeys, error) {
	var o connectOptions
	for _, opt := range opts {
		opt(&o)
	}
	if o.now == nil {
		o.now = time.Now
	}
	if _, ok := secrets[signingID]; !ok || signingID == "" {
		return nil, fmt.Errorf("connect signing key %q is not in the keyset", signingID)
	}
	k := &ConnectKeys{
		signingID: signingID,
		secrets:   make(map[string][]byte, len(secrets)),
		now:       o.now,
	}
	for id, secret := range secrets {
		if id == "" {
			return nil, errors.New("connect key with an empty ID")
		}
		if len(secret) < minSecretLen {
			return nil, fmt.Errorf("connect key %q is %d bytes, need at least %d", id, len(secret), minSecretLen)
		}
		k.secrets[id] = append([]byte(nil), secret...)
	}
	// Leeway stays zero: the token's exp is the session's expiresAt, and a
	// connection must not start after the session is over.
	k.parser = jwt.NewParser(
		jwt.WithValidMethods(connectAlgs),
		jwt.WithAudience(ConnectAudience),
		jwt.WithExpirationRequired(),
		jwt.WithTimeFunc(o.now),
	)
	k.lateParser = jwt.NewParser(
		jwt.WithValidMethods(connectAlgs),
		jwt.WithAudience(ConnectAudience),
		jwt.WithExpirationRequired(),
		jwt.WithTimeFunc(func() time.Time { return time.Time{} }),
	)
	return k, nil
}

// SigningID is the kid new connect tokens are signed under.
func (k *ConnectKeys) SigningID() string { return k.signingID }

// IDs lists, sorted, the kids whose tokens are accepted.
func (k *ConnectKeys) IDs() []string {
	ids := make([]string, 0, len(k.secrets))
	for id := range k.secrets {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	return ids
}

// Sign returns a connect token for c: HS256 under the signing key, header
// kid, aud "nimbus-connect", sub, tid, ch, iat, jti and exp = c.ExpiresAt
// rounded up to a whole second. SessionID, Tenant, Channel and ExpiresAt are
// required.
func (k *ConnectKeys) Sign(c ConnectClaims) (string, error) {
	if c.SessionID == "" || c.Tenant == "" || c.Channel == "" {
		return "", errors.New("authn: connect token needs a session, tenant and channel")
	}
	if c.ExpiresAt.IsZero() {
		return "", errors.New("authn: connect token needs an expiry")
	}
	if c.ID == "" {
		c.ID = rand.Text()
	}
	claims := connectJWT{
		RegisteredClaims: jwt.RegisteredClaims{
			Subject:   c.SessionID,
			Audience:  jwt.ClaimStrings{ConnectAudience},
			ExpiresAt: jwt.NewNumericDate(ceilSecond(c.ExpiresAt)),
			IssuedAt:  jwt.NewNumericDate(k.now()),
			ID:        c.ID,
		},
		Tenant:  c.Tenant,
		Channel: c.Channel,
	}
	tok := jwt.NewWithClaims(jwt.SigningMethodHS256, claims)
	tok.Header["kid"] = k.signingID
	s, err := tok.SignedString(k.secrets[k.signingID])
	if err != nil {
		return "", fmt.Errorf("authn: sign connect token: %w", err)
	}
	return s, nil
}

// Verify checks a connect token: alg HS256 only, a kid naming a key of the
// set, a valid signature, aud "nimbus-connect", exp present and not passed
// (no leeway), and non-empty sub, tid and ch. Every failure is a
// *problem.Error with code problem.Unauthenticated. Callers that know the
// session and channel of the request use VerifyFor instead.
func (k *ConnectKeys) Verify(token string) (*ConnectClaims, error) {
	return k.verify(token, k.parser)
}

func (k *ConnectKeys) verify(token string, parser *jwt.Parser) (*ConnectClaims, error) {
	if len(token) > maxTokenLen {
		return nil, unauthenticated("connect token is too large", errTooLong)
	}
	var c connectJWT
	tok, err := parser.ParseWithClaims(token, &c, k.key)
	if err != nil {
		return nil, rejectParse("connect token", tok, err, connectAlgs, c.ExpiresAt != nil, len(c.Audience) > 0)
	}
	if c.Subject == "" || c.Tenant == "" || c.Channel == "" {
		return nil, unauthenticated("connect token lacks its session, tenant or channel",
			errors.New("sub, tid or ch claim is empty"))
	}
	return &ConnectClaims{
		SessionID: c.Subject,
		Tenant:    c.Tenant,
		Channel:   c.Channel,
		ID:        c.ID,
		ExpiresAt: c.ExpiresAt.Time,
	}, nil
}

// VerifyFor is Verify for a request on a known session and channel: a valid
// token for another session or channel is problem.PermissionDenied (SPEC §5:
// the token is scoped to one session and one channel).
func (k *ConnectKeys) VerifyFor(token, sessionID, channel string) (*ConnectClaims, error) {
	return k.verifyFor(token, sessionID, channel, k.parser)
}

// VerifyForLate is VerifyFor for the connect endpoint: a token whose only
// fault is a passed exp is returned with Expired set instead of refused.
// A connect token dies with its session, so the endpoint can then answer
// for the session (409 session_not_open) rather than with a bare 401;
// the caller must refuse an Expired token whose session is still open.
func (k *ConnectKeys) VerifyForLate(token, sessionID, channel string) (*ConnectClaims, error) {
	c, err := k.verifyFor(token, sessionID, channel, k.lateParser)
	if err != nil {
		return nil, err
	}
	c.Expired = !k.now().Before(c.ExpiresAt)
	return c, nil
}

func (k *ConnectKeys) verifyFor(token, sessionID, channel string, parser *jwt.Parser) (*ConnectClaims, error) {
	c, err := k.verify(token, parser)
	if err != nil {
		return nil, err
	}
	if c.SessionID != sessionID {
		return nil, problem.New(problem.PermissionDenied, "token is for another session")
	}
	if c.Channel != channel {
		return nil, problem.New(problem.PermissionDenied, "token is for another channel")
	}
	return c, nil
}

// key is the jwt.Keyfunc of Verify. Unlike tenant tokens, the kid is
// mandatory: the gateway always sets it, so a token without one is forged.
func (k *ConnectKeys) key(tok *jwt.Token) (any, error) {
	raw, ok := tok.Header["kid"]
	if !ok {
		return nil, errNoKID
	}
	kid, ok := raw.(string)
	if !ok || kid == "" {
		return nil, errBadKID
	}
	secret, ok := k.secrets[kid]
	if !ok {
		return nil, errUnknownKID
	}
	return secret, nil
}

// ceilSecond rounds t up to a whole second.
func ceilSecond(t time.Time) time.Time {
	if r := t.Truncate(time.Second); !r.Equal(t) {
		return r.Add(time.Second)
	}
	return t
}
