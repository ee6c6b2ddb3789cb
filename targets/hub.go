package targets

import (
	"context"
	"io"
	"sync"
	"time"
)

// Defaults of SubscribeOptions (SPEC §5.1).
const (
	defaultMaxBacklog = 1 << 20
	defaultGrace      = 5 * time.Second
	hardLimitFactor   = 64
)

// maxIdleQueueCap bounds the queue capacity a subscription keeps between
// bursts, so that thousands of idle subscribers stay small.
const maxIdleQueueCap = 64

// SubscribeOptions tune one subscriber's slow-consumer rule. The zero value
// is the SPEC default.
type SubscribeOptions struct {
	// MaxBacklog is the bound on queued, not yet returned bytes; 0 means
	// 1 MiB.
	MaxBacklog int
	// Grace is how long the backlog may stay over MaxBacklog before the
	// subscriber is dropped; 0 means 5 s.
	Grace time.Duration
	// HardLimit drops the subscriber at once, grace or not, when its
	// backlog passes it. It bounds memory: a workload writing 1 GB/s to a
	// stalled client would otherwise queue gigabytes during Grace. 0 means
	// 64 × MaxBacklog.
	HardLimit int
	// OnDrop, if not nil, is called once when the hub drops the subscriber
	// by this rule, before Next can report ErrSlowConsumer. It tells a
	// subscriber that is not in Next — one stuck writing to a client that
	// stopped reading — what Next would tell it only once it came back,
	// which for a frozen client is never. It runs on the goroutine that
	// dropped the subscriber (the workload's output reader or the grace
	// timer) with the hub locked: it must not block, and must not call the
	// Subscription or the Workload.
	OnDrop func()
}

// Chunk is one piece of workload output. Data is shared read-only by every
// subscriber and the replay ring: never modify it.
type Chunk struct {
	// Stream is 1 for stdout, 2 for stderr (the stdio wire's stream byte;
	// a PTY's output is all stdout).
	Stream byte
	Data   []byte

	msg  []byte // Stream then Data, contiguous in the slab; nil if not
	slab *slab  // the memory Data is in; nil if not counted
}

// Output streams, numbered as on the stdio wire (SPEC §5.1).
const (
	Stdout byte = 1
	Stderr byte = 2
)

// hub fans a workload's output out to its subscribers without ever
// blocking the readers (SPEC §5.1): publish appends the chunk to the ring
// and to every subscriber's queue and pokes it through a 1-buffered channel;
// subscribers that fall behind are dropped by rule, never waited for
// (tailscale derp's sendPkt policy). That rule (SubscribeOptions) is the
// gateway's only slow-consumer rule: the stdio adapter learns of a drop
// from Next and OnDrop and closes its client with 4429.
type hub struct {
	mu sync.Mutex
	// Guarded by mu.
	ring     ring
	subs     []*Subscription // attached subscriptions; Subscription.idx is the index
	finished bool            // no more output: every stream hit EOF and the process was reaped
	bytesOut uint64
	dropped  uint64
}

// Subscription is one attachment to a workload's output: first the replayed
// ring content, then everything the workload writes, until io.EOF. It holds
// no goroutine and no buffer of its own. Next must not be called
// concurrently with itself; Close may be called from any goroutine.
type Subscription struct {
	// Static after Subscribe.
	h         *hub
	wake      chan struct{} // 1-buffered; a token means "look again"
	max       int
	hard      int
	grace     time.Duration
	onDrop    func() // nil if none
	replayed  int
	slowTimer *time.Timer // created once; armed while the backlog is over max

	// Guarded by h.mu.
	idx       int // index in h.subs; -1 once detached
	queue     []Chunk
	queued    int       // bytes in queue
	overSince time.Time // when queued last went over max; zero when under
	dropped   bool
	closed    bool
}

