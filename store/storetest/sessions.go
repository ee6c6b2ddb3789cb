package storetest

import (
	"reflect"
	"slices"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/nimbus/gateway/lease"
	"github.com/nimbus/gateway/problem"
	"github.com/nimbus/gateway/targets"
)

func testSessionRoundTrip(t *testing.T, st Stores) {
	ctx := t.Context()
	full := newSession("demo", sid(1), t0, 10*time.Minute)
	bare := &lease.Session{ // every optional field at its zero value
		ID:        sid(2),
		TenantID:  "demo",
		CreatedAt: t0.Add(time.Millisecond),
		Target:    lease.Target{Sandbox: &lease.SandboxRef{ID: "sbx-1"}},
		Channels:  []lease.Channel{},
		TTL:       15 * time.Minute,
		ExpiresAt: t0.Add(15*time.Minute + time.Millisecond),
		State:     lease.Open,
	}
	for _, want := range []*lease.Session{full, bare} {
		create(t, st, want)
		got, err := st.Sessions.GetSession(ctx, "demo", want.ID)
		if err != nil {
			t.Fatalf("GetSession: %v", err)
		}
		if !reflect.DeepEqual(got, want) {
			t.Errorf("GetSession =\n%+v\nwant\n%+v", got, want)
		}
	}

	closed, err := st.Sessions.CloseSession(ctx, lease.CloseRequest{
		TenantID: "demo", ID: full.ID, Reason: "done", By: "bob", At: t0.Add(time.Minute),
	}, event("demo", full.ID, lease.ActionClose, t0.Add(time.Minute)))
	if err != nil {
		t.Fatalf("CloseSession: %v", err)
	}
	got, err := st.Sessions.GetSession(ctx, "demo", full.ID)
	if err != nil {
		t.Fatalf("GetSession: %v", err)
	}
	if !reflect.DeepEqual(got, closed) {
		t.Errorf("GetSession after close =\n%+v\nCloseSession returned\n%+v", got, closed)
	}
	if got.State != lease.Closed || *got.CloseReason != "done" || *got.ClosedBy != "bob" || !got.ClosedAt.Equal(t0.Add(time.Minute)) || *got.ClosedAt != t0.Add(time.Minute) {
		t.Errorf("closed session = %+v", got)
	}
}

func testGetSessionNotFound(t *testing.T, st Stores) {
	create(t, st, newSession("demo", sid(1), t0, time.Hour))
	_, err := st.Sessions.GetSession(t.Context(), "demo", "ses_missing")
	wantCode(t, err, problem.NotFound)
	_, err = st.Sessions.GetSession(t.Context(), "other", sid(1))
	wantCode(t, err, problem.NotFound)
}

func testPrecondition(t *testing.T, st Stores) {
	ctx := t.Context()
	svc := targets.Service{TenantID: "demo", Name: "worker", Kind: targets.KindExternal, URL: "http://a", Dynamic: true}
	if _, _, err := st.Catalog.PutService(ctx, svc); err != nil {
		t.Fatal(err)
	}
	ok := newSession("demo", sid(1), t0, time.Hour)
	cond := &lease.Precondition{TenantID: "demo", Service: "worker", Generation: 1}
	if err := st.Sessions.CreateSession(ctx, ok, event("demo", ok.ID, lease.ActionOpen, t0), cond); err != nil {
		t.Fatalf("CreateSession with a holding precondition: %v", err)
	}

	svc.URL = "http://b"
	if saved, _, err := st.Catalog.PutService(ctx, svc); err != nil || saved.Generation != 2 {
		t.Fatalf("PutService = %+v, %v; want generation 2", saved, err)
	}
	before := len(allSessions(t, st, "demo", "", t0, 0))
	beforeAudit := len(allAudit(t, st, lease.AuditQuery{TenantID: "demo"}))
	for _, cond := range []*lease.Precondition{
		{TenantID: "demo", Service: "worker", Generation: 1},  // stale
		{TenantID: "demo", Service: "missing", Generation: 1}, // gone
		{TenantID: "other", Service: "worker", Generation: 2}, // another tenant's
		{TenantID: "demo", Service: "worker", Generation: 3},  // from the future
	} {
		s := newSession("demo", lease.NewID(), t0, time.Hour)
		err := st.Sessions.CreateSession(ctx, s, event("demo", s.ID, lease.ActionOpen, t0), cond)
		wantCode(t, err, problem.TargetChanged)
		if _, err := st.Sessions.GetSession(ctx, "demo", s.ID); problem.CodeOf(err) != problem.NotFound {
			t.Errorf("session of a failed precondition %+v was stored (err %v)", cond, err)
		}
	}
	if n := len(allSessions(t, st, "demo", "", t0, 0)); n != before {
		t.Errorf("sessions: %d after failed preconditions, %d before", n, before)
	}
	if n := len(allAudit(t, st, lease.AuditQuery{TenantID: "demo"})); n != beforeAudit {
		t.Errorf("audit events: %d after failed preconditions, %d before", n, beforeAudit)
	}
}

