package proxy

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"time"

	"go.uber.org/zap"

	"github.com/nimbus/gateway/problem"
)

type ctxKey int

const requestIDKey ctxKey = iota

// requestID returns the id withRequest gave the request.
func requestID(ctx context.Context) string {
	id, _ := ctx.Value(requestIDKey).(string)
	return id
}

func newRequestID() string {
	var b [12]byte
	_, _ = rand.Read(b[:])
	return "req_" + hex.EncodeToString(b[:])
}

// statusWriter remembers the status for the access log.
type statusWriter struct {
	http.ResponseWriter
	status int
}

func (w *statusWriter) WriteHeader(code int) {
	if w.status == 0 {
		w.status = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(p []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	return w.ResponseWriter.Write(p)
}

// Unwrap lets http.ResponseController (and the WebSocket upgrade) reach
// the underlying writer.
func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// withRequest gives every request an id (echoed in X-Request-Id), an
// access-log line and panic recovery. The log line carries the path and
// never the query: connect tokens travel in the query string, so logging
// it would leak bearer credentials.
func (s *Server) withRequest(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		rid := newRequestID()
		w.Header().Set("X-Request-Id", rid)
		r = r.WithContext(context.WithValue(r.Context(), requestIDKey, rid))
		sw := &statusWriter{ResponseWriter: w}
		defer func() {
			if p := recover(); p != nil {
				if p == http.ErrAbortHandler {
					panic(p)
				}
				s.log.Error("panic serving request", zap.String("requestId", rid), zap.Any("panic", p), zap.Stack("stack"))
				if sw.status == 0 {
					s.writeError(sw, r, problem.Wrap(problem.Internal, fmt.Errorf("panic: %v", p), ""))
				}
			}
			s.metrics.requests.WithLabelValues(r.Method, fmt.Sprint(sw.status)).Inc()
			s.log.Info("http request", zap.String("requestId", rid), zap.String("method", r.Method),
				zap.String("path", r.URL.Path), zap.Int("status", sw.status),
				zap.Duration("duration", time.Since(start)), zap.String("remoteAddr", r.RemoteAddr))
		}()
		next.ServeHTTP(sw, r)
	})
}

var errDraining = problem.New(problem.Unavailable, "the gateway is shutting down")

func errStoreDown(err error) error {
	return problem.Wrap(problem.Unavailable, err, "the store is unavailable")
}

// errStoreUnwritable is /readyz's answer while the store reads but a
// write would not commit: details.check is "store_space" when its file
// system is (nearly) full, else "store_write" (a read-only database, a
// write that failed).
func errStoreUnwritable(err error) error {
	check := "store_write"
	var pe *problem.Error
	if errors.As(err, &pe) && pe.Details["check"] == "store_space" {
		check = "store_space"
	}
	return problem.Wrap(problem.Unavailable, err, "the store cannot write").With("check", check)
}
