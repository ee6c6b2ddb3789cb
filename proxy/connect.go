package proxy

import (
	"context"
	"errors"
	"io"
	"net/http"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/coder/websocket"
	"github.com/gorilla/mux"
	"go.uber.org/zap"

	"github.com/nimbus/gateway/authn"
	"github.com/nimbus/gateway/channels"
	"github.com/nimbus/gateway/lease"
	"github.com/nimbus/gateway/problem"
	"github.com/nimbus/gateway/targets"
)

// closeHandshakeTimeout is how long a client has to answer our close frame
// before its TCP connection is cut (SPEC §5).
const closeHandshakeTimeout = time.Second

// Close causes the gateway itself puts on connections.
var (
	causeExpired  = channels.Close(channels.StatusExpired, "session expired")
	causeShutdown = channels.Close(websocket.StatusGoingAway, "gateway shutting down")
	causePingLost = channels.Close(websocket.StatusGoingAway, "ping timeout")
)

// causeClosed is the cause of an explicit close through the API.
func causeClosed(reason string) *channels.CloseError {
	return channels.Close(channels.StatusClosed, "session closed: "+reason)
}

// backend is what a connection was attached to before the upgrade: each
// channel's attach returns one, so a dead target is answered with 502
// before the client is upgraded.
type backend interface {
	// protocols are the WebSocket subprotocols the channel speaks.
	protocols() []string
	// serve carries the upgraded connection until it must close; it returns
	// how (a *channels.CloseError) like the adapters do.
	serve(ctx context.Context, conn *websocket.Conn) error
	// release frees what attach took (an upstream connection) when the
	// client is never upgraded or has gone; safe to call more than once.
	release()
}

// stdioBackend attaches a client to a sandbox workload's stdio.
type stdioBackend struct {
	s        *Server
	workload *targets.Workload
}

func (b *stdioBackend) protocols() []string { return []string{channels.StdioProtocol} }

func (b *stdioBackend) serve(ctx context.Context, conn *websocket.Conn) error {
	return channels.ServeStdio(ctx, conn, b.workload, channels.StdioOptions{
		MaxBacklog: b.s.stdio.MaxBacklog, Grace: b.s.stdio.Grace,
		OnBytes: func(dir string, n int) { b.s.metrics.bytes.WithLabelValues("stdio", dir).Add(float64(n)) },
	})
}

func (b *stdioBackend) release() {}

// connect is GET /v1/connect/{sessionId}/{channel}: every check of SPEC §5
// runs before the upgrade and answers problem+json; the target is attached
// before the client is upgraded, so no message is lost and a dead target
// is a 502, not a dropped socket.
func (s *Server) connect(w http.ResponseWriter, r *http.Request) {
	sid, ch := mux.Vars(r)["session"], mux.Vars(r)["channel"]
	if ch == string(lease.Files) && !isUpgrade(r) {
		// The files channel's HTTP face at the root (a listing).
		s.serveFilesHTTP(w, r, sid, "")
		return
	}
	s.serveConnect(w, r, sid, lease.Channel(ch), nil)
}

// attachFunc attaches a session's backend before the upgrade; nil means
// the channel's own (Server.attach).
type attachFunc func(sess *lease.Session) (backend, error)

// serveConnect is the connect flow of every WebSocket channel: token,
// pre-upgrade checks, attach, upgrade, serve under the session's deadline,
// close with the right code, audit both ends.
func (s *Server) serveConnect(w http.ResponseWriter, r *http.Request, sid string, ch lease.Channel, attach attachFunc) {
	// Late: a URL used after its session ended is answered for the
	// session (409), not for the token's exp (401) — both die together.
	claims, err := s.connectKeys.VerifyForLate(connectToken(r), sid, string(ch))
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	ev := s.connectEvent(r, claims.Tenant, sid)
	// The handshake is checked after the session (so a plain GET of the
	// URL, which clients use to learn why a WebSocket was refused, gets
	// the session's answer) but before the target is attached.
	handshake := func() error { return checkHandshake(w, r) }
	sess, be, adm, err := s.admit(r, claims, ch, handshake, attach)
	if err != nil {
		ev.Outcome, ev.Code = outcomeOf(err), string(problem.CodeOf(err))
		s.writeError(w, r, s.recordDenied(r.Context(), ev, err))
		return
	}
	// The bearer of a connect URL acts for whoever opened the session.
	ev.Principal, ev.Target = sess.CreatedBy, sess.Target.String()

	conn, err := websocket.Accept(smallBufWriter{w}, r, &websocket.AcceptOptions{
		Subprotocols: be.protocols(),
		// The signed token in the URL is the credential, not an ambient
		// cookie, so a cross-origin page (a web terminal served from
		// another host) may connect: there is no CSRF to defend against.
		InsecureSkipVerify: true,
		CompressionMode:    websocket.CompressionDisabled,
	})
	if err != nil {
		// Accept has already answered the client (426/400/403).
		be.release()
		adm.unregister()
		s.log.Info("websocket upgrade failed", zap.String("requestId", ev.RequestID), zap.Error(err))
		return
	}
	s.recordConnect(ev)
	// The connection lives on in a goroutine of its own and the handler
	// returns: net/http then drops its per-request state (the connection
	// struct, the request, the handler's deep stack), which an idle
	// connection would otherwise hold for its whole life.
	go s.runConn(conn, ev, sess, be, adm, ch)
}

