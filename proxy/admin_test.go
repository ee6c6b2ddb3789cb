package proxy_test

import (
	"net/http"
	"reflect"
	"testing"

	"github.com/nimbus/gateway/targets"
)

func TestAdminCatalog(t *testing.T) {
	e := newEnv(t, envOptions{})
	admin := e.admin()
	put := func(name string, body any) response {
		return e.do(http.MethodPut, "/v1/tenants/demo/services/"+name, admin, body)
	}
	r := put("api", map[string]any{"kind": "external", "url": "https://api.internal"})
	if r.Status != 200 || field(r.JSON(t), "generation") != float64(1) {
		t.Fatalf("create: %d %s", r.Status, r.Body)
	}
	if r := put("api", map[string]any{"kind": "external", "url": "https://api.internal"}); field(r.JSON(t), "generation") != float64(1) {
		t.Fatalf("same definition bumped the generation: %s", r.Body)
	}
	if r := put("api", map[string]any{"kind": "external", "url": "https://api2.internal"}); field(r.JSON(t), "generation") != float64(2) {
		t.Fatalf("changed definition: %s", r.Body)
	}
	if r := put("bad", map[string]any{"kind": "teleporter"}); r.Code(t) != "invalid_argument" {
		t.Fatalf("bad kind: %s", r.Body)
	}
	if r := put("bad", map[string]any{"kind": "sandbox"}); r.Code(t) != "invalid_argument" {
		t.Fatalf("sandbox service without sandbox: %s", r.Body)
	}
	if r := put("bad", `{"kind":"builtin","generation":9}`); r.Code(t) != "invalid_argument" {
		t.Fatalf("client-set generation: %s", r.Body)
	}
	if r := e.do(http.MethodGet, "/v1/tenants/demo/services/api", admin, nil); r.Status != 200 || field(r.JSON(t), "url") != "https://api2.internal" {
		t.Fatalf("get: %d %s", r.Status, r.Body)
	}
	list := e.do(http.MethodGet, "/v1/tenants/demo/services", admin, nil).JSON(t)
	if n := len(list["items"].([]any)); n != 7 {
		t.Fatalf("list: %d services", n)
	}
	if r := e.do(http.MethodDelete, "/v1/tenants/demo/services/api", admin, nil); r.Status != 204 {
		t.Fatalf("delete: %d %s", r.Status, r.Body)
	}
	if r := e.do(http.MethodGet, "/v1/tenants/demo/services/api", admin, nil); r.Status != 404 {
		t.Fatalf("get deleted: %d", r.Status)
	}
	// Admin endpoints need the admin claim.
	if r := e.do(http.MethodGet, "/v1/tenants/demo/services", e.alice(), nil); r.Status != 403 {
		t.Fatalf("non-admin: %d", r.Status)
	}
}

func TestAdminSandboxes(t *testing.T) {
	e := newEnv(t, envOptions{})
	admin := e.admin()
	r := e.do(http.MethodPost, "/v1/tenants/demo/sandboxes", admin, map[string]any{"id": "sbx-new", "command": []string{"/bin/cat"}})
	if r.Status != 201 || field(r.JSON(t), "state") != "ready" {
		t.Fatalf("create: %d %s", r.Status, r.Body)
	}
	if _, hasRoot := r.JSON(t)["root"]; hasRoot {
		t.Fatal("sandbox JSON exposes the host path")
	}
	if r := e.do(http.MethodPost, "/v1/tenants/demo/sandboxes", admin, map[string]any{"id": "sbx-new", "command": []string{"/bin/cat"}}); r.Code(t) != "already_exists" {
		t.Fatalf("duplicate: %s", r.Body)
	}
	if r := e.do(http.MethodPost, "/v1/tenants/demo/sandboxes", admin, map[string]any{"id": "sbx-bad", "command": []string{"/no/such/binary"}}); field(r.JSON(t), "state") != "failed" {
		t.Fatalf("bad command: %s", r.Body)
	}
	if r := e.do(http.MethodPost, "/v1/tenants/demo/sandboxes", admin, map[string]any{"id": "sbx-empty"}); r.Code(t) != "invalid_argument" {
		t.Fatalf("no command: %s", r.Body)
	}
	tok := e.token("demo", "s", nil, []string{"sbx-new"}, false)
	if r := e.open(tok, sbx("sbx-new", "files")); r.Status != 201 {
		t.Fatalf("open on new sandbox: %d %s", r.Status, r.Body)
	}
	if r := e.do(http.MethodDelete, "/v1/tenants/demo/sandboxes/sbx-new", admin, nil); field(r.JSON(t), "state") != "stopped" {
		t.Fatalf("delete: %s", r.Body)
	}
	if r := e.open(tok, sbx("sbx-new", "files")); r.Code(t) != "sandbox_not_ready" {
		t.Fatalf("open on stopped sandbox: %s", r.Body)
	}
	list := e.do(http.MethodGet, "/v1/tenants/demo/sandboxes", admin, nil).JSON(t)
	if n := len(list["items"].([]any)); n != 5 {
		t.Fatalf("list: %d", n)
	}
	if r := e.do(http.MethodGet, "/v1/tenants/demo/sandboxes/nope", admin, nil); r.Status != 404 {
		t.Fatalf("get unknown: %d", r.Status)
	}
}

