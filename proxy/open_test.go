package proxy_test

import (
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nimbus/gateway/lease"
)

func svc(name string, channels ...string) map[string]any {
	return map[string]any{"target": map[string]any{"service": map[string]any{"name": name}}, "channels": channels}
}

func sbx(id string, channels ...string) map[string]any {
	return map[string]any{"target": map[string]any{"sandbox": map[string]any{"id": id}}, "channels": channels}
}

// TestOpenCheckOrder runs requests that break two rules of SPEC §4.1 at
// once: the earlier rule must win every time.
func TestOpenCheckOrder(t *testing.T) {
	e := newEnv(t, envOptions{})
	alice := e.alice()
	nogrant := e.token("demo", "bob", nil, nil, false)
	acme := e.token("acme", "carol", []string{"worker"}, nil, false)
	ghost := e.token("demo", "dan", []string{"ghost"}, []string{"sbx-ghost"}, false)

	// sbx-other is stopped so that a sandbox target is not ready.
	if r := e.do(http.MethodDelete, "/v1/tenants/demo/sandboxes/sbx-other", e.admin(), nil); r.Status != 200 {
		t.Fatalf("delete sandbox: %d %s", r.Status, r.Body)
	}

	cases := []struct {
		name   string
		token  string
		body   any
		status int
		code   string
	}{
		{"1 no token beats bad body", "", `{`, 401, "unauthenticated"},
		{"1 garbage token", "not-a-jwt", workerOpen(), 401, "unauthenticated"},
		{"1 other tenant beats bad body", acme, `{`, 403, "permission_denied"},
		{"2 malformed JSON beats no grant", nogrant, `{"target":`, 400, "invalid_argument"},
		{"2 both targets", alice, map[string]any{"target": map[string]any{"service": map[string]any{"name": "worker"}, "sandbox": map[string]any{"id": "sbx-worker"}}, "channels": []string{"stdio"}}, 400, "invalid_argument"},
		{"2 neither target", alice, map[string]any{"target": map[string]any{}, "channels": []string{"stdio"}}, 400, "invalid_argument"},
		{"2 unknown channel beats no grant", nogrant, svc("worker", "ssh"), 400, "invalid_argument"},
		{"2 duplicate channel", alice, svc("worker", "stdio", "stdio"), 400, "invalid_argument"},
		{"2 no channels", alice, svc("worker"), 400, "invalid_argument"},
		{"2 ttl below minimum beats no grant", nogrant, map[string]any{"target": map[string]any{"service": map[string]any{"name": "worker"}}, "channels": []string{"stdio"}, "requestedTtlMs": 999}, 400, "invalid_argument"},
		{"2 ttl not an integer", alice, `{"target":{"service":{"name":"worker"}},"channels":["stdio"],"requestedTtlMs":1000.5}`, 400, "invalid_argument"},
		{"2 ttl a string", alice, `{"target":{"service":{"name":"worker"}},"channels":["stdio"],"requestedTtlMs":"600000"}`, 400, "invalid_argument"},
		{"2 unknown field", alice, `{"target":{"service":{"name":"worker"}},"channels":["stdio"],"requestedTTLMs":600000}`, 400, "invalid_argument"},
		{"3 no grant beats unknown service", nogrant, svc("ghost", "stdio"), 403, "permission_denied"},
		{"3 no reach beats unknown sandbox", nogrant, sbx("sbx-ghost", "stdio"), 403, "permission_denied"},
		{"3 no grant beats unsupported channel", nogrant, svc("pg", "stdio"), 403, "permission_denied"},
		{"4 unknown service beats bad channel", ghost, svc("ghost", "cdp"), 404, "not_found"},
		{"4 unknown sandbox", ghost, sbx("sbx-ghost", "stdio"), 404, "not_found"},
		{"4 failed sandbox beats bad channel", alice, svc("broken", "cdp"), 409, "sandbox_not_ready"},
		{"4 stopped sandbox", alice, sbx("sbx-other", "stdio"), 409, "sandbox_not_ready"},
		{"5 channel not offered", alice, svc("pg", "stdio"), 400, "channel_unsupported"},
		{"7 browser provisioning", alice, svc("browser", "cdp"), 503, "unavailable"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := e.open(c.token, c.body)
			if r.Status != c.status || r.Code(t) != c.code {
				t.Fatalf("got %d %s, want %d %s: %s", r.Status, r.Code(t), c.status, c.code, r.Body)
			}
		})
	}
	// Nothing above may have created a session.
	if n, err := e.db.CountOpen(t.Context(), "demo", time.Now()); err != nil || n != 0 {
		t.Fatalf("open sessions after failed opens: %d, %v", n, err)
	}
}

