package proxy_test

import (
	"testing"

	"github.com/nimbus/gateway/problem"
	"github.com/nimbus/gateway/proxy"
)

// FuzzDecodeOpenRequest: the open-request decoder never panics, fails only
// with invalid_argument, and what it accepts satisfies SPEC §4.1 step 2.
func FuzzDecodeOpenRequest(f *testing.F) {
	for _, s := range []string{
		`{"target":{"service":{"name":"worker"}},"channels":["stdio"],"requestedTtlMs":600000}`,
		`{"target":{"sandbox":{"id":"sbx-1"}},"channels":["stdio","files"]}`,
		`{"target":{"service":{"name":"worker"},"sandbox":{"id":"x"}},"channels":["stdio"]}`,
		`{"target":{},"channels":[]}`,
		`{"target":{"service":{"name":"w"}},"channels":["cdp","cdp"]}`,
		`{"target":{"service":{"name":"w"}},"channels":["page"],"requestedTtlMs":1e3}`,
		`{"target":{"service":{"name":"w"}},"channels":["page"],"requestedTtlMs":-1}`,
		`{"target":{"service":{"name":"w"}},"channels":["page"],"requestedTtlMs":null}`,
		`{"target":{"service":{"name":"w"}},"channels":["page"],"requestedTtlMs":99999999999999999999999}`,
		`{"target":null,"channels":null}`,
		`{"target":{"service":{"name":"w"}},"channels":["stdio"]}garbage`,
		`[]`, `null`, `""`, ``, `{`, "\x00", `{"channels":["\u0000"]}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		req, err := proxy.DecodeOpenRequest(body)
		if err != nil {
			if c := problem.CodeOf(err); c != problem.InvalidArgument {
				t.Fatalf("error code %s for %q", c, body)
			}
			return
		}
		if (req.Target.Service == nil) == (req.Target.Sandbox == nil) {
			t.Fatalf("accepted %q with %+v", body, req.Target)
		}
		if len(req.Channels) == 0 {
			t.Fatalf("accepted %q without channels", body)
		}
		seen := map[string]bool{}
		for _, c := range req.Channels {
			if !c.Valid() || seen[string(c)] {
				t.Fatalf("accepted %q with channels %v", body, req.Channels)
			}
			seen[string(c)] = true
		}
		if req.RequestedTTLMs != nil && *req.RequestedTTLMs < 1000 {
			t.Fatalf("accepted ttl %d", *req.RequestedTTLMs)
		}
	})
}