func testListPagination(t *testing.T, st Stores) {
	// 10 sessions over 4 distinct createdAt values: ties must break by id,
	// descending, and paging must neither skip nor repeat across them.
	var want []*lease.Session
	for i := range 10 {
		s := newSession("demo", sid(i), t0.Add(time.Duration(i/3)*time.Second), time.Hour)
		create(t, st, s)
		want = append(want, s)
	}
	sort.Slice(want, func(i, j int) bool {
		if !want[i].CreatedAt.Equal(want[j].CreatedAt) {
			return want[i].CreatedAt.After(want[j].CreatedAt)
		}
		return want[i].ID > want[j].ID
	})

	var got []*lease.Session
	var after *lease.Cursor
	pages := 0
	for {
		page, next, err := st.Sessions.ListSessions(t.Context(), lease.ListQuery{TenantID: "demo", PageSize: 3, After: after})
		if err != nil {
			t.Fatal(err)
		}
		pages++
		if next != nil && len(page) != 3 {
			t.Fatalf("page %d has %d items and a next cursor", pages, len(page))
		}
		got = append(got, page...)
		if next == nil {
			break
		}
		if last := page[len(page)-1]; next.ID != last.ID || !next.Time.Equal(last.CreatedAt) {
			t.Errorf("cursor %+v does not name the last item %s", next, last.ID)
		}
		after = next
	}
	if pages != 4 {
		t.Errorf("pages = %d, want 4", pages)
	}
	if !slices.Equal(ids(got), ids(want)) {
		t.Errorf("order = %v\nwant    %v", ids(got), ids(want))
	}
	if !reflect.DeepEqual(got, want) {
		t.Error("listed sessions differ from stored ones")
	}
}

func testListPageBoundary(t *testing.T, st Stores) {
	for i := range 6 {
		create(t, st, newSession("demo", sid(i), t0.Add(time.Duration(i)*time.Millisecond), time.Hour))
	}
	page, next, err := st.Sessions.ListSessions(t.Context(), lease.ListQuery{TenantID: "demo", PageSize: 3})
	if err != nil || len(page) != 3 || next == nil {
		t.Fatalf("first page: %d items, next %v, err %v", len(page), next, err)
	}
	page, next, err = st.Sessions.ListSessions(t.Context(), lease.ListQuery{TenantID: "demo", PageSize: 3, After: next})
	if err != nil || len(page) != 3 || next != nil {
		t.Fatalf("last full page: %d items, next %+v, err %v; want 3 items and no cursor", len(page), next, err)
	}
	page, next, err = st.Sessions.ListSessions(t.Context(), lease.ListQuery{TenantID: "empty"})
	if err != nil || len(page) != 0 || next != nil {
		t.Fatalf("empty tenant: %d items, next %+v, err %v", len(page), next, err)
	}
}

