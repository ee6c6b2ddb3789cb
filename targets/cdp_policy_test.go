package targets

import (
	"encoding/json"
	"testing"
)

// TestCDPPolicy: file: URLs never reach a page, downloads land in the
// session's folder whatever path a client names, and a page is handed
// only files of that folder.
func TestCDPPolicy(t *testing.T) {
	t.Parallel()
	pol := &cdpPolicy{downloads: "/data/browsers/brw_1/downloads"}
	for _, tc := range []struct {
		method, params string
		refused        bool
		want           string // params after the rewrite, when not refused
	}{
		{"Page.navigate", `{"url":"file:///etc/shadow"}`, true, ""},
		{"Page.navigate", `{"url":"  FILE:///etc/shadow"}`, true, ""},
		{"Page.navigate", `{"url":"view-source:file:///etc/passwd"}`, true, ""},
		{"Target.createTarget", `{"url":"file:///data/keys/connect.json"}`, true, ""},
		{"Network.loadNetworkResource", `{"frameId":"F","url":"file:///etc/passwd","options":{}}`, true, ""},
		{"Page.navigate", `{"url":"https://example.test/"}`, false, `{"url":"https://example.test/"}`},
		{"Target.createTarget", `{"url":"about:blank"}`, false, `{"url":"about:blank"}`},
		{"Browser.setDownloadBehavior", `{"behavior":"allow","downloadPath":"/data/keys"}`, false,
			`{"behavior":"allow","downloadPath":"/data/browsers/brw_1/downloads"}`},
		{"Browser.setDownloadBehavior", `{"behavior":"allowAndName","browserContextId":"C","downloadPath":"/tmp/x","eventsEnabled":true}`, false,
			`{"behavior":"allowAndName","browserContextId":"C","downloadPath":"/data/browsers/brw_1/downloads","eventsEnabled":true}`},
		{"Browser.setDownloadBehavior", `{"behavior":"default"}`, false,
			`{"behavior":"allow","downloadPath":"/data/browsers/brw_1/downloads"}`},
		{"Page.setDownloadBehavior", `{"behavior":"allow","downloadPath":"/"}`, false,
			`{"behavior":"allow","downloadPath":"/data/browsers/brw_1/downloads"}`},
		{"Browser.setDownloadBehavior", `{"behavior":"deny"}`, false, `{"behavior":"deny"}`},
		{"DOM.setFileInputFiles", `{"files":["/etc/passwd"],"nodeId":1}`, true, ""},
		{"DOM.setFileInputFiles", `{"files":["/data/browsers/brw_1/downloads/../../../keys/k"],"nodeId":1}`, true, ""},
		{"DOM.setFileInputFiles", `{"files":["/data/browsers/brw_1/downloads/report.pdf"],"nodeId":1}`, false,
			`{"files":["/data/browsers/brw_1/downloads/report.pdf"],"nodeId":1}`},
		{"Input.dispatchDragEvent", `{"type":"drop","x":1,"y":1,"data":{"items":[],"files":["/etc/hosts"],"dragOperationsMask":1}}`, true, ""},
	} {
		out, refusal := pol.filter(tc.method, json.RawMessage(tc.params))
		if (refusal != "") != tc.refused {
			t.Errorf("%s %s: refusal %q, want refused=%v", tc.method, tc.params, refusal, tc.refused)
			continue
		}
		if !tc.refused && !jsonEqual(t, out, tc.want) {
			t.Errorf("%s %s: sent %s, want %s", tc.method, tc.params, out, tc.want)
		}
	}
}

func jsonEqual(t *testing.T, a json.RawMessage, b string) bool {
	t.Helper()
	var x, y any
	if json.Unmarshal(a, &x) != nil || json.Unmarshal([]byte(b), &y) != nil {
		return false
	}
	ra, _ := json.Marshal(x)
	rb, _ := json.Marshal(y)
	return string(ra) == string(rb)
}
