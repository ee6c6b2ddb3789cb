package targets

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"sync"
)

// A Browser has no DevTools TCP port (issue 12: an unauthenticated port on
// the host's loopback let any local process, and any page of any browser,
// drive every browser of the host). The gateway talks to Chromium over
// --remote-debugging-pipe: JSON messages, each ended by a NUL byte,
// Chromium reading on its fd 3 and writing on its fd 4. That pipe is one
// browser-level DevTools connection; every client connection is a flat
// session on it:
//   - cdp (browser level): Target.attachToBrowserTarget gives a session
//     that behaves as a connection to /devtools/browser/… would;
//   - page: Target.attachToTarget {flatten: true} on the page.
//
// The gateway adds the connection's session id to what the client sends
// without one, strips it from what comes back, renumbers message ids so
// connections cannot answer for each other, and routes each message to the
// connection whose session (or a child session it attached) it belongs to.
// A client can only address sessions of its own connection.

// maxPipeMessage bounds one message from Chromium: MaxCDPMessage of the
// channel, which a client can make Chromium produce (a screenshot).
const maxPipeMessage = 256 << 20

// connQueue is how many messages from Chromium wait for a slow client
// connection before the pipe stops reading (backpressure on the browser,
// which only this session uses).
const connQueue = 64

// ErrCDPClosed is returned by a CDPConn once it or its browser is closed.
var ErrCDPClosed = errors.New("cdp: connection closed")

// cdpPipe is a Browser's DevTools pipe. Safe for concurrent use.
type cdpPipe struct {
	// Static after newCDPPipe.
	w       *os.File // Chromium's fd 3
	r       *os.File // Chromium's fd 4
	done    chan struct{}
	closing chan struct{} // closed by close: deliveries stop waiting
	once    sync.Once

	wmu sync.Mutex // serializes writes of whole messages

	mu sync.Mutex
	// Guarded by mu.
	nextID   int64
	pending  map[int64]pendingCall
	sessions map[string]*CDPConn // flat session id → the connection owning it
	err      error               // set once the pipe is broken
}

// pendingCall is who waits for the answer to a message sent on the pipe.
type pendingCall struct {
	// A client's message: its connection and its own id.
	conn     *CDPConn
	clientID int64
	// The gateway's own call: the answer goes here. attach, if set, is
	// registered as the owner of the session id in the result, before any
	// message of that session is read.
	reply  chan pipeReply
	attach *CDPConn
}

// pipeReply is the answer to one of the gateway's own calls.
type pipeReply struct {
	result json.RawMessage
	err    error
}

// pipeMessage is the top level of a message from Chromium.
type pipeMessage struct {
	ID        *int64          `json:"id"`
	Method    string          `json:"method"`
	SessionID string          `json:"sessionId"`
	Params    json.RawMessage `json:"params"`
	Result    json.RawMessage `json:"result"`
	Error     json.RawMessage `json:"error"`
}

// clientMessage is the top level of a message from a client.
type clientMessage struct {
	ID        *int64          `json:"id"`
	Method    string          `json:"method"`
	SessionID string          `json:"sessionId"`
	Params    json.RawMessage `json:"params"`
}

// CDPError is an error answer of Chromium to one of the gateway's calls.
type CDPError struct {
	Code    int    `json:"code"`
	Message string `json:"message"`
}

func (e *CDPError) Error() string { return fmt.Sprintf("cdp error %d: %s", e.Code, e.Message) }

// newCDPPipe makes the two pipes; childIn and childOut are Chromium's fd 3
// and fd 4, to be closed by the caller once Chromium has them.
func newCDPPipe() (p *cdpPipe, childIn, childOut *os.File, err error) {
	inR, inW, err := os.Pipe()
	if err != nil {
		return nil, nil, nil, err
	}
	outR, outW, err := os.Pipe()
	if err != nil {
		_ = inR.Close()
		_ = inW.Close()
		return nil, nil, nil, err
	}
	p = &cdpPipe{w: inW, r: outR, done: make(chan struct{}), closing: make(chan struct{}),
		pending: map[int64]pendingCall{}, sessions: map[string]*CDPConn{}}
	return p, inR, outW, nil
}

