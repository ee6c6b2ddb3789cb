package proxy_test

import (
	"net/http"
	"testing"
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
