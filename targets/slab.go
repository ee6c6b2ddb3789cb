package targets

import (
	"sync"
	"sync/atomic"
)

// slab is a buffer workload output is read into. Chunks are slices of it,
// shared by the replay ring and every subscriber's queue; it counts them,
// and when the last is released it goes back to its pool.
// Reusing slabs spares a bulk writer's stream a fresh megabyte per
// megabyte of output: the runtime's zeroing, the kernel's page faults on
// first touch and the garbage collections that allocation rate triggers
// (BENCHMARKS.md).
type slab struct {
	buf  []byte
	refs atomic.Int32
}

// slabPools hold released slabs, one pool per size a stream's slabs take
// as they grow: minSlab × 4ⁿ up to slabSize.
var slabPools [slabClasses]sync.Pool

// slabClasses is the number of slab sizes: minSlab, ×4, … slabSize.
const slabClasses = 4

// slabClass is the index in slabPools of size, or -1.
func slabClass(size int) int {
	for c, n := 0, minSlab; c < slabClasses; c, n = c+1, n*4 {
		if n == size {
			return c
		}
	}
	return -1
}

// newSlab returns a slab of size bytes, referenced once (by its reader).
// Its content is garbage: only what a read put there is ever handed out.
func newSlab(size int) *slab {
	var s *slab
	if c := slabClass(size); c >= 0 {
		s, _ = slabPools[c].Get().(*slab)
	}
	if s == nil {
		s = &slab{buf: make([]byte, size)}
	}
	s.refs.Store(1)
	return s
}

func (s *slab) retain() { s.refs.Add(1) }

func (s *slab) release() {
	switch n := s.refs.Add(-1); {
	case n == 0:
		if c := slabClass(len(s.buf)); c >= 0 {
			slabPools[c].Put(s)
		}
	case n < 0:
		panic("targets: slab released more often than retained")
	}
}

// retain records one more holder of c's memory (a queue, the ring).
func (c Chunk) retain() {
	if c.slab != nil {
		c.slab.retain()
	}
}

// Release ends the caller's hold on the chunk's memory and zeroes *c, so a
// second Release is a no-op. Call it once for every chunk
// Subscription.Next returned, when done with its Data (after the write
// that sent it): the memory is then reused for later output, and Data
// must not be read again. A chunk never released is collected by the
// garbage collector as usual; its slab is just not reused.
func (c *Chunk) Release() {
	if c.slab != nil {
		c.slab.release()
	}
	*c = Chunk{}
}

// ReleaseAll releases every chunk of cs (see Chunk.Release).
func ReleaseAll(cs []Chunk) {
	for i := range cs {
		cs[i].Release()
	}
}

// Message returns the chunk as a stdio wire message — its stream byte
// followed by Data — when the slab holds them that way (a whole read of
// the workload's output), so it can be sent without being copied; nil
// otherwise (a chunk the replay ring trimmed). Like Data it is read-only.
func (c Chunk) Message() []byte { return c.msg }