// run reads Chromium's messages until the pipe ends (Chromium exited),
// then fails every call and connection.
func (p *cdpPipe) run() {
	defer close(p.done)
	br := bufio.NewReaderSize(p.r, 64<<10)
	var err error
	for {
		var msg []byte
		if msg, err = readPipeMessage(br); err != nil {
			break
		}
		p.dispatch(msg)
	}
	if errors.Is(err, io.EOF) || errors.Is(err, os.ErrClosed) {
		err = ErrCDPClosed
	}
	p.mu.Lock()
	p.err = err
	pending, conns := p.pending, p.sessions
	p.pending, p.sessions = map[int64]pendingCall{}, map[string]*CDPConn{}
	p.mu.Unlock()
	for _, pc := range pending {
		if pc.reply != nil {
			pc.reply <- pipeReply{err: err}
		}
	}
	for _, c := range conns {
		c.shut()
	}
}

// close ends the pipe, once Chromium is dead (or never started): the
// reader stops, even inside a delivery to a client that does not read.
func (p *cdpPipe) close() {
	p.once.Do(func() {
		close(p.closing)
		// Not under wmu: closing unblocks a write Chromium no longer reads.
		_ = p.r.Close()
		_ = p.w.Close()
	})
}

// readPipeMessage reads one NUL-ended message, at most maxPipeMessage.
func readPipeMessage(br *bufio.Reader) ([]byte, error) {
	var msg []byte
	for {
		chunk, err := br.ReadSlice(0)
		switch {
		case err == nil:
			if msg == nil {
				return bytes.Clone(chunk[:len(chunk)-1]), nil
			}
			return append(msg, chunk[:len(chunk)-1]...), nil
		case errors.Is(err, bufio.ErrBufferFull):
			if len(msg)+len(chunk) > maxPipeMessage {
				return nil, fmt.Errorf("cdp: a message from the browser is over %d bytes", maxPipeMessage)
			}
			msg = append(msg, chunk...)
		default:
			return nil, err
		}
	}
}

// send writes one message to Chromium.
func (p *cdpPipe) send(msg []byte) error {
	p.wmu.Lock()
	defer p.wmu.Unlock()
	if _, err := p.w.Write(append(msg, 0)); err != nil {
		return fmt.Errorf("cdp: writing to the browser: %w", err)
	}
	return nil
}

// register takes a pipe id for pc, or fails once the pipe is broken.
func (p *cdpPipe) register(pc pendingCall) (int64, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.err != nil {
		return 0, p.err
	}
	p.nextID++
	p.pending[p.nextID] = pc
	return p.nextID, nil
}

// call sends one of the gateway's own commands, on the pipe's root
// session (sessionID "") or a flat session, and waits for the answer.
func (p *cdpPipe) call(ctx context.Context, sessionID, method string, params any, attach *CDPConn) (json.RawMessage, error) {
	reply := make(chan pipeReply, 1)
	id, err := p.register(pendingCall{reply: reply, attach: attach})
	if err != nil {
		return nil, err
	}
	msg, err := encodeRequest(id, method, sessionID, params)
	if err == nil {
		err = p.send(msg)
	}
	if err != nil {
		p.forget(id)
		return nil, err
	}
	select {
	case r := <-reply:
		return r.result, r.err
	case <-ctx.Done():
		p.forget(id)
		return nil, ctx.Err()
	}
}

// notify sends one of the gateway's own commands and drops its answer.
func (p *cdpPipe) notify(sessionID, method string, params any) {
	id, err := p.register(pendingCall{})
	if err != nil {
		return
	}
	if msg, err := encodeRequest(id, method, sessionID, params); err == nil {
		if p.send(msg) != nil {
			p.forget(id)
		}
	}
}

func (p *cdpPipe) forget(id int64) {
	p.mu.Lock()
	delete(p.pending, id)
	p.mu.Unlock()
}

// dispatch routes one message from Chromium.
func (p *cdpPipe) dispatch(raw []byte) {
	var m pipeMessage
	if err := json.Unmarshal(raw, &m); err != nil {
		return // Chromium sends JSON; nothing to route otherwise
	}
	if m.ID != nil {
		p.answer(&m)
		return
	}
	p.mu.Lock()
	c := p.sessions[m.SessionID]
	switch m.Method {
	case "Target.attachedToTarget":
		// A session attached through one of c's sessions is c's too.
		if c != nil {
			if sid := paramSessionID(m.Params); sid != "" {
				p.sessions[sid] = c
			}
		}
	case "Target.detachedFromTarget":
		if sid := paramSessionID(m.Params); sid != "" {
			if owner := p.sessions[sid]; owner != nil {
				delete(p.sessions, sid)
				if owner.root == sid {
					// The client detached its own connection's session:
					// the connection is over.
					p.mu.Unlock()
					owner.shut()
					if c != nil && c != owner {
						c.deliver(encodeEvent(&m, c.root))
					}
					return
				}
			}
		}
	}
	p.mu.Unlock()
	if c != nil {
		c.deliver(encodeEvent(&m, c.root))
	}
}

