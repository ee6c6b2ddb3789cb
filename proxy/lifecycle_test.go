package proxy_test

import (
	"fmt"
	"net/http"
	"testing"
	"time"
)

func TestCloseIdempotent(t *testing.T) {
	e := newEnv(t, envOptions{})
	alice := e.alice()
	id := sessionID(e.mustOpen(alice, workerOpen()))
	path := "/v1/tenants/demo/sessions/" + id + "/close"
	r := e.do(http.MethodPost, path, alice, map[string]string{"reason": "done"})
	m := r.JSON(t)
	if r.Status != 200 || field(m, "status", "state") != "closed" || field(m, "status", "closeReason") != "done" ||
		field(m, "status", "closedBy") != "alice" || field(m, "status", "closedAt") == nil {
		t.Fatalf("close: %d %s", r.Status, r.Body)
	}
	again := e.do(http.MethodPost, path, alice, map[string]string{"reason": "second"})
	if again.Status != 200 || string(again.Body) != string(r.Body) {
		t.Fatalf("second close changed the session:\n%s\n%s", r.Body, again.Body)
	}
	// A closed session cannot get connect URLs.
	c := e.do(http.MethodPost, "/v1/tenants/demo/sessions/"+id+"/connect", alice, nil)
	if c.Status != 409 || c.Code(t) != "session_not_open" {
		t.Fatalf("connect after close: %d %s", c.Status, c.Body)
	}
}

func TestCloseErrors(t *testing.T) {
	e := newEnv(t, envOptions{})
	alice := e.alice()
	id := sessionID(e.mustOpen(alice, workerOpen()))
	path := "/v1/tenants/demo/sessions/" + id + "/close"
	// Close needs the same grant as opening.
	other := e.token("demo", "eve", []string{"pg"}, nil, false)
	if r := e.do(http.MethodPost, path, other, nil); r.Status != 403 || r.Code(t) != "permission_denied" {
		t.Fatalf("close without grant: %d %s", r.Status, r.Body)
	}
	if r := e.do(http.MethodPost, "/v1/tenants/demo/sessions/ses_nope/close", alice, nil); r.Status != 404 {
		t.Fatalf("close unknown: %d %s", r.Status, r.Body)
	}
	if r := e.do(http.MethodPost, path, alice, `{"reason": 5}`); r.Code(t) != "invalid_argument" {
		t.Fatalf("bad reason: %s", r.Body)
	}
	if r := e.do(http.MethodPost, path, alice, map[string]string{"reason": string(make([]byte, 101))}); r.Code(t) != "invalid_argument" {
		t.Fatalf("long reason: %s", r.Body)
	}
	// An empty body closes with the default reason.
	if r := e.do(http.MethodPost, path, alice, nil); r.Status != 200 || field(r.JSON(t), "status", "closeReason") != "closed" {
		t.Fatalf("empty body: %d %s", r.Status, r.Body)
	}
}

// TestExpiredAtRead: a session past expiresAt reads as expired in get and
// list at once, before any background job ran (the expirer is off here),
// and cannot be closed.
func TestExpiredAtRead(t *testing.T) {
	e := newEnv(t, envOptions{noExpirer: true})
	alice := e.alice()
	b := workerOpen()
	b["requestedTtlMs"] = 60000
	id := sessionID(e.mustOpen(alice, b))
	e.clock.Advance(59 * time.Second)
	if st := field(e.do(http.MethodGet, "/v1/tenants/demo/sessions/"+id, alice, nil).JSON(t), "status", "state"); st != "open" {
		t.Fatalf("before expiry: %v", st)
	}
	e.clock.Advance(time.Second)
	if st := field(e.do(http.MethodGet, "/v1/tenants/demo/sessions/"+id, alice, nil).JSON(t), "status", "state"); st != "expired" {
		t.Fatalf("at expiry: %v", st)
	}
	list := func(state string) int {
		items, _ := e.do(http.MethodGet, "/v1/tenants/demo/sessions?state="+state, alice, nil).JSON(t)["items"].([]any)
		return len(items)
	}
	if list("open") != 0 || list("expired") != 1 {
		t.Fatalf("list: open %d expired %d", list("open"), list("expired"))
	}
	r := e.do(http.MethodPost, "/v1/tenants/demo/sessions/"+id+"/close", alice, map[string]string{"reason": "late"})
	if r.Status != 409 || r.Code(t) != "session_not_open" || field(r.JSON(t), "details", "state") != "expired" {
		t.Fatalf("close expired: %d %s", r.Status, r.Body)
	}
	if r := e.do(http.MethodPost, "/v1/tenants/demo/sessions/"+id+"/connect", alice, nil); r.Code(t) != "session_not_open" {
		t.Fatalf("connect URLs for expired: %s", r.Body)
	}
}

