package channels_test

import (
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/nimbus/gateway/channels"
)

// A long reason is cut to what a close frame carries, never inside a
// character.
func TestCloseReasonCut(t *testing.T) {
	for _, reason := range []string{
		strings.Repeat("a", 200),
		strings.Repeat("é", 100),      // 2 bytes each: 123 falls inside one
		strings.Repeat("€", 50),       // 3 bytes each
		"x" + strings.Repeat("😀", 40), // 4 bytes each
		"short",
	} {
		got := channels.Close(4410, reason).Reason
		if len(got) > 123 || !utf8.ValidString(got) || !strings.HasPrefix(reason, got) || len(reason) > 123 && len(got) < 120 {
			t.Errorf("reason %q… cut to %d bytes %q", reason[:10], len(got), got)
		}
	}
}