// subscribe attaches a new subscriber, its queue primed with the ring.
func (h *hub) subscribe(opt SubscribeOptions) *Subscription {
	s := &Subscription{h: h, wake: make(chan struct{}, 1), max: opt.MaxBacklog, hard: opt.HardLimit, grace: opt.Grace, onDrop: opt.OnDrop, idx: -1}
	if s.max <= 0 {
		s.max = defaultMaxBacklog
	}
	if s.grace <= 0 {
		s.grace = defaultGrace
	}
	if s.hard <= 0 {
		s.hard = hardLimitFactor * s.max
	}
	if s.hard < s.max {
		s.hard = s.max
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	s.queue, s.replayed = h.ring.appendTo(nil)
	s.queued = s.replayed
	if !h.finished {
		s.idx = len(h.subs)
		h.subs = append(h.subs, s)
	}
	return s
}

// publish hands c to the ring and every subscriber, each taking its own
// reference; the caller keeps its own. It never blocks on a subscriber:
// the cost is O(subscribers) slice appends under mu.
func (h *hub) publish(c Chunk) {
	n := len(c.Data)
	var now time.Time // read lazily: only a subscriber over its bound needs it
	h.mu.Lock()
	defer h.mu.Unlock()
	h.bytesOut += uint64(n)
	h.ring.add(c)
	for i := 0; i < len(h.subs); {
		s := h.subs[i]
		c.retain()
		s.queue = append(s.queue, c)
		s.queued += n
		if s.queued > s.max {
			if now.IsZero() {
				now = time.Now()
			}
			switch {
			case s.queued > s.hard:
				h.dropLocked(s) // swaps the last subscriber into i
				continue
			case s.overSince.IsZero():
				s.overSince = now
				s.armLocked(s.grace)
			case now.Sub(s.overSince) >= s.grace:
				h.dropLocked(s)
				continue
			}
		}
		s.notify()
		i++
	}
}

// finish marks the end of output and wakes every subscriber so that those
// with an empty queue return io.EOF.
func (h *hub) finish() {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.finished = true
	for _, s := range h.subs {
		s.notify()
	}
}

// dropLocked detaches s as a slow consumer, frees its queue and tells its
// owner: OnDrop, and a blocked Next returns ErrSlowConsumer.
func (h *hub) dropLocked(s *Subscription) {
	h.detachLocked(s)
	s.dropped = true
	h.dropped++
	if s.onDrop != nil {
		s.onDrop()
	}
	s.notify()
}

// detachLocked removes s from subs (swap with the last) and releases its
// queue and timer.
func (h *hub) detachLocked(s *Subscription) {
	if i := s.idx; i >= 0 {
		last := len(h.subs) - 1
		h.subs[i] = h.subs[last]
		h.subs[i].idx = i
		h.subs[last] = nil
		h.subs = h.subs[:last]
		s.idx = -1
	}
	ReleaseAll(s.queue)
	s.queue, s.queued = nil, 0
	s.overSince = time.Time{}
	if s.slowTimer != nil {
		s.slowTimer.Stop()
	}
}

// armLocked starts (or restarts) the slow-consumer timer, so that a
// subscriber is dropped on time even when the producer has stalled and no
// publish comes to check it.
func (s *Subscription) armLocked(d time.Duration) {
	if s.slowTimer == nil {
		s.slowTimer = time.AfterFunc(d, s.checkSlow)
		return
	}
	s.slowTimer.Reset(d)
}

// checkSlow runs on the timer: drop s if its backlog has stayed over the
// bound for Grace; re-arm when it went under and over again meanwhile.
func (s *Subscription) checkSlow() {
	h := s.h
	h.mu.Lock()
	defer h.mu.Unlock()
	if s.idx < 0 || s.overSince.IsZero() {
		return
	}
	if d := time.Since(s.overSince); d < s.grace {
		s.slowTimer.Reset(s.grace - d)
		return
	}
	h.dropLocked(s)
}

func (s *Subscription) notify() {
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// Replayed is the number of bytes of recent output (the replay ring) this
// subscriber was given before any new output; the stdio hello reports it.
func (s *Subscription) Replayed() int { return s.replayed }

// Next blocks until output is queued and returns all of it, appended to
// dst, oldest first; the caller releases each chunk (Chunk.Release) when
// done with it. Once the workload has exited and every byte has been
// returned it returns io.EOF (Workload.Exit is then valid); after the
// subscriber was dropped, ErrSlowConsumer; after Close, ErrClosed; when ctx
// ends first, ctx.Err(). Returning the queue resets the backlog to zero.
func (s *Subscription) Next(ctx context.Context, dst []Chunk) ([]Chunk, error) {
	h := s.h
	for {
		var err error
		h.mu.Lock()
		switch {
		case len(s.queue) > 0:
			dst = append(dst, s.queue...)
			clear(s.queue) // the chunks now belong to dst
			if cap(s.queue) > maxIdleQueueCap {
				s.queue = nil
			} else {
				s.queue = s.queue[:0]
			}
			s.queued = 0
			if !s.overSince.IsZero() {
				s.overSince = time.Time{}
				s.slowTimer.Stop()
			}
			h.mu.Unlock()
			return dst, nil
		case s.dropped:
			err = ErrSlowConsumer
		case s.closed:
			err = ErrClosed
		case h.finished:
			err = io.EOF
		}
		h.mu.Unlock()
		if err != nil {
			return dst, err
		}
		select {
		case <-s.wake:
		case <-ctx.Done():
			return dst, ctx.Err()
		}
	}
}

// Close detaches the subscriber and frees its queue; a blocked Next
// returns ErrClosed. Idempotent.
func (s *Subscription) Close() {
	h := s.h
	h.mu.Lock()
	defer h.mu.Unlock()
	if s.closed {
		return
	}
	h.detachLocked(s)
	s.closed = true
	s.notify()
}
