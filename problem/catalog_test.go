package problem_test

import (
	"errors"
	"flag"
	"fmt"
	"net/http"
	"os"
	"testing"
	"time"

	"github.com/nimbus/gateway/problem"
)

var update = flag.Bool("update", false, "rewrite docs/errors.md from the catalog")

// TestErrorsDoc keeps docs/errors.md in step with the catalog.
func TestErrorsDoc(t *testing.T) {
	const path = "../docs/errors.md"
	want := problem.Markdown()
	if *update {
		if err := os.WriteFile(path, []byte(want), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	got, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != want {
		t.Fatal("docs/errors.md is out of date: run go test ./problem -run TestErrorsDoc -update")
	}
}

// TestCatalog: the codes SPEC §4.4 requires exist, each once, with a
// client or server error status.
func TestCatalog(t *testing.T) {
	seen := map[problem.Code]bool{}
	for _, e := range problem.Catalog {
		if seen[e.Code] {
			t.Errorf("%s listed twice", e.Code)
		}
		seen[e.Code] = true
		if e.Status < 400 || e.Status > 599 || e.Title == "" || e.When == "" {
			t.Errorf("%s: incomplete entry %+v", e.Code, e)
		}
	}
	for _, c := range []problem.Code{"invalid_argument", "unauthenticated", "permission_denied", "not_found",
		"sandbox_not_ready", "channel_unsupported", "target_changed", "session_not_open", "resource_exhausted",
		"payload_too_large", "unavailable", "internal"} {
		if !seen[c] {
			t.Errorf("required code %s missing", c)
		}
	}
	if problem.Code("no_such_code").Status() != http.StatusInternalServerError {
		t.Error("an unknown code must read as internal")
	}
}

func TestErrorHelpers(t *testing.T) {
	cause := errors.New("disk on fire")
	e := problem.Wrap(problem.Unavailable, cause, "store down").With("store", "sqlite")
	e.RetryAfter = 1500 * time.Millisecond
	wrapped := fmt.Errorf("open: %w", e)
	if problem.CodeOf(wrapped) != problem.Unavailable || !errors.Is(wrapped, cause) {
		t.Fatalf("code %s", problem.CodeOf(wrapped))
	}
	if e.RetryAfterHeader() != "2" {
		t.Fatalf("Retry-After %q", e.RetryAfterHeader())
	}
	if got := problem.From(errors.New("x")); got.Code != problem.Internal {
		t.Fatalf("plain error reads as %s", got.Code)
	}
	if problem.CodeOf(nil) != "" {
		t.Fatal("nil error has a code")
	}
}