func testListStateFilter(t *testing.T, st Stores) {
	ctx := t.Context()
	now := t0.Add(time.Hour)
	open := newSession("demo", "ses_open", t0, 2*time.Hour)          // open at now
	due := newSession("demo", "ses_due", t0, time.Hour)              // expires exactly at now: expired
	lapsed := newSession("demo", "ses_lapsed", t0, 30*time.Minute)   // stored open, read expired
	expired := newSession("demo", "ses_expired", t0, 10*time.Minute) // recorded expired
	closed := newSession("demo", "ses_closed", t0, 2*time.Hour)
	for _, s := range []*lease.Session{open, due, lapsed, expired, closed} {
		create(t, st, s)
	}
	if ok, err := st.Sessions.ExpireSession(ctx, "demo", expired.ID, now, event("demo", expired.ID, lease.ActionExpire, now)); !ok || err != nil {
		t.Fatalf("ExpireSession = %v, %v", ok, err)
	}
	if _, err := st.Sessions.CloseSession(ctx, lease.CloseRequest{TenantID: "demo", ID: closed.ID, Reason: "r", By: "b", At: t0}, event("demo", closed.ID, lease.ActionClose, t0)); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		state lease.State
		want  []string
	}{
		{lease.Open, []string{"ses_open"}},
		{lease.Expired, []string{"ses_lapsed", "ses_expired", "ses_due"}},
		{lease.Closed, []string{"ses_closed"}},
		{"", []string{"ses_open", "ses_lapsed", "ses_expired", "ses_due", "ses_closed"}},
	} {
		got := ids(allSessions(t, st, "demo", tc.state, now, 2))
		want := slices.Clone(tc.want)
		sort.Sort(sort.Reverse(sort.StringSlice(want))) // equal createdAt: id descending
		if !slices.Equal(got, want) {
			t.Errorf("state %q at now: %v, want %v", tc.state, got, want)
		}
	}
	// Before anything lapsed, only the recorded states count.
	if got := ids(allSessions(t, st, "demo", lease.Open, t0.Add(time.Minute), 0)); !slices.Equal(got, []string{"ses_open", "ses_lapsed", "ses_due"}) {
		t.Errorf("open at t0+1m: %v, want the 3 stored open", got)
	}
}

func testCloseSession(t *testing.T, st Stores) {
	ctx := t.Context()
	s := newSession("demo", sid(1), t0, time.Hour)
	create(t, st, s)
	at := t0.Add(time.Minute)
	first, err := st.Sessions.CloseSession(ctx, lease.CloseRequest{TenantID: "demo", ID: s.ID, Reason: "done", By: "alice", At: at},
		event("demo", s.ID, lease.ActionClose, at))
	if err != nil {
		t.Fatal(err)
	}
	if first.State != lease.Closed || *first.CloseReason != "done" || *first.ClosedBy != "alice" || *first.ClosedAt != at {
		t.Fatalf("closed = %+v", first)
	}
	// Again, later, with another reason: unchanged, still audited.
	later := t0.Add(2 * time.Hour) // even past expiresAt: closed stays closed
	again, err := st.Sessions.CloseSession(ctx, lease.CloseRequest{TenantID: "demo", ID: s.ID, Reason: "again", By: "bob", At: later},
		event("demo", s.ID, lease.ActionClose, later))
	if err != nil {
		t.Fatalf("second close: %v", err)
	}
	if !reflect.DeepEqual(again, first) {
		t.Errorf("second close returned %+v, want the first close unchanged %+v", again, first)
	}
	evs := allAudit(t, st, lease.AuditQuery{TenantID: "demo", SessionID: s.ID, Action: lease.ActionClose})
	if len(evs) != 2 {
		t.Errorf("close events = %d, want 2", len(evs))
	}

	_, err = st.Sessions.CloseSession(ctx, lease.CloseRequest{TenantID: "demo", ID: "ses_missing", At: at}, event("demo", "ses_missing", lease.ActionClose, at))
	wantCode(t, err, problem.NotFound)
	_, err = st.Sessions.CloseSession(ctx, lease.CloseRequest{TenantID: "other", ID: s.ID, At: at}, event("other", s.ID, lease.ActionClose, at))
	wantCode(t, err, problem.NotFound)
}

