package proxy_test

import (
	"fmt"
	"net/http"
	"slices"
	"strings"
	"testing"
)

// TestExactGrants: a grant names one service exactly; nothing that merely
// looks like it opens it.
func TestExactGrants(t *testing.T) {
	e := newEnv(t, envOptions{})
	cases := []struct {
		grant string
		ok    bool
	}{
		{"worker", true}, {"work", false}, {"worker*", false}, {"*", false}, {"Worker", false},
		{"worker ", false}, {"workers", false}, {"w", false}, {"", false},
	}
	for _, c := range cases {
		t.Run(fmt.Sprintf("%q", c.grant), func(t *testing.T) {
			tok := e.token("demo", "g", []string{c.grant}, []string{"sbx-worker"}, false)
			r := e.open(tok, workerOpen())
			if c.ok != (r.Status == 201) || (!c.ok && r.Code(t) != "permission_denied") {
				t.Fatalf("grant %q: %d %s", c.grant, r.Status, r.Body)
			}
		})
	}
}

// TestSandboxReach: a sandbox target needs reach to that sandbox id; a
// service grant on a service in that sandbox is not reach.
func TestSandboxReach(t *testing.T) {
	e := newEnv(t, envOptions{})
	cases := []struct {
		name      string
		services  []string
		sandboxes []string
		ok        bool
	}{
		{"exact id", nil, []string{"sbx-worker"}, true},
		{"service grant only", []string{"worker"}, nil, false},
		{"another sandbox", nil, []string{"sbx-other"}, false},
		{"prefix", nil, []string{"sbx-"}, false},
		{"wildcard", nil, []string{"sbx-*"}, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			tok := e.token("demo", "r", c.services, c.sandboxes, false)
			r := e.open(tok, sbx("sbx-worker", "stdio"))
			if c.ok != (r.Status == 201) || (!c.ok && r.Code(t) != "permission_denied") {
				t.Fatalf("%d %s", r.Status, r.Body)
			}
		})
	}
}

// TestTenantMismatch: a token of one tenant can do nothing in another.
func TestTenantMismatch(t *testing.T) {
	e := newEnv(t, envOptions{})
	demoSession := sessionID(e.mustOpen(e.alice(), workerOpen()))
	acme := e.token("acme", "carol", []string{"worker"}, []string{"sbx-acme"}, true)
	for _, c := range []struct{ method, path string }{
		{http.MethodPost, "/v1/tenants/demo/sessions"},
		{http.MethodGet, "/v1/tenants/demo/sessions"},
		{http.MethodGet, "/v1/tenants/demo/sessions/" + demoSession},
		{http.MethodPost, "/v1/tenants/demo/sessions/" + demoSession + "/close"},
		{http.MethodPost, "/v1/tenants/demo/sessions/" + demoSession + "/connect"},
		{http.MethodGet, "/v1/tenants/demo/services"},
		{http.MethodGet, "/v1/tenants/demo/audit"},
	} {
		r := e.do(c.method, c.path, acme, workerOpen())
		if r.Status != 403 || r.Code(t) != "permission_denied" {
			t.Errorf("%s %s: %d %s", c.method, c.path, r.Status, r.Body)
		}
	}
	// In its own tenant, acme does not see demo's session either.
	if r := e.do(http.MethodGet, "/v1/tenants/acme/sessions/"+demoSession, acme, nil); r.Status != 404 {
		t.Errorf("cross-tenant get by id: %d %s", r.Status, r.Body)
	}
}

// TestChannelMatrix opens every channel on every kind of target (SPEC §2).
// An offered browser channel gets past step 5 and stops at provisioning.
func TestChannelMatrix(t *testing.T) {
	e := newEnv(t, envOptions{})
	alice := e.alice()
	targets := map[string]map[string]any{
		"sandbox":         sbx("sbx-worker"),
		"sandbox service": svc("worker"),
		"browser":         svc("browser"),
		"builtin":         svc("pg"),
		"external":        svc("billing"),
	}
	offered := map[string]string{"sandbox": "stdio files", "sandbox service": "stdio files", "browser": "cdp page"}
	for name, body := range targets {
		for _, ch := range []string{"stdio", "files", "cdp", "page"} {
			t.Run(name+"/"+ch, func(t *testing.T) {
				b := map[string]any{"target": body["target"], "channels": []string{ch}}
				r := e.open(alice, b)
				isOffered := containsWord(offered[name], ch)
				switch {
				case !isOffered:
					if r.Status != 400 || r.Code(t) != "channel_unsupported" {
						t.Fatalf("%d %s", r.Status, r.Body)
					}
					got := fmt.Sprint(r.JSON(t)["details"].(map[string]any)["offered"])
					if want := fmt.Sprint(splitWords(offered[name])); got != want {
						t.Fatalf("details.offered = %s, want %s", got, want)
					}
				case name == "browser":
					if r.Status != 503 || r.Code(t) != "unavailable" {
						t.Fatalf("%d %s", r.Status, r.Body)
					}
				default:
					if r.Status != 201 {
						t.Fatalf("%d %s", r.Status, r.Body)
					}
				}
			})
		}
	}
}

func containsWord(list, w string) bool {
	return slices.Contains(strings.Fields(list), w)
}

// splitWords is strings.Fields as a JSON array decodes.
func splitWords(s string) []any {
	out := []any{}
	for _, w := range strings.Fields(s) {
		out = append(out, w)
	}
	return out
}
