package proxy_test

import (
	"net/http"
	"net/url"
	"strings"
	"testing"
)

// auditFor lists the audit events of one session and action through the
// admin API.
func (e *env) auditFor(sessionID, action string) []map[string]any {
	e.t.Helper()
	q := url.Values{"sessionId": {sessionID}, "action": {action}}
	r := e.do(http.MethodGet, "/v1/tenants/demo/audit?"+q.Encode(), e.admin(), nil)
	if r.Status != 200 {
		e.t.Fatalf("audit: %d %s", r.Status, r.Body)
	}
	var out []map[string]any
	for _, it := range r.JSON(e.t)["items"].([]any) {
		out = append(out, it.(map[string]any))
	}
	return out
}

func TestAuditEvents(t *testing.T) {
	e := newEnv(t, envOptions{})
	alice := e.alice()
	r := e.open(alice, workerOpen())
	id := sessionID(r.JSON(t))
	e.do(http.MethodGet, "/v1/tenants/demo/sessions/"+id, alice, nil)
	e.do(http.MethodGet, "/v1/tenants/demo/sessions", alice, nil)
	e.do(http.MethodPost, "/v1/tenants/demo/sessions/"+id+"/connect", alice, nil)
	e.do(http.MethodPost, "/v1/tenants/demo/sessions/"+id+"/close", alice, map[string]string{"reason": "done"})
	nogrant := e.token("demo", "mallory", nil, nil, false)
	e.open(nogrant, workerOpen())

	check := func(ev map[string]any, action, outcome, principal, code string) {
		t.Helper()
		if ev["action"] != action || ev["outcome"] != outcome || ev["principal"] != principal || ev["tenantId"] != "demo" {
			t.Errorf("event %v: want %s %s by %s", ev, action, outcome, principal)
		}
		if (ev["code"] == nil && code != "") || (code != "" && ev["code"] != code) {
			t.Errorf("event %v: want code %q", ev, code)
		}
		for _, k := range []string{"id", "time", "requestId", "remoteAddr"} {
			if s, _ := ev[k].(string); s == "" {
				t.Errorf("event %v has no %s", ev, k)
			}
		}
	}
	for _, c := range []struct{ action, outcome string }{
		{"session.open", "success"}, {"session.get", "success"}, {"session.connect_url", "success"}, {"session.close", "success"},
	} {
		evs := e.auditFor(id, c.action)
		if len(evs) != 1 {
			t.Fatalf("%s: %d events", c.action, len(evs))
		}
		check(evs[0], c.action, c.outcome, "alice", "")
		if evs[0]["target"] != "service/worker" {
			t.Errorf("%s target %v", c.action, evs[0]["target"])
		}
	}
	// The open event's request id is the open response's.
	if got := e.auditFor(id, "session.open")[0]["requestId"]; got != r.Header.Get("X-Request-Id") {
		t.Errorf("open event requestId %v, response %s", got, r.Header.Get("X-Request-Id"))
	}
	lists := e.auditFor("", "session.list")
	if len(lists) != 1 {
		t.Fatalf("list events: %d", len(lists))
	}
	check(lists[0], "session.list", "success", "alice", "")
	var denied []map[string]any
	for _, ev := range e.auditFor("", "session.open") {
		if ev["principal"] == "mallory" {
			denied = append(denied, ev)
		}
	}
	if len(denied) != 1 {
		t.Fatalf("denied open events: %v", denied)
	}
	check(denied[0], "session.open", "denied", "mallory", "permission_denied")
	if denied[0]["target"] != "service/worker" || denied[0]["sessionId"] != nil {
		t.Errorf("denied event %v", denied[0])
	}
	// A lookup of an unknown session is recorded as a failure.
	e.do(http.MethodGet, "/v1/tenants/demo/sessions/ses_missing", alice, nil)
	if evs := e.auditFor("ses_missing", "session.get"); len(evs) != 1 || evs[0]["outcome"] != "failure" || evs[0]["code"] != "not_found" {
		t.Errorf("failed get: %v", evs)
	}
	// Audit needs an admin token.
	if r := e.do(http.MethodGet, "/v1/tenants/demo/audit", alice, nil); r.Status != 403 {
		t.Errorf("audit without admin: %d", r.Status)
	}
}

// TestNoSecretsInLogs captures every log line of a busy gateway and looks
// for any token, connect token or signed URL in it.
func TestNoSecretsInLogs(t *testing.T) {
	e := newEnv(t, envOptions{})
	alice := e.alice()
	m := e.mustOpen(alice, workerOpen("stdio", "files"))
	id := sessionID(m)
	secrets := []string{alice}
	var urls []string
	for _, u := range field(m, "status", "connect").(map[string]any) {
		urls = append(urls, u.(string))
		pu, _ := url.Parse(u.(string))
		secrets = append(secrets, pu.Query().Get("token"))
	}
	e.do(http.MethodPost, "/v1/tenants/demo/sessions/"+id+"/connect", alice, nil)
	e.do(http.MethodGet, "/v1/tenants/demo/sessions?pageToken=bad", alice, nil)
	e.open("garbage."+alice, workerOpen())
	e.do(http.MethodPost, "/v1/tenants/demo/sessions/"+id+"/close", alice, nil)
	// A connect URL used as a request path (with its token) must not be
	// logged with its query either.
	u := field(m, "status", "connect").(map[string]any)["stdio"].(string)
	e.do(http.MethodGet, strings.TrimPrefix(u, "ws://"+strings.TrimPrefix(e.URL, "http://")), "", nil)
	e.do(http.MethodGet, "/v1/tenants/demo/audit", e.admin(), nil)

	logs := e.logs.String()
	if !strings.Contains(logs, `"action":"session.open"`) || !strings.Contains(logs, id) {
		t.Fatalf("logs do not hold the audit events; the test would prove nothing:\n%s", logs)
	}
	for _, u := range urls {
		if strings.Contains(logs, u) || strings.Contains(logs, "token=") {
			t.Fatalf("log holds a signed URL:\n%s", logs)
		}
	}
	for _, s := range secrets {
		// Any 24-byte piece of a secret is enough to count as a leak.
		for i := 0; i+24 <= len(s); i += 24 {
			if strings.Contains(logs, s[i:i+24]) {
				t.Fatalf("log holds part of a secret (%q…):\n%s", s[i:i+24], logs)
			}
		}
	}
}
