package targets

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/procfs"
)

// pipeClient drives a CDPConn as a CDP client would.
type pipeClient struct {
	t    *testing.T
	c    *CDPConn
	next int64
}

// call sends a command and returns its response, skipping events.
func (pc *pipeClient) call(sessionID, method string, params any) (result json.RawMessage, cdpErr *CDPError) {
	pc.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	pc.next++
	msg := map[string]any{"id": pc.next, "method": method, "params": params}
	if sessionID != "" {
		msg["sessionId"] = sessionID
	}
	raw, _ := json.Marshal(msg)
	if err := pc.c.Write(ctx, raw); err != nil {
		pc.t.Fatalf("%s: %v", method, err)
	}
	for {
		b, err := pc.c.Read(ctx)
		if err != nil {
			pc.t.Fatalf("%s: reading: %v", method, err)
		}
		var r struct {
			ID        *int64          `json:"id"`
			Result    json.RawMessage `json:"result"`
			Error     *CDPError       `json:"error"`
			SessionID string          `json:"sessionId"`
		}
		if err := json.Unmarshal(b, &r); err != nil {
			pc.t.Fatalf("%s: not JSON: %q", method, b)
		}
		if r.ID == nil {
			continue
		}
		if *r.ID != pc.next {
			pc.t.Fatalf("%s: answer to id %d, want %d: %s", method, *r.ID, pc.next, b)
		}
		if r.SessionID != sessionID {
			pc.t.Fatalf("%s: answer for session %q, want %q: %s", method, r.SessionID, sessionID, b)
		}
		return r.Result, r.Error
	}
}

func (pc *pipeClient) evaluate(sessionID, expr string) any {
	pc.t.Helper()
	res, e := pc.call(sessionID, "Runtime.evaluate", map[string]any{"expression": expr, "returnByValue": true})
	if e != nil {
		pc.t.Fatalf("evaluate %s: %v", expr, e)
	}
	var v struct {
		Result struct {
			Value any `json:"value"`
		} `json:"result"`
	}
	_ = json.Unmarshal(res, &v)
	return v.Result.Value
}

// TestCDPPipeConnections: a browser-level and a page-level connection on
// one browser's pipe each speak CDP as a WebSocket connection would; a
// connection's child sessions are its own, and the other connection
// cannot address them; closing a connection leaves the other working.
func TestCDPPipeConnections(t *testing.T) {
	t.Parallel()
	p := newTestPool(t, BrowserOptions{Warm: -1})
	b := acquire(t, p, "ses_pipe", time.Hour)
	ctx := context.Background()
	page, err := b.NewPage(ctx)
	if err != nil {
		t.Fatal(err)
	}
	bc, err := b.Connect(ctx, "")
	if err != nil {
		t.Fatal(err)
	}
	pc, err := b.Connect(ctx, page)
	if err != nil {
		t.Fatal(err)
	}
	browser, onPage := &pipeClient{t: t, c: bc}, &pipeClient{t: t, c: pc}
	if v := onPage.evaluate("", "6*7"); v != float64(42) {
		t.Fatalf("page evaluate = %v", v)
	}
	res, e := browser.call("", "Target.attachToTarget", map[string]any{"targetId": page, "flatten": true})
	if e != nil {
		t.Fatal(e)
	}
	var att struct {
		SessionID string `json:"sessionId"`
	}
	_ = json.Unmarshal(res, &att)
	if att.SessionID == "" {
		t.Fatalf("attachToTarget: %s", res)
	}
	if v := browser.evaluate(att.SessionID, "1+1"); v != float64(2) {
		t.Fatalf("child session evaluate = %v", v)
	}
	if _, e := onPage.call(att.SessionID, "Runtime.evaluate", map[string]any{"expression": "1"}); e == nil || e.Code != -32001 {
		t.Fatalf("the page connection used the browser connection's session: %v", e)
	}
	if _, e := browser.call("", "Browser.getVersion", nil); e != nil {
		t.Fatal(e)
	}
	_ = pc.Close()
	if v := browser.evaluate(att.SessionID, "2+2"); v != float64(4) {
		t.Fatalf("after the page connection closed: %v", v)
	}
	_ = bc.Close()
	if err := bc.Write(ctx, []byte(`{"id":1,"method":"Browser.getVersion"}`)); err == nil {
		t.Fatal("Write after Close succeeded")
	}
}