func TestOpenNotReadyDetails(t *testing.T) {
	e := newEnv(t, envOptions{})
	r := e.open(e.alice(), sbx("sbx-broken", "stdio"))
	m := r.JSON(t)
	if r.Status != 409 || field(m, "details", "state") != "failed" || field(m, "details", "sandbox") != "sbx-broken" {
		t.Fatalf("got %d %s", r.Status, r.Body)
	}
}

// TestOpenLimit covers step 6 and its place between 5 and 7.
func TestOpenLimit(t *testing.T) {
	e := newEnv(t, envOptions{maxOpen: 1})
	alice := e.alice()
	e.mustOpen(alice, workerOpen())
	if r := e.open(alice, svc("pg", "stdio")); r.Code(t) != "channel_unsupported" {
		t.Fatalf("5 before 6: got %s", r.Body)
	}
	r := e.open(alice, svc("browser", "cdp"))
	if r.Status != 429 || r.Code(t) != "resource_exhausted" || r.Header.Get("Retry-After") == "" {
		t.Fatalf("6 before 7: got %d %v %s", r.Status, r.Header, r.Body)
	}
	// Another tenant is not affected by demo's limit.
	acme := e.token("acme", "carol", []string{"worker"}, nil, false)
	if r := e.do(http.MethodPost, "/v1/tenants/acme/sessions", acme, workerOpen()); r.Status != 201 {
		t.Fatalf("acme open: %d %s", r.Status, r.Body)
	}
}

// TestOpenTargetChanged changes a dynamic service between authorization
// and commit: the open fails with target_changed and creates nothing.
func TestOpenTargetChanged(t *testing.T) {
	e := newEnv(t, envOptions{})
	alice, admin := e.alice(), e.admin()
	var fired atomic.Bool
	e.srv.SetBeforeCommitForTest(func() {
		if fired.CompareAndSwap(false, true) {
			r := e.do(http.MethodPut, "/v1/tenants/demo/services/dyn", admin,
				map[string]any{"kind": "sandbox", "sandbox": "sbx-other", "dynamic": true})
			if r.Status != 200 {
				t.Errorf("changing dyn: %d %s", r.Status, r.Body)
			}
		}
	})
	r := e.open(alice, svc("dyn", "stdio"))
	if r.Status != 409 || r.Code(t) != "target_changed" {
		t.Fatalf("got %d %s", r.Status, r.Body)
	}
	if n, _ := e.db.CountOpen(t.Context(), "demo", time.Now()); n != 0 {
		t.Fatalf("a session was created: %d open", n)
	}
	// The next open sees the new generation and succeeds.
	m := e.mustOpen(alice, svc("dyn", "stdio"))
	if g := field(m, "spec", "targetSnapshot", "generation"); g != float64(2) {
		t.Fatalf("generation %v, want 2", g)
	}
	if sb := field(m, "spec", "targetSnapshot", "sandbox"); sb != "sbx-other" {
		t.Fatalf("snapshot sandbox %v", sb)
	}
	// A non-dynamic service changing mid-open is not checked: the open
	// attaches to what it resolved (the conflict rule is for dynamic ones).
	fired.Store(false)
	e.srv.SetBeforeCommitForTest(func() {
		if fired.CompareAndSwap(false, true) {
			e.do(http.MethodPut, "/v1/tenants/demo/services/worker", admin, map[string]any{"kind": "sandbox", "sandbox": "sbx-other"})
		}
	})
	if r := e.open(alice, svc("worker", "stdio")); r.Status != 201 {
		t.Fatalf("static service: %d %s", r.Status, r.Body)
	}
}

