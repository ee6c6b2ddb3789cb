package proxy

import (
	"encoding/json"
	"errors"
	"net/http"

	"go.uber.org/zap"

	"github.com/nimbus/gateway/problem"
)

// problemBody is the RFC 9457 document every non-2xx response carries.
type problemBody struct {
	Type      string         `json:"type"`
	Title     string         `json:"title"`
	Status    int            `json:"status"`
	Code      problem.Code   `json:"code"`
	Detail    string         `json:"detail,omitempty"`
	RequestID string         `json:"requestId"`
	Details   map[string]any `json:"details,omitempty"`
}

// writeError is the one way out for every HTTP failure: it maps err to its
// catalog entry and writes problem+json. Internal causes are logged with
// the request id and never sent to the client.
func (s *Server) writeError(w http.ResponseWriter, r *http.Request, err error) {
	pe := problem.From(err)
	e := problem.Lookup(pe.Code)
	rid := requestID(r.Context())
	if pe.Code == problem.Internal || pe.Code == problem.Unavailable {
		s.log.Error("request failed", zap.String("requestId", rid), zap.String("code", string(pe.Code)),
			zap.String("path", r.URL.Path), zap.Error(pe))
	}
	detail := pe.Detail
	if pe.Code == problem.Internal {
		detail = "internal error; see the gateway log for request " + rid
	}
	if ra := pe.RetryAfterHeader(); ra != "" {
		w.Header().Set("Retry-After", ra)
	}
	w.Header().Set("Content-Type", "application/problem+json")
	w.Header().Set("Cache-Control", "no-store")
	status := pe.HTTPStatus()
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(problemBody{
		Type: "urn:nimbus:error:" + string(e.Code), Title: e.Title, Status: status,
		Code: e.Code, Detail: detail, RequestID: rid, Details: pe.Details,
	})
}

// writeJSON writes v with status.
func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

// errNotFoundRoute and errMethod answer unknown routes in problem+json, so
// even a typo in a path gets a stable code.
var (
	errNotFoundRoute = problem.New(problem.NotFound, "no such route")
	errMethod        = problem.New(problem.MethodNotAllowed, "method not allowed on this route")
)

// isCode reports whether err carries code c.
func isCode(err error, c problem.Code) bool {
	var pe *problem.Error
	return errors.As(err, &pe) && pe.Code == c
}
