package targets

import (
	"context"
	"testing"
	"testing/synctest"
	"time"
)

// TestHubOnDrop: the hub's slow-consumer rule tells the subscriber it
// drops through OnDrop, once, before Next reports ErrSlowConsumer; the
// stdio adapter relies on it to close a client stuck in a write with 4429.
func TestHubOnDrop(t *testing.T) {
	t.Parallel()
	t.Run("hard limit", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			h := &hub{ring: ring{size: 64}}
			var calls int // guarded by h.mu: OnDrop runs with the hub locked
			s := h.subscribe(SubscribeOptions{MaxBacklog: 4, HardLimit: 8, Grace: time.Hour, OnDrop: func() { calls++ }})
			defer s.Close()
			other := h.subscribe(SubscribeOptions{OnDrop: func() { t.Error("OnDrop of a subscriber not dropped") }})
			defer other.Close()

			// A Next already waiting when the drop comes sees OnDrop's work.
			nextErr := make(chan error, 1)
			go func() {
				_, err := s.Next(context.Background(), nil)
				h.mu.Lock()
				if calls != 1 {
					t.Errorf("Next returned %v with OnDrop called %d times", err, calls)
				}
				h.mu.Unlock()
				nextErr <- err
			}()
			synctest.Wait()
			h.publish(Chunk{Stream: Stdout, Data: []byte("abcdefghij")})
			if err := <-nextErr; err != ErrSlowConsumer {
				t.Fatalf("Next = %v, want ErrSlowConsumer", err)
			}
			h.publish(Chunk{Stream: Stdout, Data: []byte("more")})
			s.Close()
			h.mu.Lock()
			defer h.mu.Unlock()
			if calls != 1 || h.dropped != 1 {
				t.Fatalf("OnDrop called %d times, hub counted %d drops; want 1, 1", calls, h.dropped)
			}
		})
	})
	t.Run("grace", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			const grace = 5 * time.Second
			h := &hub{ring: ring{size: 64}}
			var calls int // guarded by h.mu
			called := func() int { h.mu.Lock(); defer h.mu.Unlock(); return calls }
			s := h.subscribe(SubscribeOptions{MaxBacklog: 4, Grace: grace, OnDrop: func() { calls++ }})
			defer s.Close()

			// Over the bound, then the producer goes quiet: only the
			// grace timer can drop s.
			h.publish(Chunk{Stream: Stdout, Data: []byte("abcde")})
			time.Sleep(grace - time.Nanosecond)
			synctest.Wait()
			if n := called(); n != 0 {
				t.Fatalf("OnDrop called %d times before the grace ended", n)
			}
			time.Sleep(time.Nanosecond)
			synctest.Wait()
			if n := called(); n != 1 {
				t.Fatalf("OnDrop called %d times once the grace ended, want 1", n)
			}
			if _, err := s.Next(context.Background(), nil); err != ErrSlowConsumer {
				t.Fatalf("Next = %v, want ErrSlowConsumer", err)
			}
		})
	})
	t.Run("close", func(t *testing.T) {
		t.Parallel()
		h := &hub{ring: ring{size: 64}}
		s := h.subscribe(SubscribeOptions{MaxBacklog: 4, Grace: time.Hour, OnDrop: func() { t.Error("OnDrop called for a Close") }})
		h.publish(Chunk{Stream: Stdout, Data: []byte("abcde")})
		s.Close()
		if _, err := s.Next(context.Background(), nil); err != ErrClosed {
			t.Fatalf("Next = %v, want ErrClosed", err)
		}
	})
}
