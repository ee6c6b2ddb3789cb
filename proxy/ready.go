package proxy

import (
	"context"
	"sync"
	"time"
)

// writeProbeEvery is how long a write probe's answer stands: /readyz is
// unauthenticated and polled by every load balancer, and each probe
// allocates space and commits a write (store.CheckWritable), so probes
// are shared rather than run per request.
const writeProbeEvery = time.Second

// writeProbe runs Options.Writable at most once per writeProbeEvery and
// one at a time; callers in between get the last answer.
type writeProbe struct {
	check func(context.Context) error // static
	now   func() time.Time            // static

	mu  sync.Mutex // held while a probe runs
	at  time.Time  // guarded by mu: when err was found
	err error      // guarded by mu
}

// result is the probe's answer, probing again when the last one is
// older than writeProbeEvery.
func (p *writeProbe) result(ctx context.Context) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.at.IsZero() && p.now().Sub(p.at) < writeProbeEvery {
		return p.err
	}
	p.err = p.check(ctx)
	p.at = p.now()
	return p.err
}
