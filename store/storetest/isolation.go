package storetest

import (
	"reflect"
	"testing"
	"time"

	"github.com/nimbus/gateway/lease"
	"github.com/nimbus/gateway/problem"
	"github.com/nimbus/gateway/targets"
)

func testTenantIsolation(t *testing.T, st Stores) {
	ctx := t.Context()
	a := newSession("a", sid(1), t0, time.Hour)
	b := newSession("b", sid(2), t0, time.Hour)
	create(t, st, a)
	create(t, st, b)
	if got := ids(allSessions(t, st, "a", "", t0, 0)); len(got) != 1 || got[0] != a.ID {
		t.Errorf("tenant a lists %v", got)
	}
	if n, _ := st.Sessions.CountOpen(ctx, "a", t0); n != 1 {
		t.Errorf("CountOpen(a) = %d, want 1", n)
	}
	_, err := st.Sessions.GetSession(ctx, "a", b.ID)
	wantCode(t, err, problem.NotFound)
	_, err = st.Sessions.CloseSession(ctx, lease.CloseRequest{TenantID: "a", ID: b.ID, At: t0}, event("a", b.ID, lease.ActionClose, t0))
	wantCode(t, err, problem.NotFound)
	if ok, err := st.Sessions.ExpireSession(ctx, "a", b.ID, t0.Add(2*time.Hour), event("a", b.ID, lease.ActionExpire, t0)); ok || err != nil {
		t.Errorf("tenant a expired b's session: %v, %v", ok, err)
	}
	if got, _ := st.Sessions.GetSession(ctx, "b", b.ID); got.State != lease.Open {
		t.Errorf("b's session after a's attempts: %+v", got)
	}
	if evs := allAudit(t, st, lease.AuditQuery{TenantID: "a"}); len(evs) != 1 || evs[0].SessionID != a.ID {
		t.Errorf("tenant a's audit = %+v", evs)
	}

	if _, _, err := st.Catalog.PutService(ctx, targets.Service{TenantID: "b", Name: "svc", Kind: targets.KindBuiltin}); err != nil {
		t.Fatal(err)
	}
	// Same name in another tenant is a different service, generation 1.
	if saved, _, err := st.Catalog.PutService(ctx, targets.Service{TenantID: "a", Name: "svc", Kind: targets.KindExternal}); err != nil || saved.Generation != 1 {
		t.Errorf("PutService(a/svc) = %+v, %v", saved, err)
	}
	if got, err := st.Catalog.GetService(ctx, "b", "svc"); err != nil || got.Kind != targets.KindBuiltin {
		t.Errorf("GetService(b/svc) = %+v, %v", got, err)
	}
	if _, err := st.Catalog.CreateSandbox(ctx, targets.Sandbox{TenantID: "b", ID: "sbx", Command: []string{"x"}}); err != nil {
		t.Fatal(err)
	}
	if sb, err := st.Catalog.CreateSandbox(ctx, targets.Sandbox{TenantID: "a", ID: "sbx", Command: []string{"x"}}); err != nil || sb.Generation != 1 {
		t.Errorf("CreateSandbox(a/sbx) next to b/sbx = %+v, %v", sb, err)
	}
}

func testReopen(t *testing.T, st Stores) {
	if st.Reopen == nil {
		t.Skip("implementation cannot reopen")
	}
	ctx := t.Context()
	open := newSession("demo", sid(1), t0, time.Hour)
	closed := newSession("demo", sid(2), t0, time.Hour)
	create(t, st, open)
	create(t, st, closed)
	closedS, err := st.Sessions.CloseSession(ctx, lease.CloseRequest{TenantID: "demo", ID: closed.ID, Reason: "bye", By: "bob", At: t0.Add(time.Second)},
		event("demo", closed.ID, lease.ActionClose, t0.Add(time.Second)))
	if err != nil {
		t.Fatal(err)
	}
	svc, _, err := st.Catalog.PutService(ctx, targets.Service{TenantID: "demo", Name: "w", Kind: targets.KindSandbox, Sandbox: "sbx", Dynamic: true})
	if err != nil {
		t.Fatal(err)
	}
	sb, err := st.Catalog.CreateSandbox(ctx, targets.Sandbox{TenantID: "demo", ID: "sbx", State: targets.Ready, Command: []string{"sh"}, Env: []string{}})
	if err != nil {
		t.Fatal(err)
	}
	trail := allAudit(t, st, lease.AuditQuery{TenantID: "demo"})

	st = st.Reopen(t)
	for _, want := range []*lease.Session{open, closedS} {
		got, err := st.Sessions.GetSession(ctx, "demo", want.ID)
		if err != nil || !reflect.DeepEqual(got, want) {
			t.Errorf("after reopen GetSession = %+v, %v; want %+v", got, err, want)
		}
	}
	if got, err := st.Catalog.GetService(ctx, "demo", "w"); err != nil || !reflect.DeepEqual(got, svc) {
		t.Errorf("after reopen GetService = %+v, %v; want %+v", got, err, svc)
	}
	if got, err := st.Catalog.GetSandbox(ctx, "demo", "sbx"); err != nil || !reflect.DeepEqual(got, sb) {
		t.Errorf("after reopen GetSandbox = %+v, %v; want %+v", got, err, sb)
	}
	if got := allAudit(t, st, lease.AuditQuery{TenantID: "demo"}); !reflect.DeepEqual(got, trail) {
		t.Errorf("after reopen audit = %+v\nwant %+v", got, trail)
	}
	// And it still writes.
	create(t, st, newSession("demo", sid(3), t0, time.Hour))
}