// TestAdminSandboxResources: a sandbox's resources and network (SPEC §9.2,
// §9.3) round-trip through create, GET and list; absent ones read as the
// defaults (no resources, network none).
func TestAdminSandboxResources(t *testing.T) {
	e := newEnv(t, envOptions{})
	admin := e.admin()
	r := e.do(http.MethodPost, "/v1/tenants/demo/sandboxes", admin, map[string]any{
		"id": "sbx-lim", "command": []string{"/bin/cat"},
		"resources": map[string]any{"memory": "512Mi", "pids": 256, "cpus": 1.5}, "network": "egress",
	})
	if r.Status != 201 {
		t.Fatalf("create: %d %s", r.Status, r.Body)
	}
	check := func(what string, m map[string]any) {
		t.Helper()
		if got := field(m, "resources"); !reflect.DeepEqual(got, map[string]any{"memory": "512Mi", "pids": float64(256), "cpus": 1.5}) {
			t.Errorf("%s: resources = %v", what, got)
		}
		if got := field(m, "network"); got != "egress" {
			t.Errorf("%s: network = %v", what, got)
		}
		if got := field(m, "status"); !reflect.DeepEqual(got, map[string]any{}) {
			t.Errorf("%s: status = %v, want {} (no exit, no cgroup usage under the process runtime)", what, got)
		}
	}
	check("create", r.JSON(t))
	check("get", e.do(http.MethodGet, "/v1/tenants/demo/sandboxes/sbx-lim", admin, nil).JSON(t))
	for _, it := range e.do(http.MethodGet, "/v1/tenants/demo/sandboxes", admin, nil).JSON(t)["items"].([]any) {
		if m := it.(map[string]any); m["id"] == "sbx-lim" {
			check("list", m)
		}
	}

	// Memory as a number of bytes reads back as a quantity.
	r = e.do(http.MethodPost, "/v1/tenants/demo/sandboxes", admin, map[string]any{
		"id": "sbx-bytes", "command": []string{"/bin/cat"}, "resources": map[string]any{"memory": 8 << 20},
	})
	if r.Status != 201 || field(r.JSON(t), "resources", "memory") != "8Mi" {
		t.Fatalf("memory in bytes: %d %s", r.Status, r.Body)
	}
	// None given: no limits of its own, network none.
	r = e.do(http.MethodGet, "/v1/tenants/demo/sandboxes/sbx-worker", admin, nil)
	if m := r.JSON(t); !reflect.DeepEqual(m["resources"], map[string]any{}) || m["network"] != "none" {
		t.Fatalf("defaults: %s", r.Body)
	}
}