// runConn carries an upgraded connection until it must close, closes it
// with the right code and records the disconnect. A panic in a channel
// adapter closes that connection (1011) instead of the gateway.
func (s *Server) runConn(conn *websocket.Conn, ev *auditEvent, sess *lease.Session, be backend, adm *admission, ch lease.Channel) {
	defer adm.unregister()
	defer be.release()
	s.metrics.conns.WithLabelValues(string(ch)).Inc()
	defer s.metrics.conns.WithLabelValues(string(ch)).Dec()
	defer func() {
		if p := recover(); p != nil {
			s.log.Error("panic serving a connection", zap.String("sessionId", sess.ID), zap.Any("panic", p), zap.Stack("stack"))
			_ = conn.Close(websocket.StatusInternalError, "internal error")
			s.recordDisconnect(ev, websocket.StatusInternalError, "internal error")
		}
	}()

	ctx := adm.ctx
	stopPing := s.keepAlive(ctx, conn, adm.lc)
	err := be.serve(ctx, conn)
	stopPing()
	code, reason := s.closeConn(ctx, conn, err)
	if code == channels.StatusExpired {
		s.metrics.expiryDisconnectLag.Observe(time.Since(sess.ExpiresAt).Seconds())
	}
	s.recordDisconnect(ev, code, reason)
}

// admission is a connection admitted to the registry, with its context:
// a deadline of the session's expiresAt (cause 4408) and a cancel that
// closes, expiries seen elsewhere and shutdown use with their own cause.
type admission struct {
	ctx    context.Context
	lc     *liveConn
	remove func()
	stop   func()
}

func (a *admission) unregister() {
	a.stop()
	a.remove()
}

// admit runs the pre-upgrade checks after the token: the session exists
// and has the channel (403 otherwise), is open (409), the backend is
// attached (502/503), and the registry has room (429).
func (s *Server) admit(r *http.Request, claims *authn.ConnectClaims, ch lease.Channel, beforeAttach func() error, attach attachFunc) (*lease.Session, backend, *admission, error) {
	if s.draining.Load() {
		return nil, nil, nil, errDraining
	}
	sess, err := s.sessions.GetSession(r.Context(), claims.Tenant, claims.SessionID)
	if err != nil {
		return nil, nil, nil, err
	}
	if !sess.HasChannel(ch) {
		return nil, nil, nil, problem.New(problem.PermissionDenied, "session %s was not opened with channel %s", sess.ID, ch)
	}
	if st := sess.StateAt(s.now()); st != lease.Open {
		return nil, nil, nil, errNotOpen(sess.ID, st)
	}
	if claims.Expired {
		return nil, nil, nil, problem.New(problem.Unauthenticated, "connect token has expired")
	}
	if beforeAttach != nil {
		if err := beforeAttach(); err != nil {
			return nil, nil, nil, err
		}
	}
	var be backend
	switch {
	case s.isRemote(sess):
		be, err = s.attachRelay(r, sess)
	case attach != nil:
		be, err = attach(sess)
	default:
		be, err = s.attach(sess, ch)
	}
	if err != nil {
		return nil, nil, nil, err
	}
	base, cancel := context.WithCancelCause(context.WithoutCancel(r.Context()))
	ctx, stop := context.WithDeadlineCause(base, sess.ExpiresAt, causeExpired)
	lc := &liveConn{sessionID: sess.ID, channel: string(ch), cancel: cancel}
	remove, err := s.conns.add(lc)
	if err != nil {
		be.release()
		stop()
		cancel(nil)
		return nil, nil, nil, err
	}
	// A close that committed between the state check above and add would
	// otherwise be missed: look again now that closes can find us.
	if cur, err := s.sessions.GetSession(r.Context(), sess.TenantID, sess.ID); err != nil || cur.StateAt(s.now()) != lease.Open {
		be.release()
		remove()
		stop()
		cancel(nil)
		if err == nil {
			err = errNotOpen(sess.ID, cur.StateAt(s.now()))
		}
		return nil, nil, nil, err
	}
	return sess, be, &admission{ctx: ctx, lc: lc, remove: remove, stop: func() { stop(); cancel(nil) }}, nil
}

