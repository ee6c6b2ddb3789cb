package targets

import (
	"context"
	"encoding/json"
	"sync"
)

// CDPConn is one client connection to a Browser's DevTools, multiplexed
// on its pipe (see cdp_pipe.go): browser-level for the cdp channel, or
// page-level for one page. It speaks CDP as a WebSocket connection to
// Chromium's /devtools/… would, message for message. Read and Write may
// be called concurrently with each other and with Close; Read by one
// goroutine at a time.
type CDPConn struct {
	// Static after Connect.
	pipe   *cdpPipe
	policy *cdpPolicy
	out    chan []byte
	done   chan struct{}
	// root is the connection's flat session id, set by the pipe's reader
	// before Connect returns.
	root string

	once sync.Once
}

// Connect opens a client connection to b's DevTools: browser-level when
// targetID is "", else page-level on that target (a target of another
// browser is not found: CDPError code -32602 or similar from Chromium).
func (b *Browser) Connect(ctx context.Context, targetID string) (*CDPConn, error) {
	c := &CDPConn{pipe: b.pipe, policy: b.policy, out: make(chan []byte, connQueue), done: make(chan struct{})}
	var err error
	if targetID == "" {
		_, err = b.pipe.call(ctx, "", "Target.attachToBrowserTarget", nil, c)
	} else {
		_, err = b.pipe.call(ctx, "", "Target.attachToTarget", map[string]any{"targetId": targetID, "flatten": true}, c)
	}
	if err != nil {
		return nil, err
	}
	return c, nil
}

// Read returns the next message for the client: a response to one of its
// commands or an event of one of its sessions. It fails with
// ErrCDPClosed once the connection or the browser is closed, or with
// ctx's error.
func (c *CDPConn) Read(ctx context.Context) ([]byte, error) {
	select {
	case m := <-c.out:
		return m, nil
	default:
	}
	select {
	case m := <-c.out:
		return m, nil
	case <-c.done:
		return nil, ErrCDPClosed
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// Write sends one client message to the browser. A message the gateway
// refuses itself (not JSON, no id, a session that is not this
// connection's, a command the policy forbids) is answered to the client
// as Chromium answers a bad command, with an error response; Write then
// returns nil. It fails only when the connection or the browser is gone.
func (c *CDPConn) Write(ctx context.Context, msg []byte) error {
	select {
	case <-c.done:
		return ErrCDPClosed
	default:
	}
	var m clientMessage
	if err := json.Unmarshal(msg, &m); err != nil {
		c.deliver(encodeClientError(0, "", -32700, "Message must be a valid JSON"))
		return nil
	}
	if m.ID == nil {
		c.deliver(encodeClientError(0, m.SessionID, -32600, "Message must have integer 'id' property"))
		return nil
	}
	sessionID := m.SessionID
	if sessionID == "" || sessionID == c.root {
		sessionID = c.root
	} else if !c.owns(sessionID) {
		c.deliver(encodeClientError(*m.ID, m.SessionID, -32001, "Session with given id not found."))
		return nil
	}
	params, refusal := c.policy.filter(m.Method, m.Params)
	if refusal != "" {
		c.deliver(encodeClientError(*m.ID, m.SessionID, -32000, refusal))
		return nil
	}
	id, err := c.pipe.register(pendingCall{conn: c, clientID: *m.ID})
	if err != nil {
		return ErrCDPClosed
	}
	out, err := encodeRequest(id, m.Method, sessionID, params)
	if err == nil {
		err = c.pipe.send(out)
	}
	if err != nil {
		c.pipe.forget(id)
		return ErrCDPClosed
	}
	return nil
}

// Close ends the connection: its sessions are detached in the browser
// (Chromium then drops what they enabled, as when a WebSocket client
// goes away), and Read and Write fail.
func (c *CDPConn) Close() error {
	p := c.pipe
	p.mu.Lock()
	for sid, owner := range p.sessions {
		if owner == c {
			delete(p.sessions, sid)
		}
	}
	p.mu.Unlock()
	c.shut()
	if c.root != "" {
		p.notify("", "Target.detachFromTarget", map[string]string{"sessionId": c.root})
	}
	return nil
}

// Done is closed when the connection is closed, by Close or because the
// browser went away or detached the connection's session.
func (c *CDPConn) Done() <-chan struct{} { return c.done }

func (c *CDPConn) owns(sessionID string) bool {
	c.pipe.mu.Lock()
	defer c.pipe.mu.Unlock()
	return c.pipe.sessions[sessionID] == c
}

// deliver queues a message for Read, waiting while the queue is full
// (see connQueue); dropped once the connection is closed.
func (c *CDPConn) deliver(msg []byte) {
	select {
	case c.out <- msg:
	case <-c.done:
	case <-c.pipe.closing:
	}
}

func (c *CDPConn) shut() { c.once.Do(func() { close(c.done) }) }
