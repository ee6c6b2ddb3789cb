package proxy_test

import (
	"io"
	"net/http"
	"strings"
	"testing"
)

func TestProblemJSONEverywhere(t *testing.T) {
	e := newEnv(t, envOptions{})
	alice := e.alice()
	cases := []struct {
		method, path, token string
		body                any
		status              int
		code                string
	}{
		{http.MethodGet, "/nope", "", nil, 404, "not_found"},
		{http.MethodDelete, "/v1/tenants/demo/sessions", alice, nil, 405, "method_not_allowed"},
		{http.MethodGet, "/v1/tenants/demo/sessions/ses_unknown", alice, nil, 404, "not_found"},
		{http.MethodGet, "/v1/tenants/demo/sessions", "", nil, 401, "unauthenticated"},
		{http.MethodGet, "/v1/tenants/demo/sessions", "Basic abc", nil, 401, "unauthenticated"},
		{http.MethodPost, "/v1/tenants/demo/sessions", alice, strings.Repeat(" ", 1<<20+1), 413, "payload_too_large"},
		{http.MethodPost, "/v1/tenants/demo/sessions", alice, `{"target":{"service":{"name":"worker"}},"channels":["stdio"],"pad":"` + strings.Repeat("x", 1<<20) + `"}`, 413, "payload_too_large"},
		{http.MethodPost, "/v1/tenants/demo/sessions", alice, ``, 400, "invalid_argument"},
		{http.MethodPost, "/v1/tenants/demo/sessions", alice, `[]`, 400, "invalid_argument"},
		{http.MethodPost, "/v1/tenants/demo/sessions", alice, `{"target":{"service":{"name":"worker"}},"channels":["stdio"]} {}`, 400, "invalid_argument"},
		{http.MethodPost, "/v1/tenants/demo/sessions", alice, `{"target":{"service":{"name":7}},"channels":["stdio"]}`, 400, "invalid_argument"},
		{http.MethodPost, "/v1/tenants/demo/sessions", alice, `{"target":{"service":{"name":"worker","x":1}},"channels":["stdio"]}`, 400, "invalid_argument"},
		{http.MethodPost, "/v1/tenants/demo/sessions", alice, `{"target":{"service":{"name":"worker"}},"channels":"stdio"}`, 400, "invalid_argument"},
	}
	for _, c := range cases {
		t.Run(c.method+" "+c.path, func(t *testing.T) {
			tok := c.token
			var r response
			if strings.HasPrefix(tok, "Basic ") {
				r = e.doRaw(c.method, c.path, map[string]string{"Authorization": tok}, c.body)
			} else {
				r = e.do(c.method, c.path, tok, c.body)
			}
			if r.Status != c.status || r.Code(t) != c.code {
				t.Fatalf("got %d %s, want %d %s: %.300s", r.Status, r.Code(t), c.status, c.code, r.Body)
			}
			m := r.JSON(t)
			if m["type"] != "urn:nimbus:error:"+c.code || m["title"] == "" || m["status"] != float64(c.status) ||
				m["requestId"] != r.Header.Get("X-Request-Id") {
				t.Fatalf("problem body %s", r.Body)
			}
		})
	}
}

func TestUnknownFieldNamed(t *testing.T) {
	e := newEnv(t, envOptions{})
	r := e.open(e.alice(), `{"target":{"service":{"name":"worker"}},"channels":["stdio"],"requestedTTLMs":1000}`)
	if f := field(r.JSON(t), "details", "field"); f != "requestedTTLMs" {
		t.Fatalf("details.field = %v: %s", f, r.Body)
	}
}

func TestHealthReadyMetrics(t *testing.T) {
	e := newEnv(t, envOptions{})
	if r := e.do(http.MethodGet, "/healthz", "", nil); r.Status != 200 {
		t.Fatalf("healthz %d", r.Status)
	}
	if r := e.do(http.MethodGet, "/readyz", "", nil); r.Status != 200 {
		t.Fatalf("readyz %d %s", r.Status, r.Body)
	}
	e.mustOpen(e.alice(), workerOpen())
	second := e.mustOpen(e.alice(), workerOpen())
	id := field(second, "metadata", "id").(string)
	for range 2 { // the repeat is idempotent: one close counted
		if r := e.do(http.MethodPost, "/v1/tenants/demo/sessions/"+id+"/close", e.alice(), nil); r.Status != 200 {
			t.Fatalf("close: %d %s", r.Status, r.Body)
		}
	}
	r := e.scrape()
	for _, want := range []string{"nimbus_sessions_opened_total{kind=\"sandbox\"} 2", "nimbus_session_open_seconds_count 2",
		"nimbus_http_requests_total", "nimbus_sessions_open 1", "nimbus_sessions_closed_total 1"} {
		if !strings.Contains(r, want) {
			t.Errorf("metrics lack %q", want)
		}
	}
	e.srv.Drain()
	if r := e.do(http.MethodGet, "/readyz", "", nil); r.Status != 503 || r.Code(t) != "unavailable" {
		t.Fatalf("readyz while draining: %d %s", r.Status, r.Body)
	}
	if r := e.open(e.alice(), workerOpen()); r.Status != 503 {
		t.Fatalf("open while draining: %d %s", r.Status, r.Body)
	}
}

// doRaw sends a request with the given headers verbatim.
func (e *env) doRaw(method, path string, headers map[string]string, body any) response {
	e.t.Helper()
	var rd *strings.Reader
	if s, ok := body.(string); ok {
		rd = strings.NewReader(s)
	} else {
		rd = strings.NewReader("")
	}
	req, err := http.NewRequest(method, e.URL+path, rd)
	if err != nil {
		e.t.Fatal(err)
	}
	for k, v := range headers {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	defer resp.Body.Close()
	var b strings.Builder
	_, _ = io.Copy(&b, resp.Body)
	return response{Status: resp.StatusCode, Header: resp.Header, Body: []byte(b.String())}
}

// TestUnknownNestedFieldNamed: the field of an unknown nested key is its
// full path.
func TestUnknownNestedFieldNamed(t *testing.T) {
	e := newEnv(t, envOptions{})
	r := e.open(e.alice(), `{"target":{"service":{"name":"worker","kind":"x"}},"channels":["stdio"]}`)
	if f := field(r.JSON(t), "details", "field"); f != "target.service.kind" {
		t.Fatalf("details.field = %v: %s", f, r.Body)
	}
}

// A 405 says which methods the route takes (RFC 9110 §15.5.6), through
// the router as well as from the files face.
func TestMethodNotAllowedAllow(t *testing.T) {
	e := newEnv(t, envOptions{})
	for _, c := range []struct{ method, path, allow string }{
		{http.MethodDelete, "/v1/tenants/demo/sessions", "GET, POST"},
		{http.MethodPost, "/v1/connect/ses_x/stdio", "GET, HEAD"},
		{http.MethodPost, "/v1/connect/ses_x/files/a.txt", "GET, HEAD, PUT, DELETE"},
		{http.MethodPut, "/healthz", "GET"},
	} {
		r := e.do(c.method, c.path, e.alice(), nil)
		if r.Status != 405 || r.Code(t) != "method_not_allowed" || r.Header.Get("Allow") != c.allow {
			t.Errorf("%s %s: %d %s, Allow %q (want %q)", c.method, c.path, r.Status, r.Code(t), r.Header.Get("Allow"), c.allow)
		}
	}
}
