package targets

import (
	"encoding/json"
	"net/url"
	"path/filepath"
	"strings"
)

// cdpPolicy is what the gateway refuses or rewrites in the CDP a client
// sends (issue 12). It is defense in depth: the wall is the browser's own
// unprivileged user (BrowserOptions.UIDs), which cannot read the gateway's
// keys, database or other tenants' files whatever a page does.
//   - No file: URL reaches a page: Page.navigate, Target.createTarget and
//     Network.loadNetworkResource with a file: (or view-source:file:) URL
//     are refused.
//   - Downloads land in the session's downloads folder only:
//     Browser.setDownloadBehavior and Page.setDownloadBehavior have their
//     downloadPath rewritten to it (Playwright sets one of its own on
//     connectOverCDP, so refusing would break it), and "default" becomes
//     "allow" there.
//   - Files a page is handed (DOM.setFileInputFiles,
//     Input.dispatchDragEvent) must be in the downloads folder.
type cdpPolicy struct {
	downloads string // absolute, cleaned
}

// filter returns the params to send for method, or a refusal (the
// message of the error the client gets).
func (pol *cdpPolicy) filter(method string, params json.RawMessage) (json.RawMessage, string) {
	switch method {
	case "Page.navigate", "Target.createTarget", "Network.loadNetworkResource":
		var p struct {
			URL string `json:"url"`
		}
		_ = json.Unmarshal(params, &p)
		if fileURL(p.URL) {
			return nil, "nimbus: file: URLs are not allowed"
		}
	case "Browser.setDownloadBehavior", "Page.setDownloadBehavior":
		var p map[string]json.RawMessage
		if err := json.Unmarshal(params, &p); err != nil {
			return params, "" // Chromium answers the malformed params
		}
		var behavior string
		_ = json.Unmarshal(p["behavior"], &behavior)
		if behavior == "deny" {
			return params, ""
		}
		if behavior == "default" {
			p["behavior"] = json.RawMessage(`"allow"`)
		}
		dl, _ := json.Marshal(pol.downloads)
		p["downloadPath"] = dl
		out, err := json.Marshal(p)
		if err != nil {
			return nil, "nimbus: bad params"
		}
		return out, ""
	case "DOM.setFileInputFiles":
		var p struct {
			Files []string `json:"files"`
		}
		_ = json.Unmarshal(params, &p)
		for _, f := range p.Files {
			if !pol.inDownloads(f) {
				return nil, "nimbus: only files of the session's downloads folder can be given to a page"
			}
		}
	case "Input.dispatchDragEvent":
		var p struct {
			Data struct {
				Files []string `json:"files"`
			} `json:"data"`
		}
		_ = json.Unmarshal(params, &p)
		for _, f := range p.Data.Files {
			if !pol.inDownloads(f) {
				return nil, "nimbus: only files of the session's downloads folder can be given to a page"
			}
		}
	}
	return params, ""
}

// inDownloads reports whether path names a file inside the downloads
// folder (lexically; the folder is the browser user's own, and the user
// cannot read other places anyway).
func (pol *cdpPolicy) inDownloads(path string) bool {
	if !filepath.IsAbs(path) {
		return false
	}
	rel, err := filepath.Rel(pol.downloads, filepath.Clean(path))
	return err == nil && rel != "." && !strings.HasPrefix(rel, "..")
}

// fileURL reports whether u is a file: URL, also behind view-source:,
// in any case and with leading spaces (which Chromium trims).
func fileURL(u string) bool {
	s := strings.ToLower(strings.TrimSpace(u))
	for {
		rest, ok := strings.CutPrefix(s, "view-source:")
		if !ok {
			break
		}
		s = strings.TrimSpace(rest)
	}
	if strings.HasPrefix(s, "file:") {
		return true
	}
	// A scheme Chromium would take as a file path after fixing up.
	if pu, err := url.Parse(s); err == nil && pu.Scheme == "" && strings.HasPrefix(s, "/") {
		return true
	}
	return false
}
