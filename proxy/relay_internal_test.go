package proxy

import (
	"errors"
	"io"
	"net/http"
	"net/url"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nimbus/gateway/problem"
)

// The owner's refusal reaches a relayed client as the owner wrote it:
// code, detail, details and Retry-After.
func TestOwnerProblemKeepsRetryAfter(t *testing.T) {
	resp := &http.Response{
		StatusCode: http.StatusTooManyRequests,
		Header:     http.Header{"Retry-After": {"7"}},
		Body: io.NopCloser(strings.NewReader(`{"status":429,"code":"resource_exhausted",` +
			`"detail":"session ses_1 has 32 connections","details":{"limit":32}}`)),
	}
	pe := ownerProblem(resp)
	if pe == nil || pe.Code != problem.ResourceExhausted || pe.Details["limit"] != float64(32) ||
		pe.RetryAfter != 7*time.Second || pe.RetryAfterHeader() != "7" {
		t.Fatalf("relayed problem = %+v", pe)
	}
}

// A failed dial to the owner keeps its cause but not the URL it quoted,
// token included.
func TestDialCauseDropsTheURL(t *testing.T) {
	err := &url.Error{Op: "Get", URL: "http://10.0.0.2:8080/v1/connect/ses_1/stdio?token=SECRET",
		Err: syscall.ECONNREFUSED}
	got := dialCause(errors.Join(errors.New("failed to WebSocket dial"), err))
	if strings.Contains(got.Error(), "SECRET") || !errors.Is(got, syscall.ECONNREFUSED) {
		t.Fatalf("dialCause = %v", got)
	}
}