// attach finds the backend of a channel before the upgrade.
func (s *Server) attach(sess *lease.Session, ch lease.Channel) (backend, error) {
	switch ch {
	case lease.Stdio:
		wl, ok := s.catalog.Workload(sess.TenantID, sess.Snapshot.Sandbox)
		if !ok {
			return nil, problem.New(problem.BadGateway, "the workload of sandbox %s is not running", sess.Snapshot.Sandbox).
				With("sandbox", sess.Snapshot.Sandbox)
		}
		return &stdioBackend{s: s, workload: wl}, nil
	case lease.Files:
		return s.attachFiles(sess)
	case lease.CDP, lease.Page:
		return s.attachBrowser(sess, ch)
	}
	return nil, problem.New(problem.Unavailable, "channel %s is not served by this gateway yet", ch).With("channel", ch)
}

// closeConn sends the close frame that err (or the context's cause)
// calls for and cuts the TCP connection if the client has not completed
// the handshake within closeHandshakeTimeout. It returns what was sent.
func (s *Server) closeConn(ctx context.Context, conn *websocket.Conn, err error) (websocket.StatusCode, string) {
	ce, ok := channels.AsClose(err)
	if !ok {
		if cause, isClose := channels.AsClose(context.Cause(ctx)); isClose {
			ce, ok = cause, true
		}
	}
	if !ok {
		if err == nil || isPeerGone(err) {
			// The client left; there is nobody to send a frame to.
			_ = conn.CloseNow()
			return websocket.StatusNormalClosure, "client left"
		}
		s.log.Warn("connection failed", zap.Error(err))
		ce = channels.Close(websocket.StatusInternalError, "internal error")
	}
	closeWithin(conn, ce)
	return ce.Code, ce.Reason
}

// closeWithin sends ce's close frame and cuts the TCP connection if the
// client has not completed the handshake within closeHandshakeTimeout.
func closeWithin(conn *websocket.Conn, ce *channels.CloseError) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = conn.Close(ce.Code, ce.Reason)
	}()
	t := time.NewTimer(closeHandshakeTimeout)
	defer t.Stop()
	select {
	case <-done:
	case <-t.C:
		_ = conn.CloseNow()
		<-done
	}
}

// isPeerGone reports whether err means the client closed or vanished: a
// close frame, a cancelled context, or the socket ending (EOF, reset,
// broken pipe). coder/websocket and net wrap with %w, so errors.Is sees
// through them; the messages are not matched.
func isPeerGone(err error) bool {
	return websocket.CloseStatus(err) != -1 || errors.Is(err, context.Canceled) ||
		errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE)
}

// isUpgrade reports whether r asks for a WebSocket.
func isUpgrade(r *http.Request) bool {
	return strings.EqualFold(r.Header.Get("Upgrade"), "websocket")
}