func TestOpenTTL(t *testing.T) {
	e := newEnv(t, envOptions{})
	alice := e.alice()
	withTTL := func(ttl any) map[string]any {
		m := workerOpen()
		m["requestedTtlMs"] = ttl
		return m
	}
	cases := []struct {
		name      string
		body      map[string]any
		requested any
		granted   float64
	}{
		{"absent is 15 minutes", workerOpen(), nil, 15 * 60 * 1000},
		{"minimum", withTTL(1000), float64(1000), 1000},
		{"ten minutes", withTTL(600000), float64(600000), 600000},
		{"one hour", withTTL(3600000), float64(3600000), 3600000},
		{"above the cap", withTTL(7200000), float64(7200000), 3600000},
		{"huge", withTTL(int64(1) << 62), float64(int64(1) << 62), 3600000},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			m := e.mustOpen(alice, c.body)
			if got := field(m, "spec", "ttlMs"); got != c.granted {
				t.Fatalf("ttlMs %v, want %v", got, c.granted)
			}
			if got := field(m, "spec", "requestedTtlMs"); got != c.requested {
				t.Fatalf("requestedTtlMs %v, want %v", got, c.requested)
			}
			created, _ := time.Parse(time.RFC3339, field(m, "metadata", "createdAt").(string))
			expires, _ := time.Parse(time.RFC3339, field(m, "spec", "expiresAt").(string))
			if d := expires.Sub(created); d != time.Duration(c.granted)*time.Millisecond {
				t.Fatalf("expiresAt - createdAt = %v, want %v ms", d, c.granted)
			}
		})
	}
}

func TestOpenTTLConfigurable(t *testing.T) {
	e := newEnv(t, envOptions{ttl: lease.TTLPolicy{Default: time.Minute, Max: 2 * time.Minute}})
	alice := e.alice()
	if m := e.mustOpen(alice, workerOpen()); field(m, "spec", "ttlMs") != float64(60000) {
		t.Fatalf("default: %v", field(m, "spec", "ttlMs"))
	}
	b := workerOpen()
	b["requestedTtlMs"] = 600000
	if m := e.mustOpen(alice, b); field(m, "spec", "ttlMs") != float64(120000) {
		t.Fatalf("cap: %v", field(m, "spec", "ttlMs"))
	}
}

// TestOpenResponse checks the resource of SPEC §3 field by field.
func TestOpenResponse(t *testing.T) {
	e := newEnv(t, envOptions{})
	r := e.open(e.alice(), map[string]any{"target": map[string]any{"service": map[string]any{"name": "worker"}},
		"channels": []string{"stdio", "files"}, "requestedTtlMs": 600000})
	if r.Status != 201 {
		t.Fatalf("%d %s", r.Status, r.Body)
	}
	m := r.JSON(t)
	id := sessionID(m)
	if !strings.HasPrefix(id, "ses_") || len(id) < 24 {
		t.Fatalf("id %q", id)
	}
	if r.Header.Get("Location") != "/v1/tenants/demo/sessions/"+id {
		t.Fatalf("Location %q", r.Header.Get("Location"))
	}
	checks := map[string]any{
		"metadata.tenantId": "demo", "metadata.createdBy": "alice", "status.state": "open",
		"status.closedAt": nil, "status.closeReason": nil, "status.closedBy": nil,
		"spec.targetSnapshot.service": "worker", "spec.targetSnapshot.sandbox": "sbx-worker",
		"spec.targetSnapshot.generation": float64(1), "spec.target.service.name": "worker",
	}
	for path, want := range checks {
		if got := field(m, strings.Split(path, ".")...); got != want {
			t.Errorf("%s = %v, want %v", path, got, want)
		}
	}
	if b, _ := field(m, "spec", "targetSnapshot", "backend").(string); !strings.HasPrefix(b, "local") {
		t.Errorf("backend %q", b)
	}
	for _, k := range []string{"metadata.createdAt", "spec.expiresAt"} {
		s, _ := field(m, strings.Split(k, ".")...).(string)
		if _, err := time.Parse("2006-01-02T15:04:05.000Z", s); err != nil {
			t.Errorf("%s = %q is not RFC 3339 UTC with milliseconds", k, s)
		}
	}
	connect, _ := field(m, "status", "connect").(map[string]any)
	for _, ch := range []string{"stdio", "files"} {
		u, _ := connect[ch].(string)
		want := "ws://" + strings.TrimPrefix(e.URL, "http://") + "/v1/connect/" + id + "/" + ch + "?token="
		if !strings.HasPrefix(u, want) {
			t.Errorf("connect[%s] = %q, want prefix %q", ch, u, want)
		}
	}
	if len(connect) != 2 {
		t.Errorf("connect has %d URLs", len(connect))
	}
	// get never carries connect URLs.
	g := e.do(http.MethodGet, "/v1/tenants/demo/sessions/"+id, e.alice(), nil).JSON(t)
	if _, ok := field(g, "status").(map[string]any)["connect"]; ok {
		t.Fatal("get returned connect URLs")
	}
}
