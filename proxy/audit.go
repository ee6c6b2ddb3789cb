package proxy

import (
	"context"
	"net/http"

	"go.uber.org/zap"

	"github.com/nimbus/gateway/authn"
	"github.com/nimbus/gateway/lease"
	"github.com/nimbus/gateway/problem"
)

// auditEvent is an event being filled in while a request runs.
type auditEvent struct{ lease.Event }

// event starts the audit event of a request by p.
func (s *Server) event(r *http.Request, p *authn.Principal, a lease.Action) *auditEvent {
	return &auditEvent{lease.Event{
		ID: lease.NewEventID(), Time: lease.Millis(s.now()), TenantID: p.Tenant, Principal: p.Subject,
		Action: a, Outcome: lease.Success, RequestID: requestID(r.Context()), RemoteAddr: r.RemoteAddr,
	}}
}

// withSession returns the event completed with sess.
func (ev *auditEvent) withSession(sess *lease.Session) lease.Event {
	e := ev.Event
	e.SessionID, e.Target = sess.ID, sess.Target.String()
	return e
}

// outcomeOf classifies a failure: refused by policy is denied, anything
// else failed.
func outcomeOf(err error) lease.Outcome {
	switch problem.CodeOf(err) {
	case problem.PermissionDenied, problem.Unauthenticated:
		return lease.Denied
	}
	return lease.Failure
}

// logAudit writes an event to the log (the store already has it).
func (s *Server) logAudit(ev lease.Event) {
	s.log.Info("audit", lease.AuditFields(ev)...)
}

// recordDenied stores and logs the event of a refused request and
// returns what to answer: cause, or 503 unavailable when the event could
// not be stored. A refusal that leaves no trace in the audit trail must
// not pass for an ordinary one (issue 12: with the disk full, denied
// opens were answered 403 and their events lost); the client may retry,
// and the loss is logged at error level and counted.
func (s *Server) recordDenied(ctx context.Context, ev *auditEvent, cause error) error {
	s.logAudit(ev.Event)
	if err := s.sessions.AppendAudit(context.WithoutCancel(ctx), ev.Event); err != nil {
		s.auditFailed(ev.Event, "a denied event", err)
		return problem.Wrap(problem.Unavailable, err, "the refusal could not be recorded in the audit trail")
	}
	return cause
}

// auditFailed logs, at error level, and counts (by action) an event the
// store did not take; what names the kind of event for the log.
func (s *Server) auditFailed(ev lease.Event, what string, err error) {
	s.metrics.auditFailures.WithLabelValues(string(ev.Action)).Inc()
	s.log.Error("audit: storing "+what+" failed", zap.String("eventId", ev.ID), zap.String("action", string(ev.Action)),
		zap.String("outcome", string(ev.Outcome)), zap.String("code", ev.Code), zap.Error(err))
}

// recordLookup stores the event of a read (get, list, connect URLs) with
// the read's outcome. Lookups fail closed: a read whose audit record
// cannot be stored is not served, so no read goes unrecorded.
func (s *Server) recordLookup(ctx context.Context, ev *auditEvent, readErr error) error {
	if readErr != nil {
		ev.Outcome, ev.Code = outcomeOf(readErr), string(problem.CodeOf(readErr))
	}
	s.logAudit(ev.Event)
	if err := s.sessions.AppendAudit(ctx, ev.Event); err != nil {
		s.auditFailed(ev.Event, "a lookup event", err)
		if readErr != nil {
			return readErr
		}
		return err
	}
	return readErr
}