// checkHandshake refuses, before anything is attached (a browser dialled,
// a connection counted), what websocket.Accept would refuse with a plain
// text answer: no WebSocket handshake at all (a connect URL pasted into a
// browser) or a version other than 13 is 426 with the header that says
// what to send (RFC 9110 §15.5.22, RFC 6455 §4.4); a handshake without
// its key is 400.
func checkHandshake(w http.ResponseWriter, r *http.Request) error {
	if r.Method != http.MethodGet || !isUpgrade(r) || !hasToken(r.Header, "Connection", "upgrade") {
		w.Header().Set("Upgrade", "websocket")
		return problem.New(problem.UpgradeRequired, "this URL is a WebSocket endpoint: connect to it with a WebSocket client")
	}
	if v := r.Header.Get("Sec-WebSocket-Version"); v != "13" {
		w.Header().Set("Sec-WebSocket-Version", "13")
		return problem.New(problem.UpgradeRequired, "WebSocket version %q is not supported; this gateway speaks 13", v).
			With("field", "Sec-WebSocket-Version")
	}
	if r.Header.Get("Sec-WebSocket-Key") == "" {
		return problem.New(problem.InvalidArgument, "the WebSocket handshake has no Sec-WebSocket-Key").
			With("field", "Sec-WebSocket-Key")
	}
	return nil
}

// hasToken reports whether the comma-separated header name holds token
// (case-insensitively), as in "Connection: keep-alive, Upgrade".
func hasToken(h http.Header, name, token string) bool {
	for _, v := range h.Values(name) {
		for t := range strings.SplitSeq(v, ",") {
			if strings.EqualFold(strings.TrimSpace(t), token) {
				return true
			}
		}
	}
	return false
}

// connectToken takes the connect token from ?token= or, for clients that
// can set headers, Authorization: Bearer.
func connectToken(r *http.Request) string {
	if t := r.URL.Query().Get("token"); t != "" {
		return t
	}
	if scheme, tok, ok := strings.Cut(r.Header.Get("Authorization"), " "); ok && strings.EqualFold(scheme, "Bearer") {
		return strings.TrimSpace(tok)
	}
	return ""
}

// keepAlive pings the client every pingInterval so that proxies keep the
// connection and a peer that stopped answering is dropped. It uses a
// timer, not a goroutine per connection, so idle connections stay cheap.
func (s *Server) keepAlive(ctx context.Context, conn *websocket.Conn, lc *liveConn) (stop func()) {
	if s.pingInterval <= 0 {
		return func() {}
	}
	var t *time.Timer
	var ping func()
	ping = func() {
		pctx, cancel := context.WithTimeout(ctx, s.pingTimeout)
		defer cancel()
		if err := conn.Ping(pctx); err != nil {
			if ctx.Err() == nil {
				lc.cancel(causePingLost)
			}
			return
		}
		t.Reset(s.pingInterval)
	}
	t = time.AfterFunc(s.pingInterval, ping)
	return func() { t.Stop() }
}

// recordConnect stores and logs a connect event. A connect that cannot be
// audited is still served: the session was authorized at open, and
// refusing here would make a store hiccup cut terminals.
func (s *Server) recordConnect(ev *auditEvent) {
	s.logAudit(ev.Event)
	if err := s.sessions.AppendAudit(context.Background(), ev.Event); err != nil {
		s.auditFailed(ev.Event, "a connect event", err)
	}
}

// connectEvent starts the audit event of a connect to session sid; its
// principal becomes the session's creator once the session is read.
func (s *Server) connectEvent(r *http.Request, tenant, sid string) *auditEvent {
	return &auditEvent{lease.Event{
		ID: lease.NewEventID(), Time: lease.Millis(s.now()), TenantID: tenant, Principal: "connect-token",
		Action: lease.ActionConnect, Outcome: lease.Success, SessionID: sid,
		RequestID: requestID(r.Context()), RemoteAddr: r.RemoteAddr,
	}}
}

// recordDisconnect records the end of a connection with its close code.
func (s *Server) recordDisconnect(connectEv *auditEvent, code websocket.StatusCode, reason string) {
	s.recordEnd(connectEv, closeCodeName(code))
}

// recordEnd records the disconnect event of connectEv's connection with
// code (ws_<close code>, or http_<status> for a files transfer).
func (s *Server) recordEnd(connectEv *auditEvent, code string) {
	ev := connectEv.Event
	ev.ID, ev.Time, ev.Action = lease.NewEventID(), lease.Millis(s.now()), lease.ActionDisconnect
	ev.Code = code
	s.metrics.disconnects.WithLabelValues(ev.Code).Inc()
	s.logAudit(ev)
	if err := s.sessions.AppendAudit(context.Background(), ev); err != nil {
		s.auditFailed(ev, "a disconnect event", err)
	}
}

// closeCodeName is the audit code of a close: "ws_4408" etc.
func closeCodeName(c websocket.StatusCode) string {
	return "ws_" + strconv.Itoa(int(c))
}
