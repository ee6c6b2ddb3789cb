package client_test

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/nimbus/gateway/client"
)

// A connect refused before the upgrade comes back as *client.Error.
func TestDialStdioProblem(t *testing.T) {
	t.Parallel()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/problem+json")
		w.Header().Set("X-Request-Id", "req_1")
		w.WriteHeader(http.StatusConflict)
		w.Write([]byte(`{"status":409,"code":"session_not_open","title":"Session not open","detail":"session ses_1 is closed"}`))
	}))
	defer srv.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, err := client.DialStdio(ctx, "ws"+strings.TrimPrefix(srv.URL, "http")+"/v1/connect/ses_1/stdio?token=x")
	var e *client.Error
	if !errors.As(err, &e) || e.Status != 409 || e.Code != "session_not_open" || e.RequestID != "req_1" {
		t.Fatalf("err = %#v", err)
	}
}