// TestExpirerRecords: the expirer records a real expiry (state expired in
// the store, with its audit event) shortly after expiresAt.
func TestExpirerRecords(t *testing.T) {
	e := newEnv(t, envOptions{})
	alice := e.alice()
	b := workerOpen()
	b["requestedTtlMs"] = 1000
	id := sessionID(e.mustOpen(alice, b))
	deadline := time.Now().Add(5 * time.Second)
	for {
		s, err := e.db.GetSession(t.Context(), "demo", id)
		if err != nil {
			t.Fatal(err)
		}
		if s.State == "expired" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("expiry not recorded 4 s after expiresAt (state %s)", s.State)
		}
		time.Sleep(20 * time.Millisecond)
	}
	evs := e.auditFor(id, "session.expire")
	if len(evs) != 1 || evs[0]["principal"] != "system:gateway" {
		t.Fatalf("expire events: %v", evs)
	}
}

func TestListPagination(t *testing.T) {
	e := newEnv(t, envOptions{})
	alice := e.alice()
	var ids []string
	for i := 0; i < 23; i++ {
		ids = append(ids, sessionID(e.mustOpen(alice, workerOpen())))
	}
	// Close a few so the state filter has something to filter.
	for _, id := range ids[:5] {
		e.do(http.MethodPost, "/v1/tenants/demo/sessions/"+id+"/close", alice, nil)
	}
	// collect pages through a listing and checks it is newest first.
	collect := func(state string, size int) ([]string, int) {
		var got []string
		pages := 0
		token := ""
		last := ""
		for pages < 50 {
			q := fmt.Sprintf("/v1/tenants/demo/sessions?pageSize=%d&state=%s&pageToken=%s", size, state, token)
			m := e.do(http.MethodGet, q, alice, nil).JSON(t)
			pages++
			for _, it := range m["items"].([]any) {
				item := it.(map[string]any)
				key := field(item, "metadata", "createdAt").(string) + sessionID(item)
				if last != "" && key >= last {
					t.Fatalf("listing is not newest first: %s after %s", key, last)
				}
				last = key
				got = append(got, sessionID(item))
			}
			next, _ := m["nextPageToken"].(string)
			if next == "" {
				break
			}
			token = next
		}
		return got, pages
	}
	all, pages := collect("", 5)
	if len(all) != 23 || pages != 5 {
		t.Fatalf("all: %d items in %d pages", len(all), pages)
	}
	if !sameSet(all, ids) {
		t.Fatalf("listing %v is not the opened sessions %v", all, ids)
	}
	open, _ := collect("open", 4)
	closed, _ := collect("closed", 2)
	if len(open) != 18 || len(closed) != 5 {
		t.Fatalf("open %d closed %d", len(open), len(closed))
	}
	// Sessions opened while paging do not shift the pages already read.
	first := e.do(http.MethodGet, "/v1/tenants/demo/sessions?pageSize=10", alice, nil).JSON(t)
	e.mustOpen(alice, workerOpen())
	second := e.do(http.MethodGet, "/v1/tenants/demo/sessions?pageSize=10&pageToken="+first["nextPageToken"].(string), alice, nil).JSON(t)
	if got := sessionID(second["items"].([]any)[0].(map[string]any)); got != all[10] {
		t.Fatalf("page 2 starts at %s, want %s", got, all[10])
	}
	// Bad inputs.
	for _, q := range []string{"state=bogus", "pageSize=0", "pageSize=501", "pageSize=x", "pageToken=garbage",
		"state=closed&pageToken=" + first["nextPageToken"].(string)} {
		if r := e.do(http.MethodGet, "/v1/tenants/demo/sessions?"+q, alice, nil); r.Status != 400 || r.Code(t) != "invalid_argument" {
			t.Errorf("%s: %d %s", q, r.Status, r.Body)
		}
	}
}

func sameSet(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	seen := map[string]int{}
	for _, x := range a {
		seen[x]++
	}
	for _, x := range b {
		seen[x]--
	}
	for _, n := range seen {
		if n != 0 {
			return false
		}
	}
	return true
}
