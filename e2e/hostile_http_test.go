package e2e

import (
	"bytes"
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"
)

// hostileCase is one hostile request and the answer it must get.
type hostileCase struct {
	name   string
	body   string
	status int
	code   string
	field  string // details.field, when the answer names one
}

// openBody builds an open body around a target, channels and TTL JSON.
func openBody(target, channels, ttl string) string {
	b := `{"target":` + target + `,"channels":` + channels
	if ttl != "" {
		b += `,"requestedTtlMs":` + ttl
	}
	return b + "}"
}

const (
	workerTarget = `{"service":{"name":"worker"}}`
	stdioOnly    = `["stdio"]`
)

// TestHostileOpenBodies posts malformed and hostile open bodies with a
// token that may open worker and sbx-cat: each gets its exact status and
// code, and no session or successful audit event appears.
func TestHostileOpenBodies(t *testing.T) {
	t.Parallel()
	g := startGateway(t)
	tok := g.token("demo", false, []string{"worker", "pg"}, []string{"sbx-cat"})
	deep := strings.Repeat("[", 20000) + strings.Repeat("]", 20000)
	cases := []hostileCase{
		{name: "empty body", body: "", status: 400, code: "invalid_argument"},
		{name: "null", body: "null", status: 400, code: "invalid_argument", field: "target"},
		{name: "array", body: "[]", status: 400, code: "invalid_argument"},
		{name: "string", body: `"open"`, status: 400, code: "invalid_argument"},
		{name: "truncated JSON", body: `{"target":{"service":`, status: 400, code: "invalid_argument"},
		{name: "two JSON values", body: openBody(workerTarget, stdioOnly, "") + "{}", status: 400, code: "invalid_argument"},
		{name: "trailing garbage", body: openBody(workerTarget, stdioOnly, "") + " x", status: 400, code: "invalid_argument"},
		{name: "byte order mark", body: "\ufeff" + openBody(workerTarget, stdioOnly, ""), status: 400, code: "invalid_argument"},
		{name: "comment", body: `{/* hi */"target":` + workerTarget + `,"channels":["stdio"]}`, status: 400, code: "invalid_argument"},
		{name: "single quotes", body: `{'target':{'service':{'name':'worker'}},'channels':['stdio']}`, status: 400, code: "invalid_argument"},
		{name: "unknown top-level field", body: `{"target":` + workerTarget + `,"channels":["stdio"],"admin":true}`, status: 400, code: "invalid_argument", field: "admin"},
		{name: "misspelt requestedTTLMs", body: `{"target":` + workerTarget + `,"channels":["stdio"],"requestedTTLMs":5000}`, status: 400, code: "invalid_argument", field: "requestedTTLMs"},
		{name: "case variant Target", body: `{"Target":` + workerTarget + `,"channels":["stdio"]}`, status: 400, code: "invalid_argument", field: "Target"},
		{name: "case variant CHANNELS", body: `{"target":` + workerTarget + `,"CHANNELS":["stdio"]}`, status: 400, code: "invalid_argument", field: "CHANNELS"},
		{name: "case variant nested Service", body: openBody(`{"Service":{"name":"worker"}}`, stdioOnly, ""), status: 400, code: "invalid_argument", field: "target.Service"},
		{name: "case variant nested Name", body: openBody(`{"service":{"Name":"worker"}}`, stdioOnly, ""), status: 400, code: "invalid_argument", field: "target.service.Name"},
		{name: "unknown nested field", body: openBody(`{"service":{"name":"worker","kind":"browser"}}`, stdioOnly, ""), status: 400, code: "invalid_argument", field: "target.service.kind"},
		{name: "target is a string", body: openBody(`"worker"`, stdioOnly, ""), status: 400, code: "invalid_argument", field: "target"},
		{name: "target is null", body: openBody(`null`, stdioOnly, ""), status: 400, code: "invalid_argument", field: "target"},
		{name: "target empty object", body: openBody(`{}`, stdioOnly, ""), status: 400, code: "invalid_argument", field: "target"},
		{name: "service and sandbox", body: openBody(`{"service":{"name":"worker"},"sandbox":{"id":"sbx-cat"}}`, stdioOnly, ""), status: 400, code: "invalid_argument", field: "target"},
		{name: "service name a number", body: openBody(`{"service":{"name":42}}`, stdioOnly, ""), status: 400, code: "invalid_argument"},
		{name: "service name empty", body: openBody(`{"service":{"name":""}}`, stdioOnly, ""), status: 400, code: "invalid_argument", field: "target.service.name"},
		{name: "sandbox id empty", body: openBody(`{"sandbox":{"id":""}}`, stdioOnly, ""), status: 400, code: "invalid_argument", field: "target.sandbox.id"},
		{name: "channels a string", body: openBody(workerTarget, `"stdio"`, ""), status: 400, code: "invalid_argument", field: "channels"},
		{name: "channels null", body: openBody(workerTarget, `null`, ""), status: 400, code: "invalid_argument", field: "channels"},
		{name: "channels empty", body: openBody(workerTarget, `[]`, ""), status: 400, code: "invalid_argument", field: "channels"},
		{name: "channel a number", body: openBody(workerTarget, `[1]`, ""), status: 400, code: "invalid_argument", field: "channels"},
		{name: "channel unknown", body: openBody(workerTarget, `["shell"]`, ""), status: 400, code: "invalid_argument", field: "channels"},
		{name: "channel case variant", body: openBody(workerTarget, `["STDIO"]`, ""), status: 400, code: "invalid_argument", field: "channels"},
		{name: "channel duplicated", body: openBody(workerTarget, `["stdio","files","stdio"]`, ""), status: 400, code: "invalid_argument", field: "channels"},
		{name: "channel with NUL", body: openBody(workerTarget, `["stdio\u0000"]`, ""), status: 400, code: "invalid_argument", field: "channels"},
		{name: "ten thousand channels", body: openBody(workerTarget, "["+strings.Repeat(`"stdio",`, 9999)+`"stdio"]`, ""), status: 400, code: "invalid_argument", field: "channels"},
		{name: "ttl negative", body: openBody(workerTarget, stdioOnly, "-1"), status: 400, code: "invalid_argument", field: "requestedTtlMs"},
		{name: "ttl zero", body: openBody(workerTarget, stdioOnly, "0"), status: 400, code: "invalid_argument", field: "requestedTtlMs"},
		{name: "ttl under a second", body: openBody(workerTarget, stdioOnly, "999"), status: 400, code: "invalid_argument", field: "requestedTtlMs"},
		{name: "ttl float", body: openBody(workerTarget, stdioOnly, "1500.5"), status: 400, code: "invalid_argument", field: "requestedTtlMs"},
		{name: "ttl exponent", body: openBody(workerTarget, stdioOnly, "6e5"), status: 400, code: "invalid_argument", field: "requestedTtlMs"},
		{name: "ttl string", body: openBody(workerTarget, stdioOnly, `"600000"`), status: 400, code: "invalid_argument", field: "requestedTtlMs"},
		{name: "ttl bool", body: openBody(workerTarget, stdioOnly, "true"), status: 400, code: "invalid_argument", field: "requestedTtlMs"},
		{name: "ttl over int64", body: openBody(workerTarget, stdioOnly, "99999999999999999999999999"), status: 400, code: "invalid_argument", field: "requestedTtlMs"},
		{name: "ttl minus int64", body: openBody(workerTarget, stdioOnly, "-9223372036854775808"), status: 400, code: "invalid_argument", field: "requestedTtlMs"},
		{name: "ttl NaN", body: openBody(workerTarget, stdioOnly, "NaN"), status: 400, code: "invalid_argument"},
		{name: "ttl object", body: openBody(workerTarget, stdioOnly, `{"ms":5000}`), status: 400, code: "invalid_argument", field: "requestedTtlMs"},
		{name: "deeply nested arrays", body: `{"target":` + workerTarget + `,"channels":` + deep + `}`, status: 400, code: "invalid_argument"},
		{name: "deeply nested target", body: `{"target":` + strings.Repeat(`{"service":`, 20000) + `1` + strings.Repeat("}", 20001), status: 400, code: "invalid_argument"},
		// Names and ids that do not match a grant exactly are refused at
		// authorization (step 3), before anything is looked up.
		{name: "whitespace service name", body: openBody(`{"service":{"name":"   "}}`, stdioOnly, ""), status: 403, code: "permission_denied"},
		{name: "padded service name", body: openBody(`{"service":{"name":" worker"}}`, stdioOnly, ""), status: 403, code: "permission_denied"},
		{name: "NUL in service name", body: openBody(`{"service":{"name":"worker\u0000"}}`, stdioOnly, ""), status: 403, code: "permission_denied"},
		{name: "homoglyph service name", body: openBody(`{"service":{"name":"wоrker"}}`, stdioOnly, ""), status: 403, code: "permission_denied"},
		{name: "invalid UTF-8 service name", body: "{\"target\":{\"service\":{\"name\":\"work\xffer\"}},\"channels\":[\"stdio\"]}", status: 403, code: "permission_denied"},
		{name: "case variant service name", body: openBody(`{"service":{"name":"Worker"}}`, stdioOnly, ""), status: 403, code: "permission_denied"},
		{name: "traversal sandbox id", body: openBody(`{"sandbox":{"id":"../sbx-cat"}}`, stdioOnly, ""), status: 403, code: "permission_denied"},
		{name: "dot-dot sandbox id", body: openBody(`{"sandbox":{"id":"sbx-cat/../sbx-tty"}}`, stdioOnly, ""), status: 403, code: "permission_denied"},
		{name: "overlong sandbox id", body: openBody(`{"sandbox":{"id":"`+strings.Repeat("a", 512<<10)+`"}}`, stdioOnly, ""), status: 403, code: "permission_denied"},
		{name: "another tenant's sandbox", body: openBody(`{"sandbox":{"id":"sbx-other"}}`, stdioOnly, ""), status: 403, code: "permission_denied"},
		// Duplicate keys: the last one wins, and it is the one authorized
		// (pg is granted, offers no channel).
		{name: "duplicate target key", body: `{"target":` + workerTarget + `,"target":{"service":{"name":"pg"}},"channels":["stdio"]}`, status: 400, code: "channel_unsupported"},
		{name: "body over 1 MiB", body: openBody(workerTarget, stdioOnly, "") + strings.Repeat(" ", 1<<20), status: 413, code: "payload_too_large"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			before := g.snapshot("demo")
			r := do(t, http.MethodPost, g.URL+"/v1/tenants/demo/sessions", strings.NewReader(tc.body),
				map[string]string{"Authorization": "Bearer " + tok, "Content-Type": "application/json"})
			wantProblem(t, tc.name, r, tc.status, tc.code)
			if tc.field != "" {
				if _, d := r.problem(); d["field"] != tc.field {
					t.Errorf("details.field = %v, want %q", d["field"], tc.field)
				}
			}
			unchangedBut(t, tc.name, before, g.snapshot("demo"), true)
		})
	}
	t.Run("chunked body over 1 MiB", func(t *testing.T) {
		before := g.snapshot("demo")
		// An io.Reader of unknown length: sent chunked, no Content-Length.
		body := io.MultiReader(strings.NewReader(openBody(workerTarget, stdioOnly, "")), &zeroSpaces{n: 2 << 20})
		r := do(t, http.MethodPost, g.URL+"/v1/tenants/demo/sessions", body,
			map[string]string{"Authorization": "Bearer " + tok, "Content-Type": "application/json"})
		wantProblem(t, "chunked", r, 413, "payload_too_large")
		unchangedBut(t, "chunked", before, g.snapshot("demo"), true)
	})
	t.Run("huge ttl is capped", func(t *testing.T) {
		r := do(t, http.MethodPost, g.URL+"/v1/tenants/demo/sessions",
			strings.NewReader(openBody(workerTarget, stdioOnly, "9223372036854775807")),
			map[string]string{"Authorization": "Bearer " + tok})
		if r.status != http.StatusCreated || !bytes.Contains(r.body, []byte(`"ttlMs":3600000`)) {
			t.Fatalf("got %d %s, want 201 with ttlMs 3600000", r.status, r.body)
		}
	})
}

