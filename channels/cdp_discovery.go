package channels

import (
	"cmp"
	"context"
	"encoding/json"
	"maps"
	"net/http"
	"slices"
	"strings"

	"github.com/nimbus/gateway/problem"
	"github.com/nimbus/gateway/targets"
)

// discoveryEndpoints maps the paths clients ask for, with or without the
// trailing slash Playwright adds, to the answer.
var discoveryEndpoints = map[string]string{
	"/json/version": "version", "/json/version/": "version",
	"/json/list": "list", "/json/list/": "list",
	"/json": "list", "/json/": "list",
	"/json/protocol": "protocol", "/json/protocol/": "protocol",
}

// CDPDiscoveryPaths are the path suffixes CDPDiscovery answers, longest
// first: the one list of them, for the routes and for a client that glues
// one to its token (Playwright before 1.46). The caller owns the slice.
func CDPDiscoveryPaths() []string {
	out := slices.Collect(maps.Keys(discoveryEndpoints))
	slices.SortFunc(out, func(a, b string) int {
		return cmp.Or(cmp.Compare(len(b), len(a)), strings.Compare(a, b))
	})
	return out
}

// DiscoverySource is what the discovery endpoints ask: a targets.Browser,
// over its DevTools pipe.
type DiscoverySource interface {
	Version(ctx context.Context) (targets.BrowserVersion, error)
	Targets(ctx context.Context) ([]targets.TargetInfo, error)
}

// CDPDiscovery answers a DevTools discovery request — GET whose path ends
// in /json/version, /json/list (or /json), each also with a trailing
// slash — itself, as Chromium would: the browser has no DevTools HTTP
// port (issue 12), so the answers are built from Browser.getVersion and
// Target.getTargets over its pipe. Every webSocketDebuggerUrl is
// wsURL(targetID) (targetID "" for the browser); devtoolsFrontendUrl,
// which points at pages the gateway does not serve, is left out.
// /json/protocol is 404: Chromium serves its protocol document only over
// HTTP, which the gateway no longer opens. Nothing is written when it
// returns an error: a problem.Error (404 for another path, 502 when the
// browser does not answer), for the caller to write.
func CDPDiscovery(w http.ResponseWriter, r *http.Request, src DiscoverySource, wsURL func(targetID string) string) error {
	endpoint, n := "", 0
	for suffix, e := range discoveryEndpoints {
		if strings.HasSuffix(r.URL.Path, suffix) && len(suffix) > n {
			endpoint, n = e, len(suffix)
		}
	}
	var body any
	switch endpoint {
	case "version":
		v, err := src.Version(r.Context())
		if err != nil {
			return cdpUnavailable(err)
		}
		body = map[string]string{
			"Browser": v.Product, "Protocol-Version": v.ProtocolVersion, "User-Agent": v.UserAgent,
			"V8-Version": v.JSVersion, "WebKit-Version": webKitVersion(v),
			"webSocketDebuggerUrl": wsURL(""),
		}
	case "list":
		ts, err := src.Targets(r.Context())
		if err != nil {
			return cdpUnavailable(err)
		}
		list := make([]map[string]string, 0, len(ts))
		for _, t := range ts {
			if t.Type == "browser" {
				continue
			}
			list = append(list, map[string]string{
				"description": "", "id": t.TargetID, "title": t.Title, "type": t.Type, "url": t.URL,
				"webSocketDebuggerUrl": wsURL(t.TargetID),
			})
		}
		body = list
	case "protocol":
		return problem.New(problem.NotFound, "the protocol document is not served: the gateway talks to Chromium over a pipe, which does not carry it")
	default:
		return problem.New(problem.NotFound, "no DevTools endpoint at %s", r.URL.Path)
	}
	w.Header().Set("Content-Type", "application/json; charset=UTF-8")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "   ")
	return enc.Encode(body)
}

// webKitVersion is Chromium's "537.36 (@<revision>)".
func webKitVersion(v targets.BrowserVersion) string {
	ua := v.UserAgent
	if i := strings.Index(ua, "AppleWebKit/"); i >= 0 {
		rest := ua[i+len("AppleWebKit/"):]
		if j := strings.IndexByte(rest, ' '); j >= 0 {
			rest = rest[:j]
		}
		return rest + " (" + v.Revision + ")"
	}
	return v.Revision
}
