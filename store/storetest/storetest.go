// Package storetest is the conformance suite of lease.Store and
// targets.Store: every implementation (SQLite today, PostgreSQL next) runs
// Run against a fresh database and must pass it unchanged.
package storetest

import (
	"fmt"
	"testing"
	"time"

	"github.com/nimbus/gateway/lease"
	"github.com/nimbus/gateway/problem"
	"github.com/nimbus/gateway/targets"
)

// Stores is one implementation under test.
type Stores struct {
	Sessions lease.Store
	Catalog  targets.Store
	// Reopen closes the stores and opens new ones on the same data, to
	// check persistence; nil when the implementation cannot (the test is
	// skipped).
	Reopen func(t *testing.T) Stores
}

// Run runs the suite. open must return stores over an empty database, of
// their own (subtests run in parallel, and some queries span tenants), and
// close them in t.Cleanup.
func Run(t *testing.T, open func(t *testing.T) Stores) {
	tests := []struct {
		name string
		fn   func(t *testing.T, st Stores)
	}{
		{"SessionRoundTrip", testSessionRoundTrip},
		{"GetSessionNotFound", testGetSessionNotFound},
		{"Precondition", testPrecondition},
		{"ListPagination", testListPagination},
		{"ListPageBoundary", testListPageBoundary},
		{"ListStateFilter", testListStateFilter},
		{"CloseSession", testCloseSession},
		{"CloseExpired", testCloseExpired},
		{"ExpireSession", testExpireSession},
		{"DueSessions", testDueSessions},
		{"CountOpen", testCountOpen},
		{"Audit", testAudit},
		{"AuditPaging", testAuditPaging},
		{"Services", testServices},
		{"Sandboxes", testSandboxes},
		{"SandboxUIDs", testSandboxUIDs},
		{"SandboxLimits", testSandboxLimits},
		{"SandboxExit", testSandboxExit},
		{"TenantIsolation", testTenantIsolation},
		{"ConcurrentCreate", testConcurrentCreate},
		{"Reopen", testReopen},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			tc.fn(t, open(t))
		})
	}
}

// t0 is a fixed base time, in ms precision like everything stored.
var t0 = lease.Millis(time.Date(2030, 1, 2, 3, 4, 5, 6_000_000, time.UTC))

// newSession returns an open session of a service target, created at
// created and expiring ttl later.
func newSession(tenant, id string, created time.Time, ttl time.Duration) *lease.Session {
	req := ttl.Milliseconds()
	return &lease.Session{
		ID:             id,
		TenantID:       tenant,
		CreatedAt:      created,
		CreatedBy:      "alice",
		Target:         lease.Target{Service: &lease.ServiceRef{Name: "worker"}},
		Channels:       []lease.Channel{lease.Stdio, lease.Files},
		RequestedTTLMs: &req,
		TTL:            ttl,
		ExpiresAt:      created.Add(ttl),
		Snapshot:       lease.Snapshot{Service: "worker", Sandbox: "sbx-worker", Generation: 3, Backend: "local:42"},
		State:          lease.Open,
		Owner:          "replica-1",
	}
}

// event returns an audit event of action on sessionID at time at.
func event(tenant, sessionID string, action lease.Action, at time.Time) lease.Event {
	return lease.Event{
		ID:         lease.NewEventID(),
		Time:       at,
		TenantID:   tenant,
		Principal:  "alice",
		Action:     action,
		Outcome:    lease.Success,
		SessionID:  sessionID,
		Target:     "service/worker",
		RequestID:  "req-1",
		RemoteAddr: "192.0.2.1:5555",
	}
}

// create stores s with its open event, failing the test on error.
func create(t *testing.T, st Stores, s *lease.Session) {
	t.Helper()
	if err := st.Sessions.CreateSession(t.Context(), s, event(s.TenantID, s.ID, lease.ActionOpen, s.CreatedAt), nil); err != nil {
		t.Fatalf("CreateSession(%s): %v", s.ID, err)
	}
}

// wantCode fails unless err carries code.
func wantCode(t *testing.T, err error, code problem.Code) {
	t.Helper()
	if got := problem.CodeOf(err); got != code {
		t.Fatalf("error = %v (code %q), want code %q", err, got, code)
	}
}

// allSessions pages through every session of tenant in state.
func allSessions(t *testing.T, st Stores, tenant string, state lease.State, now time.Time, pageSize int) []*lease.Session {
	t.Helper()
	var out []*lease.Session
	var after *lease.Cursor
	for range 10_000 {
		page, next, err := st.Sessions.ListSessions(t.Context(), lease.ListQuery{
			TenantID: tenant, State: state, Now: now, PageSize: pageSize, After: after,
		})
		if err != nil {
			t.Fatalf("ListSessions: %v", err)
		}
		out = append(out, page...)
		if next == nil {
			return out
		}
		after = next
	}
	t.Fatal("ListSessions: cursor never ended")
	return nil
}

// allAudit pages through every audit event matching q.
func allAudit(t *testing.T, st Stores, q lease.AuditQuery) []lease.Event {
	t.Helper()
	var out []lease.Event
	for range 10_000 {
		page, next, err := st.Sessions.ListAudit(t.Context(), q)
		if err != nil {
			t.Fatalf("ListAudit: %v", err)
		}
		out = append(out, page...)
		if next == nil {
			return out
		}
		q.After = next
	}
	t.Fatal("ListAudit: cursor never ended")
	return nil
}

func ids(ss []*lease.Session) []string {
	out := make([]string, len(ss))
	for i, s := range ss {
		out[i] = s.ID
	}
	return out
}

func sid(i int) string { return fmt.Sprintf("ses_%04d", i) }
