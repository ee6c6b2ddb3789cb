package authn

import (
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"fmt"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// DefaultMintTTL is the lifetime of a minted tenant token when
// MintRequest.TTL is zero.
const DefaultMintTTL = time.Hour

// MintRequest describes a tenant token to sign (`gateway token mint`, tests).
type MintRequest struct {
	Tenant    string   // required
	Subject   string   // required
	Services  []string // exact service names granted
	Sandboxes []string // exact sandbox ids granted
	Admin     bool
	// TTL is how long the token lives; zero means DefaultMintTTL.
	TTL time.Duration
	// Now is the issue time; zero means time.Now.
	Now time.Time
}

// Mint signs a tenant token with an Ed25519 private key: alg EdDSA, aud
// ["nimbus"], iat, exp = iat + TTL, a random jti, and the kid header (omitted
// when kid is empty, in which case a Verifier tries all its Ed25519 keys).
// No nbf is set, so a token is usable as soon as it is printed.
func Mint(priv ed25519.PrivateKey, kid string, r MintRequest) (string, error) {
	if len(priv) != ed25519.PrivateKeySize {
		return "", errors.New("authn: mint: invalid Ed25519 private key")
	}
	if r.Tenant == "" || r.Subject == "" {
		return "", errors.New("authn: mint: tenant and subject are required")
	}
	if r.TTL < 0 {
		return "", fmt.Errorf("authn: mint: negative TTL %v", r.TTL)
	}
	if r.TTL == 0 {
		r.TTL = DefaultMintTTL
	}
	if r.Now.IsZero() {
		r.Now = time.Now()
	}
	claims := TenantClaims{
		RegisteredClaims: jwt.RegisteredClaims{
			Subject:   r.Subject,
			Audience:  jwt.ClaimStrings{TenantAudience},
			IssuedAt:  jwt.NewNumericDate(r.Now),
			ExpiresAt: jwt.NewNumericDate(r.Now.Add(r.TTL)),
			ID:        rand.Text(),
		},
		Tenant: r.Tenant,
		Grants: Grants{
			Services:  r.Services,
			Sandboxes: r.Sandboxes,
		},
		Admin: r.Admin,
	}
	tok := jwt.NewWithClaims(jwt.SigningMethodEdDSA, claims)
	if kid != "" {
		tok.Header["kid"] = kid
	}
	s, err := tok.SignedString(priv)
	if err != nil {
		return "", fmt.Errorf("authn: mint: %w", err)
	}
	return s, nil
}
