package proxy

import (
	"net/http"
	"strings"

	"github.com/gorilla/mux"

	"github.com/nimbus/gateway/authn"
	"github.com/nimbus/gateway/lease"
	"github.com/nimbus/gateway/problem"
)

// authenticate verifies the bearer token and that it belongs to the path's
// tenant (SPEC §4.1 step 1). A token of another tenant is 403, not 404: the
// caller proved who it is, and the tenant id in the path is not a secret.
func (s *Server) authenticate(r *http.Request) (*authn.Principal, error) {
	h := r.Header.Get("Authorization")
	scheme, token, ok := strings.Cut(h, " ")
	if h == "" {
		return nil, problem.New(problem.Unauthenticated, "missing Authorization: Bearer token")
	}
	if !ok || !strings.EqualFold(scheme, "Bearer") || strings.TrimSpace(token) == "" {
		return nil, problem.New(problem.Unauthenticated, "Authorization must be \"Bearer <token>\"")
	}
	p, err := s.tenants.Verify(strings.TrimSpace(token))
	if err != nil {
		return nil, err
	}
	if tenant := mux.Vars(r)["tenant"]; p.Tenant != tenant {
		return nil, problem.New(problem.PermissionDenied, "token is for another tenant").With("tenant", tenant)
	}
	return p, nil
}

// authenticateAdmin is authenticate plus the admin claim (SPEC §4.3).
func (s *Server) authenticateAdmin(r *http.Request) (*authn.Principal, error) {
	p, err := s.authenticate(r)
	if err != nil {
		return nil, err
	}
	if !p.Admin {
		return nil, problem.New(problem.PermissionDenied, "this endpoint needs an admin token")
	}
	return p, nil
}

// authorizeTarget checks the grant a target needs (SPEC §4.1 step 3): an
// exact service grant, or reach to that exact sandbox id.
func authorizeTarget(p *authn.Principal, t lease.Target) error {
	switch {
	case t.Service != nil && !p.CanService(t.Service.Name):
		return problem.New(problem.PermissionDenied, "token has no grant for service %q", t.Service.Name).
			With("service", t.Service.Name)
	case t.Sandbox != nil && !p.CanSandbox(t.Sandbox.ID):
		return problem.New(problem.PermissionDenied, "token has no reach to sandbox %q", t.Sandbox.ID).
			With("sandbox", t.Sandbox.ID)
	}
	return nil
}
