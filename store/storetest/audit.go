package storetest

import (
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nimbus/gateway/lease"
)

func testAudit(t *testing.T, st Stores) {
	ctx := t.Context()
	full := lease.Event{
		ID: lease.NewEventID(), Time: t0, TenantID: "demo", Principal: "alice",
		Action: lease.ActionOpen, Outcome: lease.Denied, SessionID: "", Target: "service/worker",
		Code: "permission_denied", RequestID: "req-9", RemoteAddr: "[2001:db8::1]:443",
	}
	if err := st.Sessions.AppendAudit(ctx, full); err != nil {
		t.Fatal(err)
	}
	if err := st.Sessions.AppendAudit(ctx); err != nil {
		t.Fatalf("AppendAudit of nothing: %v", err)
	}
	evs := allAudit(t, st, lease.AuditQuery{TenantID: "demo"})
	if len(evs) != 1 || !reflect.DeepEqual(evs[0], full) {
		t.Fatalf("ListAudit = %+v, want [%+v]", evs, full)
	}

	// The open event of CreateSession and the close event of
	// CloseSession land in the same trail.
	s := newSession("demo", sid(1), t0.Add(time.Second), time.Hour)
	create(t, st, s)
	closeEv := event("demo", s.ID, lease.ActionClose, t0.Add(2*time.Second))
	if _, err := st.Sessions.CloseSession(ctx, lease.CloseRequest{TenantID: "demo", ID: s.ID, At: closeEv.Time}, closeEv); err != nil {
		t.Fatal(err)
	}
	if err := st.Sessions.AppendAudit(ctx,
		event("demo", s.ID, lease.ActionConnect, t0.Add(3*time.Second)),
		event("demo", sid(2), lease.ActionConnect, t0.Add(4*time.Second)),
		event("other", s.ID, lease.ActionConnect, t0.Add(5*time.Second)),
	); err != nil {
		t.Fatal(err)
	}
	actions := func(evs []lease.Event) []lease.Action {
		var out []lease.Action
		for _, ev := range evs {
			out = append(out, ev.Action)
		}
		return out
	}
	for _, tc := range []struct {
		q    lease.AuditQuery
		want []lease.Action
	}{
		{lease.AuditQuery{TenantID: "demo"}, []lease.Action{lease.ActionConnect, lease.ActionConnect, lease.ActionClose, lease.ActionOpen, lease.ActionOpen}},
		{lease.AuditQuery{TenantID: "demo", SessionID: s.ID}, []lease.Action{lease.ActionConnect, lease.ActionClose, lease.ActionOpen}},
		{lease.AuditQuery{TenantID: "demo", Action: lease.ActionConnect}, []lease.Action{lease.ActionConnect, lease.ActionConnect}},
		{lease.AuditQuery{TenantID: "demo", SessionID: s.ID, Action: lease.ActionClose}, []lease.Action{lease.ActionClose}},
		{lease.AuditQuery{TenantID: "other"}, []lease.Action{lease.ActionConnect}},
		{lease.AuditQuery{TenantID: "nobody"}, nil},
	} {
		got := allAudit(t, st, tc.q)
		if !slices.Equal(actions(got), tc.want) {
			t.Errorf("ListAudit(%+v) = %v, want %v", tc.q, actions(got), tc.want)
		}
		for _, ev := range got {
			if ev.TenantID != tc.q.TenantID || (tc.q.SessionID != "" && ev.SessionID != tc.q.SessionID) {
				t.Errorf("ListAudit(%+v) returned %+v", tc.q, ev)
			}
		}
	}
	if got := allAudit(t, st, lease.AuditQuery{TenantID: "demo", SessionID: s.ID}); got[1] != closeEv {
		t.Errorf("close event = %+v, want %+v", got[1], closeEv)
	}
}

func testAuditPaging(t *testing.T, st Stores) {
	// 11 events over 3 distinct times, in several appends: newest first,
	// equal times by id descending, 4 pages of 3 with no gap or repeat.
	var want []lease.Event
	for i := range 11 {
		ev := event("demo", sid(i%2), lease.ActionConnect, t0.Add(time.Duration(i/4)*time.Second))
		if err := st.Sessions.AppendAudit(t.Context(), ev); err != nil {
			t.Fatal(err)
		}
		want = append(want, ev)
	}
	slices.SortFunc(want, func(a, b lease.Event) int {
		if c := b.Time.Compare(a.Time); c != 0 {
			return c
		}
		return strings.Compare(b.ID, a.ID)
	})
	var got []lease.Event
	q := lease.AuditQuery{TenantID: "demo", PageSize: 3}
	pages := 0
	for {
		page, next, err := st.Sessions.ListAudit(t.Context(), q)
		if err != nil {
			t.Fatal(err)
		}
		pages++
		got = append(got, page...)
		if next == nil {
			break
		}
		if len(page) != 3 {
			t.Fatalf("page %d: %d events and a next cursor", pages, len(page))
		}
		q.After = next
	}
	if pages != 4 || !reflect.DeepEqual(got, want) {
		t.Errorf("%d pages, events:\n%+v\nwant\n%+v", pages, got, want)
	}
	// Filtered paging walks only the filter's events.
	odd := allAudit(t, st, lease.AuditQuery{TenantID: "demo", SessionID: sid(1), PageSize: 2})
	if len(odd) != 5 {
		t.Errorf("session %s: %d events over pages of 2, want 5", sid(1), len(odd))
	}
}