// answer delivers a response to whoever sent the command.
func (p *cdpPipe) answer(m *pipeMessage) {
	p.mu.Lock()
	pc, ok := p.pending[*m.ID]
	delete(p.pending, *m.ID)
	if ok && pc.attach != nil && m.Error == nil {
		if sid := resultSessionID(m.Result); sid != "" {
			pc.attach.root = sid
			p.sessions[sid] = pc.attach
		}
	}
	if ok && pc.conn != nil && m.Error == nil && m.Result != nil {
		// Target.attachToTarget from a client: its session is the
		// client's before any of its events are read.
		if sid := resultSessionID(m.Result); sid != "" && p.sessions[sid] == nil {
			p.sessions[sid] = pc.conn
		}
	}
	p.mu.Unlock()
	switch {
	case !ok:
	case pc.reply != nil:
		if m.Error != nil {
			var e CDPError
			_ = json.Unmarshal(m.Error, &e)
			pc.reply <- pipeReply{err: &e}
		} else {
			pc.reply <- pipeReply{result: m.Result}
		}
	case pc.conn != nil:
		pc.conn.deliver(encodeResponse(pc.clientID, m, pc.conn.root))
	}
}

func paramSessionID(params json.RawMessage) string {
	var v struct {
		SessionID string `json:"sessionId"`
	}
	_ = json.Unmarshal(params, &v)
	return v.SessionID
}

func resultSessionID(result json.RawMessage) string {
	if !bytes.Contains(result, []byte(`"sessionId"`)) {
		return ""
	}
	return paramSessionID(result)
}

// encodeRequest writes a command for the pipe.
func encodeRequest(id int64, method, sessionID string, params any) ([]byte, error) {
	var raw json.RawMessage
	switch v := params.(type) {
	case nil:
	case json.RawMessage:
		raw = v
	default:
		b, err := json.Marshal(v)
		if err != nil {
			return nil, err
		}
		raw = b
	}
	buf := make([]byte, 0, len(raw)+len(method)+len(sessionID)+64)
	buf = append(buf, `{"id":`...)
	buf = strconv.AppendInt(buf, id, 10)
	buf = append(buf, `,"method":`...)
	buf = appendJSONString(buf, method)
	if sessionID != "" {
		buf = append(buf, `,"sessionId":`...)
		buf = appendJSONString(buf, sessionID)
	}
	if len(raw) > 0 {
		buf = append(buf, `,"params":`...)
		buf = append(buf, raw...)
	}
	return append(buf, '}'), nil
}

// encodeResponse writes a response for a client: its own id, and the
// session id only for a child session (the connection's own is implicit).
func encodeResponse(clientID int64, m *pipeMessage, root string) []byte {
	body := m.Result
	key := `,"result":`
	if m.Error != nil {
		body, key = m.Error, `,"error":`
	}
	if body == nil {
		body = json.RawMessage("{}")
	}
	buf := make([]byte, 0, len(body)+len(m.SessionID)+48)
	buf = append(buf, `{"id":`...)
	buf = strconv.AppendInt(buf, clientID, 10)
	buf = append(buf, key...)
	buf = append(buf, body...)
	if m.SessionID != "" && m.SessionID != root {
		buf = append(buf, `,"sessionId":`...)
		buf = appendJSONString(buf, m.SessionID)
	}
	return append(buf, '}')
}

// encodeEvent writes an event for a client.
func encodeEvent(m *pipeMessage, root string) []byte {
	params := m.Params
	if params == nil {
		params = json.RawMessage("{}")
	}
	buf := make([]byte, 0, len(params)+len(m.Method)+len(m.SessionID)+48)
	buf = append(buf, `{"method":`...)
	buf = appendJSONString(buf, m.Method)
	buf = append(buf, `,"params":`...)
	buf = append(buf, params...)
	if m.SessionID != "" && m.SessionID != root {
		buf = append(buf, `,"sessionId":`...)
		buf = appendJSONString(buf, m.SessionID)
	}
	return append(buf, '}')
}

// encodeClientError writes an error response the gateway gives a client
// itself, as Chromium would: {"id":…,"error":{"code":…,"message":…}}.
func encodeClientError(id int64, sessionID string, code int, message string) []byte {
	e, _ := json.Marshal(CDPError{Code: code, Message: message})
	return encodeResponse(id, &pipeMessage{Error: e, SessionID: sessionID}, "")
}

func appendJSONString(buf []byte, s string) []byte {
	b, _ := json.Marshal(s)
	return append(buf, b...)
}
