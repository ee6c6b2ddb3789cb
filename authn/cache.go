package authn

import (
	"crypto/sha256"
	"sync"
	"time"
)

// tokenCache remembers tokens that verified, until they expire, so a
// client that sends the same bearer token on every call pays for one
// signature check (an Ed25519 or RSA verify costs tens of microseconds; a
// hash lookup well under one). Only successes are cached, keyed by the
// token's SHA-256, so a cache hit needs the exact bytes that verified.
type tokenCache struct {
	// Static after construction.
	max    int
	leeway time.Duration
	now    func() time.Time

	// Guarded by mu.
	mu      sync.Mutex
	entries map[[sha256.Size]byte]*Principal
}

// defaultCacheSize bounds the cache; past it an arbitrary entry goes.
const defaultCacheSize = 4096

func newTokenCache(max int, leeway time.Duration, now func() time.Time) *tokenCache {
	return &tokenCache{max: max, leeway: leeway, now: now, entries: map[[sha256.Size]byte]*Principal{}}
}

// get returns a copy of the cached principal of token, if it is still
// within its exp (plus the leeway Verify allows).
func (c *tokenCache) get(key [sha256.Size]byte) (*Principal, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	p, ok := c.entries[key]
	if !ok {
		return nil, false
	}
	if !c.now().Before(p.ExpiresAt.Add(c.leeway)) {
		delete(c.entries, key)
		return nil, false
	}
	cp := *p
	return &cp, true
}

func (c *tokenCache) put(key [sha256.Size]byte, p *Principal) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.entries) >= c.max {
		for k := range c.entries {
			delete(c.entries, k)
			break
		}
	}
	cp := *p
	c.entries[key] = &cp
}