// zeroSpaces reads n spaces.
type zeroSpaces struct{ n int }

func (z *zeroSpaces) Read(p []byte) (int, error) {
	if z.n == 0 {
		return 0, io.EOF
	}
	k := min(len(p), z.n)
	for i := range p[:k] {
		p[i] = ' '
	}
	z.n -= k
	return k, nil
}

// TestHostilePathsAndQueries attacks the session routes through their
// path segments and query parameters.
func TestHostilePathsAndQueries(t *testing.T) {
	t.Parallel()
	g := startGateway(t)
	adm := g.admin()
	tok := adm.Token
	s := g.open(adm, serviceTarget("worker"), "stdio")
	otherAdmin := g.token("other", true, []string{"worker"}, nil)
	otherSess := func() string {
		c := clientFor(g, "other", otherAdmin)
		return g.open(c, serviceTarget("worker"), "stdio").Metadata.ID
	}()
	auth := map[string]string{"Authorization": "Bearer " + tok}
	base := g.URL + "/v1/tenants/demo/sessions"
	cases := []struct {
		name, method, path, body string
		status                   int
		code                     string
	}{
		{"traversal in session id", "GET", "/" + url.PathEscape("../../../etc/passwd"), "", 404, "not_found"},
		{"encoded traversal to another tenant", "GET", "/..%2f..%2fother%2fsessions%2f" + otherSess, "", 404, "not_found"},
		{"NUL in session id", "GET", "/ses_%00", "", 404, "not_found"},
		{"unicode session id", "GET", "/" + url.PathEscape("ses_☃\u202e"), "", 404, "not_found"},
		{"overlong session id", "GET", "/ses_" + strings.Repeat("x", 8000), "", 404, "not_found"},
		{"another tenant's session id", "GET", "/" + otherSess, "", 404, "not_found"},
		{"close another tenant's session", "POST", "/" + otherSess + "/close", `{"reason":"x"}`, 404, "not_found"},
		{"close reason over 100 bytes", "POST", "/" + s.Metadata.ID + "/close", `{"reason":"` + strings.Repeat("r", 101) + `"}`, 400, "invalid_argument"},
		{"close reason a number", "POST", "/" + s.Metadata.ID + "/close", `{"reason":7}`, 400, "invalid_argument"},
		{"close unknown field", "POST", "/" + s.Metadata.ID + "/close", `{"reason":"x","force":true}`, 400, "invalid_argument"},
		{"close malformed", "POST", "/" + s.Metadata.ID + "/close", `{"reason":`, 400, "invalid_argument"},
		{"close body over 1 MiB", "POST", "/" + s.Metadata.ID + "/close", `{"reason":"x"}` + strings.Repeat(" ", 1<<20+1), 413, "payload_too_large"},
		{"state filter unknown", "GET", "?state=opened", "", 400, "invalid_argument"},
		{"pageSize zero", "GET", "?pageSize=0", "", 400, "invalid_argument"},
		{"pageSize over 500", "GET", "?pageSize=501", "", 400, "invalid_argument"},
		{"pageSize negative", "GET", "?pageSize=-5", "", 400, "invalid_argument"},
		{"pageSize not a number", "GET", "?pageSize=ten", "", 400, "invalid_argument"},
		{"pageToken garbage", "GET", "?pageToken=" + url.QueryEscape("'; DROP TABLE sessions;--"), "", 400, "invalid_argument"},
		{"wrong method", "DELETE", "/" + s.Metadata.ID, "", 405, "method_not_allowed"},
		{"tenant path traversal", "GET", "/../../other/sessions", "", 404, "not_found"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			before := g.snapshot("demo")
			otherBefore := g.snapshot("other")
			var body io.Reader
			if tc.body != "" {
				body = strings.NewReader(tc.body)
			}
			u := base + tc.path
			if tc.name == "tenant path traversal" {
				u = g.URL + "/v1/tenants/demo/../../other/sessions" // sent as is, not cleaned by the client
			}
			r := doRaw(t, tc.method, u, body, auth)
			wantProblem(t, tc.name, r, tc.status, tc.code)
			unchangedBut(t, tc.name, before, g.snapshot("demo"), true)
			unchangedBut(t, tc.name+" (tenant other)", otherBefore, g.snapshot("other"), false)
		})
	}
}

