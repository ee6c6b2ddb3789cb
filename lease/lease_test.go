package lease_test

import (
	"strings"
	"testing"
	"time"

	"github.com/nimbus/gateway/lease"
	"github.com/nimbus/gateway/problem"
)

func ptr(v int64) *int64 { return &v }

func TestTTLPolicy(t *testing.T) {
	t.Parallel()
	def := lease.TTLPolicy{}
	cases := []struct {
		name   string
		p      lease.TTLPolicy
		req    *int64
		want   time.Duration
		errors bool
	}{
		{"absent", def, nil, 15 * time.Minute, false},
		{"minimum", def, ptr(1000), time.Second, false},
		{"below minimum", def, ptr(999), 0, true},
		{"zero", def, ptr(0), 0, true},
		{"negative", def, ptr(-5), 0, true},
		{"at cap", def, ptr(3600000), time.Hour, false},
		{"over cap", def, ptr(3600001), time.Hour, false},
		{"overflowing duration", def, ptr(1 << 62), time.Hour, false},
		{"custom default", lease.TTLPolicy{Default: time.Minute}, nil, time.Minute, false},
		{"default above custom cap", lease.TTLPolicy{Default: time.Hour, Max: time.Minute}, nil, time.Minute, false},
	}
	for _, c := range cases {
		got, err := c.p.Grant(c.req)
		if c.errors {
			if problem.CodeOf(err) != problem.InvalidArgument {
				t.Errorf("%s: err %v", c.name, err)
			}
			continue
		}
		if err != nil || got != c.want {
			t.Errorf("%s: got %v %v, want %v", c.name, got, err, c.want)
		}
	}
}

func TestStateAt(t *testing.T) {
	t.Parallel()
	now := time.Now()
	s := &lease.Session{State: lease.Open, ExpiresAt: now}
	if s.StateAt(now.Add(-time.Millisecond)) != lease.Open || s.StateAt(now) != lease.Expired {
		t.Fatal("an open session must read as expired from expiresAt on")
	}
	closed := &lease.Session{State: lease.Closed, ExpiresAt: now}
	if closed.StateAt(now.Add(time.Hour)) != lease.Closed {
		t.Fatal("a closed session stays closed after its expiry")
	}
}

func TestIDs(t *testing.T) {
	t.Parallel()
	seen := map[string]bool{}
	for i := 0; i < 1000; i++ {
		id := lease.NewID()
		if !strings.HasPrefix(id, "ses_") || len(id) != 30 || seen[id] {
			t.Fatalf("bad or repeated id %q", id)
		}
		seen[id] = true
	}
}

func TestCursor(t *testing.T) {
	t.Parallel()
	c := &lease.Cursor{Time: time.UnixMilli(1700000000123).UTC(), ID: "ses_x", Filter: "open"}
	got, err := lease.DecodeCursor(c.Encode(), "open")
	if err != nil || !got.Time.Equal(c.Time) || got.ID != c.ID {
		t.Fatalf("round trip: %+v %v", got, err)
	}
	for _, bad := range []string{"!!", "e30", c.Encode() + "x"} {
		if _, err := lease.DecodeCursor(bad, "open"); problem.CodeOf(err) != problem.InvalidArgument {
			t.Errorf("%q: %v", bad, err)
		}
	}
	if _, err := lease.DecodeCursor(c.Encode(), "closed"); problem.CodeOf(err) != problem.InvalidArgument {
		t.Error("a cursor of another filter was accepted")
	}
	if c, err := lease.DecodeCursor("", "open"); c != nil || err != nil {
		t.Error("empty token is the first page")
	}
}