func testCloseExpired(t *testing.T, st Stores) {
	ctx := t.Context()
	lapsed := newSession("demo", sid(1), t0, time.Minute)
	recorded := newSession("demo", sid(2), t0, time.Minute)
	create(t, st, lapsed)
	create(t, st, recorded)
	end := t0.Add(time.Minute)
	if ok, err := st.Sessions.ExpireSession(ctx, "demo", recorded.ID, end, event("demo", recorded.ID, lease.ActionExpire, end)); !ok || err != nil {
		t.Fatalf("ExpireSession = %v, %v", ok, err)
	}
	for _, s := range []*lease.Session{lapsed, recorded} {
		// At exactly expiresAt the session is expired (Session.StateAt).
		_, err := st.Sessions.CloseSession(ctx, lease.CloseRequest{TenantID: "demo", ID: s.ID, Reason: "late", By: "a", At: end},
			event("demo", s.ID, lease.ActionClose, end))
		wantCode(t, err, problem.SessionNotOpen)
		if st := problem.From(err).Details["state"]; st != "expired" {
			t.Errorf("details.state = %v, want expired", st)
		}
		got, err := st.Sessions.GetSession(ctx, "demo", s.ID)
		if err != nil || got.ClosedAt != nil || got.CloseReason != nil {
			t.Errorf("session after refused close = %+v, %v", got, err)
		}
		if evs := allAudit(t, st, lease.AuditQuery{TenantID: "demo", SessionID: s.ID, Action: lease.ActionClose}); len(evs) != 0 {
			t.Errorf("refused close recorded %d events", len(evs))
		}
	}
}

func testExpireSession(t *testing.T, st Stores) {
	ctx := t.Context()
	s := newSession("demo", sid(1), t0, time.Minute)
	closed := newSession("demo", sid(2), t0, time.Minute)
	create(t, st, s)
	create(t, st, closed)
	if _, err := st.Sessions.CloseSession(ctx, lease.CloseRequest{TenantID: "demo", ID: closed.ID, At: t0}, event("demo", closed.ID, lease.ActionClose, t0)); err != nil {
		t.Fatal(err)
	}
	expire := func(id string, at time.Time) bool {
		t.Helper()
		ok, err := st.Sessions.ExpireSession(ctx, "demo", id, at, event("demo", id, lease.ActionExpire, at))
		if err != nil {
			t.Fatalf("ExpireSession(%s): %v", id, err)
		}
		return ok
	}
	if expire(s.ID, s.ExpiresAt.Add(-time.Millisecond)) {
		t.Error("expired a session not yet due")
	}
	if !expire(s.ID, s.ExpiresAt) {
		t.Error("did not expire a session due exactly now")
	}
	if expire(s.ID, s.ExpiresAt.Add(time.Hour)) {
		t.Error("expired a session twice")
	}
	if expire(closed.ID, closed.ExpiresAt.Add(time.Hour)) {
		t.Error("expired a closed session")
	}
	if ok, err := st.Sessions.ExpireSession(ctx, "other", sid(3), t0.Add(time.Hour), event("other", sid(3), lease.ActionExpire, t0)); ok || err != nil {
		t.Errorf("ExpireSession of an unknown session = %v, %v; want false, nil", ok, err)
	}
	got, err := st.Sessions.GetSession(ctx, "demo", s.ID)
	if err != nil || got.State != lease.Expired {
		t.Fatalf("after expiry: %+v, %v", got, err)
	}
	if n := len(allAudit(t, st, lease.AuditQuery{TenantID: "demo", Action: lease.ActionExpire})); n != 1 {
		t.Errorf("expire events = %d, want exactly 1", n)
	}
}

