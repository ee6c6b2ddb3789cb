package proxy

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/coder/websocket"
	"github.com/gorilla/mux"
	"go.uber.org/zap"

	"github.com/nimbus/gateway/channels"
	"github.com/nimbus/gateway/lease"
	"github.com/nimbus/gateway/problem"
	"github.com/nimbus/gateway/targets"
)

// filesBackend serves the files channel of a sandbox's file root.
type filesBackend struct {
	s     *Server
	root  string
	owner *targets.Credential // the sandbox's workload user; nil for the gateway's
}

func (b *filesBackend) protocols() []string { return []string{channels.FilesProtocol} }

func (b *filesBackend) serve(ctx context.Context, conn *websocket.Conn) error {
	return channels.ServeFiles(ctx, conn, b.root, b.s.filesOptions(b.owner))
}

func (b *filesBackend) release() {}

// filesOptions are the files channel's options for a sandbox whose
// workload runs as owner (nil: as the gateway).
func (s *Server) filesOptions(owner *targets.Credential) channels.FilesOptions {
	o := channels.FilesOptions{
		MaxFileSize:  s.maxFileSize,
		MinFreeBytes: s.minFreeBytes,
		OnBytes:      func(dir string, n int) { s.metrics.bytes.WithLabelValues("files", dir).Add(float64(n)) },
	}
	if owner != nil {
		o.Owner = &channels.Owner{UID: int(owner.UID), GID: int(owner.GID)}
	}
	return o
}

// attachFiles finds the file root of a session's sandbox.
func (s *Server) attachFiles(sess *lease.Session) (*filesBackend, error) {
	sb, err := s.catalog.GetSandbox(context.Background(), sess.TenantID, sess.Snapshot.Sandbox)
	// A deleted (stopped) sandbox's root is the gateway's again, and its
	// user id may be another sandbox's: no more file access through it.
	// A failed one keeps its files readable for a post-mortem.
	if err != nil || sb.Root == "" || sb.State == targets.Stopped {
		return nil, problem.New(problem.BadGateway, "the file root of sandbox %s is not available", sess.Snapshot.Sandbox).
			With("sandbox", sess.Snapshot.Sandbox)
	}
	return &filesBackend{s: s, root: sb.Root, owner: s.catalog.RunAs(sess.TenantID, sb.ID)}, nil
}

// filesHTTP is the plain-HTTP face of the files channel (SPEC §5.2):
// GET/HEAD/PUT/DELETE /v1/connect/{session}/files/{path}, authorized by a
// files connect token. A transfer is a connection like any other: it
// counts against the session's limit and is cut when the session ends.
func (s *Server) filesHTTP(w http.ResponseWriter, r *http.Request) {
	sid := mux.Vars(r)["session"]
	s.serveFilesHTTP(w, r, sid, mux.Vars(r)["path"])
}

func (s *Server) serveFilesHTTP(w http.ResponseWriter, r *http.Request, sid, path string) {
	claims, err := s.connectKeys.VerifyForLate(connectToken(r), sid, string(lease.Files))
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	if cur, err := s.sessions.GetSession(r.Context(), claims.Tenant, sid); err == nil && s.isRemote(cur) {
		s.proxyToOwner(w, r, cur)
		return
	}
	// A transfer is audited like a WebSocket connection: connect (or the
	// refusal) before, disconnect with its HTTP status after.
	ev := s.connectEvent(r, claims.Tenant, sid)
	sess, be, adm, err := s.admit(r, claims, lease.Files, nil, nil)
	if err != nil {
		ev.Outcome, ev.Code = outcomeOf(err), string(problem.CodeOf(err))
		s.writeError(w, r, s.recordDenied(r.Context(), ev, err))
		return
	}
	defer adm.unregister()
	defer be.release()
	fb := be.(*filesBackend)
	ev.Principal, ev.Target = sess.CreatedBy, sess.Target.String()
	s.recordConnect(ev)
	sw := &statusWriter{ResponseWriter: w}
	w = sw
	defer func() { s.recordTransferEnd(adm.ctx, ev, sw.status) }()

	// The session's end cuts the transfer: deadlines in the past make the
	// body read or the response write in progress fail at once.
	rc := http.NewResponseController(w)
	stop := context.AfterFunc(adm.ctx, func() {
		now := time.Now()
		_ = rc.SetReadDeadline(now)
		_ = rc.SetWriteDeadline(now)
	})
	defer stop()
	s.metrics.conns.WithLabelValues("files").Inc()
	defer s.metrics.conns.WithLabelValues("files").Dec()

	err = channels.FilesHTTP(w, r.WithContext(adm.ctx), fb.root, path, s.filesOptions(fb.owner))
	var pe *problem.Error
	switch {
	case err == nil:
	case errors.As(err, &pe):
		s.writeError(w, r, pe)
	default:
		s.log.Info("files transfer ended early", zap.String("sessionId", sess.ID),
			zap.String("requestId", requestID(r.Context())), zap.Error(err))
	}
}

// recordTransferEnd records the end of a files HTTP transfer: code
// http_<status>, or the close code of the session's end that cut it.
func (s *Server) recordTransferEnd(ctx context.Context, connectEv *auditEvent, status int) {
	code := fmt.Sprintf("http_%d", status)
	if ce, ok := channels.AsClose(context.Cause(ctx)); ok {
		code = closeCodeName(ce.Code)
	}
	s.recordEnd(connectEv, code)
}
