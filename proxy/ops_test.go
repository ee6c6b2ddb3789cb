package proxy_test

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nimbus/gateway/lease"
	"github.com/nimbus/gateway/problem"
	"github.com/nimbus/gateway/proxy"
)

// scrape reads the metrics as the metrics listener serves them.
func (e *env) scrape() string {
	e.t.Helper()
	rec := httptest.NewRecorder()
	e.srv.MetricsHandler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/metrics", nil))
	if rec.Code != http.StatusOK {
		e.t.Fatalf("scrape: %d %s", rec.Code, rec.Body)
	}
	return rec.Body.String()
}

// TestMetricsNotOnAPI (issue 12): /metrics needs no token, so the API
// handler does not serve it unless asked (MetricsOnAPI), and tenant ids
// appear in no series unless asked (MetricsTenantLabels).
func TestMetricsNotOnAPI(t *testing.T) {
	e := newEnv(t, envOptions{})
	e.mustOpen(e.alice(), workerOpen())
	if r := e.do(http.MethodGet, "/metrics", "", nil); r.Status != http.StatusNotFound || r.Code(t) != "not_found" {
		t.Errorf("/metrics on the API handler: %d %s", r.Status, r.Body)
	}
	m := e.scrape()
	if !strings.Contains(m, "\nnimbus_sessions_open 1\n") {
		t.Errorf("metrics lack the total nimbus_sessions_open 1:\n%s", m)
	}
	for _, tenant := range []string{"demo", "acme"} {
		if strings.Contains(m, tenant) {
			t.Errorf("metrics name tenant %s without MetricsTenantLabels", tenant)
		}
	}
	rec := httptest.NewRecorder()
	e.srv.MetricsHandler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/v1/tenants/demo/sessions", nil))
	if rec.Code != http.StatusNotFound || !strings.HasPrefix(rec.Header().Get("Content-Type"), "application/problem+json") {
		t.Errorf("the metrics handler answers the API: %d %s", rec.Code, rec.Body)
	}

	labeled := newEnv(t, envOptions{mutate: func(o *proxy.Options) { o.MetricsTenantLabels, o.MetricsOnAPI = true, true }})
	labeled.mustOpen(labeled.alice(), workerOpen())
	r := labeled.do(http.MethodGet, "/metrics", "", nil)
	if r.Status != http.StatusOK || !strings.Contains(string(r.Body), `nimbus_sessions_open{tenant="demo"} 1`) {
		t.Errorf("with MetricsOnAPI and MetricsTenantLabels: %d, want nimbus_sessions_open{tenant=\"demo\"} 1 in:\n%s", r.Status, r.Body)
	}
}

// lossyAudit is a store whose AppendAudit fails while lose is set, as
// with the disk full (issue 12).
type lossyAudit struct {
	lease.Store
	lose atomic.Bool
}

func (l *lossyAudit) AppendAudit(ctx context.Context, evs ...lease.Event) error {
	if l.lose.Load() {
		return problem.New(problem.Unavailable, "store unavailable: database or disk is full")
	}
	return l.Store.AppendAudit(ctx, evs...)
}

// TestDeniedAuditLost (issue 12): a refused open whose audit event the
// store does not take is not answered as an ordinary refusal (403) but
// 503 unavailable; the loss is logged at error level and counted in
// nimbus_audit_write_failures_total. With the store taking events again,
// the same refusal is 403 and recorded.
func TestDeniedAuditLost(t *testing.T) {
	var st *lossyAudit
	e := newEnv(t, envOptions{mutate: func(o *proxy.Options) {
		st = &lossyAudit{Store: o.Sessions}
		o.Sessions = st
	}})
	nope := map[string]any{"target": map[string]any{"service": map[string]any{"name": "nope"}}, "channels": []string{"stdio"}}
	st.lose.Store(true)
	if r := e.open(e.alice(), nope); r.Status != http.StatusServiceUnavailable || r.Code(t) != "unavailable" {
		t.Errorf("a refused open whose event is lost: %d %s, want 503 unavailable", r.Status, r.Body)
	}
	if !strings.Contains(e.logs.String(), `"level":"error"`) || !strings.Contains(e.logs.String(), "audit: storing a denied event failed") {
		t.Errorf("the lost event is not logged as an error:\n%s", e.logs.String())
	}
	if m := e.scrape(); !strings.Contains(m, `nimbus_audit_write_failures_total{action="session.open"} 1`) {
		t.Errorf("the lost event is not counted:\n%s", m)
	}
	st.lose.Store(false)
	if r := e.open(e.alice(), nope); r.Status != http.StatusForbidden || r.Code(t) != "permission_denied" {
		t.Errorf("a refused open, recorded: %d %s, want 403", r.Status, r.Body)
	}
	evs, _, err := e.db.ListAudit(context.Background(), lease.AuditQuery{TenantID: "demo", Action: lease.ActionOpen})
	if err != nil || len(evs) != 1 || evs[0].Outcome != lease.Denied {
		t.Errorf("audit after the recorded refusal: %+v %v, want one denied open", evs, err)
	}
}

// TestReadyzWritable (issue 12): /readyz fails, 503 unavailable with
// details.check, while Writable fails, though Ping succeeds; it is
// ready again once Writable succeeds and the last answer is a second
// old, and Writable runs once a second at most, however often /readyz is
// asked (it is unauthenticated).
func TestReadyzWritable(t *testing.T) {
	var fail atomic.Bool
	var probes atomic.Int32
	e := newEnv(t, envOptions{mutate: func(o *proxy.Options) {
		o.Writable = func(context.Context) error {
			probes.Add(1)
			if fail.Load() {
				return problem.New(problem.Unavailable, "store unavailable: database or disk is full")
			}
			return nil
		}
	}})
	fail.Store(true)
	r := e.do(http.MethodGet, "/readyz", "", nil)
	if r.Status != http.StatusServiceUnavailable || r.Code(t) != "unavailable" || field(r.JSON(t), "details", "check") != "store_write" {
		t.Fatalf("/readyz while the store cannot write: %d %s", r.Status, r.Body)
	}
	e.clock.Advance(0) // freeze the clock: the probe's answer ages only when told
	for range 20 {
		e.do(http.MethodGet, "/readyz", "", nil)
	}
	if n := probes.Load(); n > 2 {
		t.Errorf("21 /readyz ran %d write probes, want at most 2", n)
	}
	fail.Store(false)
	if r := e.do(http.MethodGet, "/readyz", "", nil); r.Status != http.StatusServiceUnavailable {
		t.Errorf("/readyz within a second of a failed probe: %d, want the failure kept", r.Status)
	}
	e.clock.Advance(time.Second)
	if r := e.do(http.MethodGet, "/readyz", "", nil); r.Status != http.StatusOK {
		t.Errorf("/readyz once the store writes again: %d %s", r.Status, r.Body)
	}
}