// TestCDPPipeNoPort: a browser of the pool listens on no TCP port (issue
// 12: the DevTools port on loopback had no authentication), and its
// connections end when it dies.
func TestCDPPipeNoPort(t *testing.T) {
	t.Parallel()
	p := newTestPool(t, BrowserOptions{Warm: -1})
	b := acquire(t, p, "ses_noport", time.Hour)
	c, err := b.Connect(context.Background(), "")
	if err != nil {
		t.Fatal(err)
	}
	for _, pp := range ProfileProcesses(b.dir, false) {
		if ports := ListeningTCPPorts(pp.PID); len(ports) > 0 {
			t.Errorf("Chromium process %d listens on TCP %v", pp.PID, ports)
		}
	}
	p.Release("ses_noport")
	select {
	case <-c.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("the connection did not end with its browser")
	}
	if _, err := c.Read(context.Background()); err == nil {
		t.Fatal("Read after the browser died succeeded")
	}
}

// TestBrowserUIDs: with a block of ids, each browser runs as an id of its
// own — every process of it — owner of its profile and downloads folder;
// the id is handed out again only once the browser is gone.
func TestBrowserUIDs(t *testing.T) {
	t.Parallel()
	if os.Geteuid() != 0 {
		t.Skip("browsers run as other users only when the gateway is root")
	}
	// The browsers' users pass through the data dir to their profiles.
	dataDir := t.TempDir()
	for _, d := range []string{dataDir, filepath.Dir(dataDir)} {
		if err := os.Chmod(d, 0o711); err != nil {
			t.Fatal(err)
		}
	}
	p := newTestPool(t, BrowserOptions{DataDir: dataDir, Warm: -1, UIDs: &UIDRange{First: 390000, Last: 390001}})
	b1 := acquire(t, p, "ses_u1", time.Hour)
	b2 := acquire(t, p, "ses_u2", time.Hour)
	if b1.UID == b2.UID || b1.UID < 390000 || b1.UID > 390001 || b2.UID < 390000 || b2.UID > 390001 {
		t.Fatalf("uids %d and %d", b1.UID, b2.UID)
	}
	for _, b := range []*Browser{b1, b2} {
		procs := ProfileProcesses(b.dir, false)
		if len(procs) == 0 {
			t.Fatal("no Chromium process")
		}
		for _, pp := range procs {
			st, err := procfs.Proc{PID: pp.PID}.NewStatus()
			if err != nil {
				continue // gone meanwhile
			}
			if uint32(st.UIDs[0]) != b.UID || uint32(st.UIDs[1]) != b.UID || uint32(st.GIDs[0]) != b.UID {
				t.Errorf("process %d runs as uid %v gid %v, want %d", pp.PID, st.UIDs, st.GIDs, b.UID)
			}
		}
		for _, d := range []string{b.dir, b.DownloadsDir()} {
			if fi, err := os.Stat(d); err != nil || fi.Sys().(*syscall.Stat_t).Uid != b.UID {
				t.Errorf("%s not owned by %d: %v", d, b.UID, err)
			}
		}
	}
	// The block is full: a third browser waits for neither and fails.
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if _, err := p.Acquire(ctx, "t2", "ses_u3", time.Now().Add(time.Hour)); err == nil {
		t.Fatal("a third browser got an id of a block of two")
	}
	<-p.Release("ses_u1")
	<-b1.Gone()
	b3 := acquire(t, p, "ses_u4", time.Hour)
	if b3.UID != b1.UID {
		t.Fatalf("the freed id %d was not handed out again (got %d)", b1.UID, b3.UID)
	}
}

// TestBrowserMaxPerTenant: one tenant cannot hold more than its share.
func TestBrowserMaxPerTenant(t *testing.T) {
	t.Parallel()
	p := newTestPool(t, BrowserOptions{Warm: -1, Max: 4, MaxPerTenant: 1})
	acquire(t, p, "ses_m1", time.Hour) // tenant t1
	if _, err := p.Acquire(context.Background(), "t1", "ses_m2", time.Now().Add(time.Hour)); err == nil ||
		!strings.Contains(err.Error(), "its most") {
		t.Fatalf("a second browser of one tenant: %v", err)
	}
	if _, err := p.Acquire(context.Background(), "t2", "ses_m3", time.Now().Add(time.Hour)); err != nil {
		t.Fatalf("another tenant: %v", err)
	}
}