// TestAdminSandboxBadResources: every bad limit or network is a 400
// problem+json invalid_argument naming its field, never a 500 or a
// "malformed JSON" without one.
func TestAdminSandboxBadResources(t *testing.T) {
	e := newEnv(t, envOptions{})
	admin := e.admin()
	tests := []struct {
		name      string
		resources any
		network   any
		field     string
	}{
		{"memory not a quantity", map[string]any{"memory": "lots"}, nil, "resources.memory"},
		{"memory unit unknown", map[string]any{"memory": "512Zz"}, nil, "resources.memory"},
		{"memory negative", map[string]any{"memory": -1}, nil, "resources.memory"},
		{"memory not a string", map[string]any{"memory": true}, nil, "resources.memory"},
		{"memory too small", map[string]any{"memory": "1Mi"}, nil, "resources.memory"},
		{"pids negative", map[string]any{"pids": -1}, nil, "resources.pids"},
		{"pids too many", map[string]any{"pids": 1048577}, nil, "resources.pids"},
		{"pids fraction", map[string]any{"pids": 1.5}, nil, "resources.pids"},
		{"pids a string", map[string]any{"pids": "many"}, nil, "resources.pids"},
		{"cpus negative", map[string]any{"cpus": -0.5}, nil, "resources.cpus"},
		{"cpus too many", map[string]any{"cpus": 1025}, nil, "resources.cpus"},
		{"cpus a string", map[string]any{"cpus": "two"}, nil, "resources.cpus"},
		{"unknown resource", map[string]any{"disk": "1Gi"}, nil, "resources.disk"},
		{"resources not an object", "512Mi", nil, "resources"},
		{"network unknown", nil, "host", "network"},
		{"network not a string", nil, 1, "network"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			body := map[string]any{"id": "sbx-bad", "command": []string{"/bin/cat"}}
			if tt.resources != nil {
				body["resources"] = tt.resources
			}
			if tt.network != nil {
				body["network"] = tt.network
			}
			r := e.do(http.MethodPost, "/v1/tenants/demo/sandboxes", admin, body)
			if r.Status != 400 || r.Code(t) != "invalid_argument" {
				t.Fatalf("%d %s; want 400 invalid_argument", r.Status, r.Body)
			}
			if f := field(r.JSON(t), "details", "field"); f != tt.field {
				t.Fatalf("details.field = %v, want %s: %s", f, tt.field, r.Body)
			}
		})
	}
	if r := e.do(http.MethodGet, "/v1/tenants/demo/sandboxes/sbx-bad", admin, nil); r.Status != 404 {
		t.Fatalf("a refused create stored the sandbox: %d %s", r.Status, r.Body)
	}
}

// TestAdminSandboxExitReason: status.reason shows how a failed sandbox's
// workload ended, and goes once it runs again.
func TestAdminSandboxExitReason(t *testing.T) {
	e := newEnv(t, envOptions{})
	admin := e.admin()
	if r := e.do(http.MethodPost, "/v1/tenants/demo/sandboxes", admin, map[string]any{
		"id": "sbx-oom", "command": []string{"/no/such/binary"}, "resources": map[string]any{"memory": "64Mi"},
	}); r.Status != 201 || field(r.JSON(t), "state") != "failed" || field(r.JSON(t), "status", "reason") != nil {
		t.Fatalf("create: %d %s; want failed to start, with no exit reason", r.Status, r.Body)
	}
	// The runtime records an OOM kill through the store.
	if _, err := e.db.SetSandboxExit(t.Context(), "demo", "sbx-oom", "out of memory", targets.ReasonOOM); err != nil {
		t.Fatal(err)
	}
	r := e.do(http.MethodGet, "/v1/tenants/demo/sandboxes/sbx-oom", admin, nil)
	if m := r.JSON(t); m["state"] != "failed" || m["error"] != "out of memory" || field(m, "status", "reason") != "oom" ||
		field(m, "resources", "memory") != "64Mi" {
		t.Fatalf("after an OOM kill: %s", r.Body)
	}
	if _, err := e.db.SetSandboxState(t.Context(), "demo", "sbx-oom", targets.Ready, ""); err != nil {
		t.Fatal(err)
	}
	r = e.do(http.MethodGet, "/v1/tenants/demo/sandboxes/sbx-oom", admin, nil)
	if m := r.JSON(t); m["state"] != "ready" || m["error"] != nil || !reflect.DeepEqual(m["status"], map[string]any{}) {
		t.Fatalf("running again: %s; want no error, no reason", r.Body)
	}
}
