package targets

// defaultRingSize is the replay ring's size (SPEC §5.1: "ring buffer,
// default 64 KiB").
const defaultRingSize = 64 << 10

// ring keeps the most recent output for replay to new subscribers: at most
// size bytes, oldest trimmed first, each byte still tagged with its stream.
// It holds Chunks that share their Data with the subscribers' queues, so
// adding costs no copy; it holds a reference to each (Chunk.Release). Not safe for concurrent use: hub.mu guards it.
type ring struct {
	size   int
	chunks []Chunk // live chunks are chunks[head:]
	head   int
	bytes  int // total len(Data) of the live chunks, ≤ size
}

// add appends c, then trims from the front until at most size bytes remain;
// the oldest chunk may be cut in the middle.
func (r *ring) add(c Chunk) {
	if r.size <= 0 || len(c.Data) == 0 {
		return
	}
	c.retain()
	if len(c.Data) >= r.size {
		ReleaseAll(r.chunks[r.head:])
		clear(r.chunks)
		r.chunks, r.head = r.chunks[:0], 0
		c.Data, c.msg = c.Data[len(c.Data)-r.size:], nil
		r.chunks = append(r.chunks, c)
		r.bytes = len(c.Data)
		return
	}
	r.chunks = append(r.chunks, c)
	r.bytes += len(c.Data)
	for r.bytes > r.size {
		f := &r.chunks[r.head]
		if over := r.bytes - r.size; over < len(f.Data) {
			f.Data, f.msg = f.Data[over:], nil
			r.bytes -= over
			break
		}
		r.bytes -= len(f.Data)
		f.Release() // the trimmed data may be reused or collected
		r.head++
	}
	// Compact once the dead prefix dominates, so the slice stays bounded
	// however long the workload runs (amortised O(1) per add).
	if r.head >= 32 && r.head*2 >= len(r.chunks) {
		n := copy(r.chunks, r.chunks[r.head:])
		clear(r.chunks[n:])
		r.chunks, r.head = r.chunks[:n], 0
	}
}

// appendTo appends the ring's content, oldest first, to dst and returns it
// with its byte count; dst holds its own reference to every chunk.
func (r *ring) appendTo(dst []Chunk) ([]Chunk, int) {
	live := r.chunks[r.head:]
	for _, c := range live {
		c.retain()
	}
	return append(dst, live...), r.bytes
}