func testDueSessions(t *testing.T, st Stores) {
	ctx := t.Context()
	ttls := []time.Duration{5 * time.Minute, time.Minute, 3 * time.Minute, 2 * time.Minute, 4 * time.Minute}
	for i, ttl := range ttls {
		create(t, st, newSession([]string{"a", "b"}[i%2], sid(i), t0, ttl))
	}
	create(t, st, newSession("a", "ses_closed", t0, 30*time.Second))
	create(t, st, newSession("a", "ses_expired", t0, 40*time.Second))
	if _, err := st.Sessions.CloseSession(ctx, lease.CloseRequest{TenantID: "a", ID: "ses_closed", At: t0}, event("a", "ses_closed", lease.ActionClose, t0)); err != nil {
		t.Fatal(err)
	}
	if ok, err := st.Sessions.ExpireSession(ctx, "a", "ses_expired", t0.Add(time.Hour), event("a", "ses_expired", lease.ActionExpire, t0)); !ok || err != nil {
		t.Fatal(ok, err)
	}
	due, err := st.Sessions.DueSessions(ctx, 3)
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{sid(1), sid(3), sid(2)}; !slices.Equal(ids(due), want) {
		t.Errorf("DueSessions(3) = %v, want %v", ids(due), want)
	}
	all, err := st.Sessions.DueSessions(ctx, 100)
	if err != nil || len(all) != 5 {
		t.Errorf("DueSessions(100) = %v, %v; want the 5 open", ids(all), err)
	}
}

func testCountOpen(t *testing.T, st Stores) {
	ctx := t.Context()
	for i := range 4 {
		create(t, st, newSession("demo", sid(i), t0, time.Duration(i+1)*time.Minute))
	}
	create(t, st, newSession("other", "ses_other", t0, time.Hour))
	if _, err := st.Sessions.CloseSession(ctx, lease.CloseRequest{TenantID: "demo", ID: sid(3), At: t0}, event("demo", sid(3), lease.ActionClose, t0)); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		now  time.Time
		want int
	}{
		{t0, 3},
		{t0.Add(time.Minute - time.Millisecond), 3},
		{t0.Add(time.Minute), 2}, // the first expires exactly now
		{t0.Add(3 * time.Minute), 0},
	} {
		n, err := st.Sessions.CountOpen(ctx, "demo", tc.now)
		if err != nil || n != tc.want {
			t.Errorf("CountOpen at %v = %d, %v; want %d", tc.now.Sub(t0), n, err, tc.want)
		}
		all, err := st.Sessions.OpenByTenant(ctx, tc.now)
		if err != nil || all["demo"] != tc.want || all["other"] != 1 || len(all) != 1+min(tc.want, 1) {
			t.Errorf("OpenByTenant at %v = %v, %v; want demo %d, other 1", tc.now.Sub(t0), all, err, tc.want)
		}
	}
}

func testConcurrentCreate(t *testing.T, st Stores) {
	const n = 50
	var wg sync.WaitGroup
	start := make(chan struct{})
	errs := make([]error, n)
	for i := range n {
		wg.Go(func() {
			<-start
			s := newSession("demo", sid(i), t0.Add(time.Duration(i)*time.Millisecond), time.Hour)
			errs[i] = st.Sessions.CreateSession(t.Context(), s, event("demo", s.ID, lease.ActionOpen, s.CreatedAt), nil)
		})
	}
	close(start)
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("CreateSession %d: %v", i, err)
		}
	}
	if got := allSessions(t, st, "demo", "", t0, 0); len(got) != n {
		t.Errorf("stored %d sessions, want %d", len(got), n)
	}
	for i := range n {
		if evs := allAudit(t, st, lease.AuditQuery{TenantID: "demo", SessionID: sid(i)}); len(evs) != 1 || evs[0].Action != lease.ActionOpen {
			t.Errorf("session %d: audit %+v, want one open event", i, evs)
		}
	}
}
