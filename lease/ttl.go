package lease

import (
	"time"

	"github.com/nimbus/gateway/problem"
)

// TTLPolicy turns a requested TTL into a granted one.
type TTLPolicy struct {
	// Default applies when the request names none; zero means 15 minutes.
	Default time.Duration
	// Max caps every grant; zero means one hour.
	Max time.Duration
}

// MinRequestedTTLMs is the smallest requestedTtlMs accepted (SPEC §4.1).
const MinRequestedTTLMs = 1000

// Grant returns the TTL granted for requestedMs (nil: none requested).
// A request above the cap is capped, not refused; one below the minimum is
// invalid_argument.
func (p TTLPolicy) Grant(requestedMs *int64) (time.Duration, error) {
	def, max := p.Default, p.Max
	if def <= 0 {
		def = 15 * time.Minute
	}
	if max <= 0 {
		max = time.Hour
	}
	ttl := def
	if requestedMs != nil {
		if *requestedMs < MinRequestedTTLMs {
			return 0, problem.New(problem.InvalidArgument, "requestedTtlMs must be at least %d", MinRequestedTTLMs).
				With("field", "requestedTtlMs")
		}
		// Compare in milliseconds first: a huge request would overflow
		// time.Duration.
		if *requestedMs >= max.Milliseconds() {
			return max, nil
		}
		ttl = time.Duration(*requestedMs) * time.Millisecond
	}
	if ttl > max {
		ttl = max
	}
	return ttl, nil
}
