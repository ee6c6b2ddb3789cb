package channels

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"

	"github.com/nimbus/gateway/problem"
)

// maxDiscoveryBody bounds the /json/version and /json/list answers the
// gateway decodes to rewrite (a browser with thousands of targets stays
// far below it); /json/protocol is streamed as is.
const maxDiscoveryBody = 16 << 20

// discoveryEndpoints maps the paths clients ask for, with or without the
// trailing slash Playwright adds, to Chromium's own.
var discoveryEndpoints = map[string]string{
	"/json/version": "/json/version", "/json/version/": "/json/version",
	"/json/list": "/json/list", "/json/list/": "/json/list",
	"/json": "/json/list", "/json/": "/json/list",
	"/json/protocol": "/json/protocol", "/json/protocol/": "/json/protocol",
}

// CDPDiscoveryPaths are the path suffixes CDPDiscovery answers.
func CDPDiscoveryPaths() []string {
	out := make([]string, 0, len(discoveryEndpoints))
	for p := range discoveryEndpoints {
		out = append(out, p)
	}
	return out
}

// CDPDiscovery answers a DevTools discovery request — GET whose path ends
// in /json/version, /json/list (or /json), /json/protocol, each also with
// a trailing slash — from the browser at upstreamBase
// (http://127.0.0.1:PORT), asked with Host: localhost. It answers as
// Chromium does, except that every webSocketDebuggerUrl is replaced with
// rewrite's result (a URL the client can reach) — or dropped when rewrite
// returns "" — and devtoolsFrontendUrl, which points at pages of the
// browser the gateway does not serve, is dropped. Nothing is written when
// it returns an error: a problem.Error (404 for another path, 502 when the
// browser does not answer), for the caller to write.
func CDPDiscovery(w http.ResponseWriter, r *http.Request, upstreamBase string, rewrite func(upstreamWS string) (string, error)) error {
	endpoint := ""
	for suffix, e := range discoveryEndpoints {
		if strings.HasSuffix(r.URL.Path, suffix) && len(suffix) > len(endpoint) {
			endpoint = e
		}
	}
	if endpoint == "" {
		return problem.New(problem.NotFound, "no DevTools endpoint at %s", r.URL.Path)
	}
	req, err := http.NewRequestWithContext(r.Context(), http.MethodGet, upstreamBase+endpoint, nil)
	if err != nil {
		return problem.Wrap(problem.Internal, err, "building the browser request failed")
	}
	req.Host = "localhost"
	resp, err := cdpHTTP.Do(req)
	if err != nil {
		return cdpUnavailable(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return cdpUnavailable(fmt.Errorf("%s answered %s", endpoint, resp.Status))
	}
	w.Header().Set("Content-Type", "application/json; charset=UTF-8")
	w.Header().Set("Cache-Control", "no-store") // it carries signed URLs
	if endpoint == "/json/protocol" {
		w.WriteHeader(http.StatusOK)
		_, _ = io.Copy(w, resp.Body)
		return nil
	}
	raw, err := io.ReadAll(io.LimitReader(resp.Body, maxDiscoveryBody))
	if err != nil {
		return cdpUnavailable(err)
	}
	out, err := rewriteDiscovery(raw, endpoint == "/json/list", rewrite)
	if err != nil {
		return err
	}
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(out)
	return nil
}

// rewriteDiscovery rewrites a /json/version object or a /json/list array.
func rewriteDiscovery(raw []byte, list bool, rewrite func(string) (string, error)) ([]byte, error) {
	var objs []map[string]any
	if list {
		if err := decodeCDPJSON(raw, &objs); err != nil {
			return nil, cdpUnavailable(fmt.Errorf("/json/list: %w", err))
		}
	} else {
		var obj map[string]any
		if err := decodeCDPJSON(raw, &obj); err != nil {
			return nil, cdpUnavailable(fmt.Errorf("/json/version: %w", err))
		}
		objs = []map[string]any{obj}
	}
	for _, o := range objs {
		delete(o, "devtoolsFrontendUrl")
		delete(o, "devtoolsFrontendUrlCompat")
		u, ok := o["webSocketDebuggerUrl"].(string)
		if !ok {
			continue
		}
		nu, err := rewrite(u)
		if err != nil {
			return nil, err
		}
		if nu == "" {
			delete(o, "webSocketDebuggerUrl")
		} else {
			o["webSocketDebuggerUrl"] = nu
		}
	}
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false) // the URLs' & and = as they are
	enc.SetIndent("", "   ")
	var v any = objs
	if !list {
		v = objs[0]
	}
	if err := enc.Encode(v); err != nil {
		return nil, problem.Wrap(problem.Internal, err, "encoding the DevTools answer failed")
	}
	return buf.Bytes(), nil
}

// decodeCDPJSON decodes keeping numbers as they were written.
func decodeCDPJSON(raw []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	return dec.Decode(v)
}