// doRaw sends a request whose path is not cleaned or re-escaped.
func doRaw(t testing.TB, method, rawURL string, body io.Reader, hdr map[string]string) result {
	t.Helper()
	rawURL = httpScheme(rawURL)
	u, err := url.Parse(rawURL)
	if err != nil {
		t.Fatal(err)
	}
	u.RawPath = ""
	req := &http.Request{Method: method, URL: &url.URL{Scheme: u.Scheme, Host: u.Host, Opaque: "//" + u.Host + pathOf(rawURL), RawQuery: u.RawQuery},
		Header: http.Header{}, Host: u.Host}
	if body != nil {
		b, _ := io.ReadAll(body)
		req.Body = io.NopCloser(bytes.NewReader(b))
		req.ContentLength = int64(len(b))
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := httpClient.Do(req)
	if err != nil {
		t.Fatalf("%s %.120s…: %v", method, rawURL, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return result{status: resp.StatusCode, header: resp.Header, body: b}
}

// pathOf is the raw path of a URL string (after the host, before "?").
func pathOf(raw string) string {
	rest := raw[strings.Index(raw, "://")+3:]
	rest = rest[strings.IndexByte(rest, '/'):]
	if i := strings.IndexByte(rest, '?'); i >= 0 {
		rest = rest[:i]
	}
	return rest
}
