package authn

import (
	"slices"
	"time"
)

// Principal is who a verified tenant token speaks for. Verifier.Verify only
// returns one whose Subject and Tenant are non-empty.
type Principal struct {
	Subject   string   // jwt sub
	Tenant    string   // claim tid
	Services  []string // claim grants.services: exact service names
	Sandboxes []string // claim grants.sandboxes: exact sandbox ids
	Admin     bool     // claim admin
	ExpiresAt time.Time
}

// CanService reports whether p holds a grant for the service name. The match
// is exact and case-sensitive: SPEC §4.1 forbids wildcards and prefixes, so
// grants "work", "worker*", "Worker" or "worker " do not allow "worker". An
// empty name is never allowed, so a stray "" grant opens nothing.
func (p *Principal) CanService(name string) bool {
	return p != nil && name != "" && slices.Contains(p.Services, name)
}

// CanSandbox reports whether p may reach the sandbox id; like CanService the
// match is exact and an empty id is never allowed.
func (p *Principal) CanSandbox(id string) bool {
	return p != nil && id != "" && slices.Contains(p.Sandboxes, id)
}
