package targets

import (
	"context"
	"time"

	"github.com/nimbus/gateway/problem"
)

// ProvisionRequest asks for what one session needs at open (SPEC §4.1
// step 7).
type ProvisionRequest struct {
	TenantID, SessionID string
	// ExpiresAt is the session's: what is provisioned never outlives it.
	ExpiresAt time.Time
	// Page asks for a page target of the session's own (the page channel).
	Page bool
}

// Provisioned is what a session was given.
type Provisioned struct {
	// Backend names it for the session's snapshot, e.g.
	// "chromium:brw_… page:<target id>".
	Backend string
	// Ended is cancelled when it ends, whatever ended it.
	Ended context.Context
	// Released reports whether it ended because it was given back (a
	// release, an expiry, a shutdown) rather than on its own (a crash).
	Released func() bool
}

// Provision gives the session a browser of its own (Acquire), and with
// r.Page a page in it, which PageID then names. A page that cannot be
// made gives the browser back.
func (p *BrowserPool) Provision(ctx context.Context, r ProvisionRequest) (*Provisioned, error) {
	b, err := p.Acquire(ctx, r.TenantID, r.SessionID, r.ExpiresAt)
	if err != nil {
		return nil, err
	}
	backend := "chromium:" + b.ID
	if r.Page {
		id, err := b.NewPage(ctx)
		if err != nil {
			p.Release(r.SessionID)
			return nil, problem.Wrap(problem.Unavailable, err, "creating the session's page failed")
		}
		b.setPage(id)
		backend += " page:" + id
	}
	return &Provisioned{Backend: backend, Ended: b.Context(), Released: b.Killed}, nil
}

// PageID is the page target made for the session's page channel, "" when
// it has none.
func (b *Browser) PageID() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.page
}

func (b *Browser) setPage(id string) {
	b.mu.Lock()
	b.page = id
	b.mu.Unlock()
}
