package targets

import (
	"bytes"
	"context"
	"io"
	"testing"
	"time"
)

// TestChunkRefsBalance follows one slab's count through every holder: the
// reader, the ring, two queues, a caller of Next, a trim, a close.
func TestChunkRefsBalance(t *testing.T) {
	t.Parallel()
	h := &hub{ring: ring{size: 8}}
	a := h.subscribe(SubscribeOptions{})
	b := h.subscribe(SubscribeOptions{})
	sl := newSlab(slabSize)
	refs := func(want int32, when string) {
		t.Helper()
		if got := sl.refs.Load(); got != want {
			t.Fatalf("%s: %d references, want %d", when, got, want)
		}
	}
	sl.buf[0] = Stdout
	copy(sl.buf[1:], "abcd")
	h.publish(Chunk{Stream: Stdout, Data: sl.buf[1:5:5], msg: sl.buf[:5:5], slab: sl})
	refs(4, "published") // reader, ring, a, b

	got, err := a.Next(context.Background(), nil)
	if err != nil || len(got) != 1 || string(got[0].Data) != "abcd" || string(got[0].Message()) != "\x01abcd" {
		t.Fatalf("Next = %s, %v", chunksString(got), err)
	}
	refs(4, "taken by Next") // the caller holds a's reference now
	got[0].Release()
	got[0].Release() // zeroed: a no-op
	refs(3, "released")

	// A late subscriber shares the ring's chunk.
	c := h.subscribe(SubscribeOptions{})
	refs(4, "replayed")
	c.Close()
	b.Close()
	refs(2, "closed") // reader, ring

	// Trimming the chunk out of the ring (8 bytes: 4 of "efghi" + "abcd"
	// trimmed to 3) keeps it; pushing it out releases it.
	other := &slab{buf: []byte("efghijkl")} // uncounted memory (refs unused)
	h.publish(Chunk{Stream: Stdout, Data: other.buf[:5]})
	refs(2, "trimmed in the ring")
	r, _ := h.ring.appendTo(nil)
	if string(r[0].Data) != "bcd" || r[0].Message() != nil {
		t.Fatalf("ring = %s: a trimmed chunk must not offer its message", chunksString(r))
	}
	refs(3, "appended from the ring")
	ReleaseAll(r)
	h.publish(Chunk{Stream: Stdout, Data: other.buf[5:]})
	refs(1, "pushed out of the ring")
	a.Close()
	sl.release()
	refs(0, "reader done")
	defer func() {
		if recover() == nil {
			t.Fatal("a release past zero did not panic")
		}
	}()
	sl.release()
}

// TestSlabsHeldAreNotReused: one subscriber keeps every chunk it was given
// while another releases each at once and the workload writes megabytes —
// slabs recycle through the released path, and the held chunks still read
// exactly what the workload wrote.
func TestSlabsHeldAreNotReused(t *testing.T) {
	t.Parallel()
	w := startT(t, false, "sh", "-c", "read go; seq 1 1000000")
	keep, free := w.Subscribe(SubscribeOptions{HardLimit: 1 << 30}), w.Subscribe(SubscribeOptions{})
	defer keep.Close()
	defer free.Close()
	if _, err := w.Write([]byte("\n")); err != nil {
		t.Fatal(err)
	}
	want := seqOutput(1000000, "\n")
	done := make(chan error, 1)
	go func() {
		out, _, err := drain(t, free)
		if err == io.EOF && !bytes.Equal(out, want) {
			err = io.ErrUnexpectedEOF
		}
		done <- err
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var held []Chunk
	var err error
	for err == nil {
		held, err = keep.Next(ctx, held)
	}
	if err != io.EOF {
		t.Fatal(err)
	}
	if err := <-done; err != io.EOF {
		t.Fatalf("releasing subscriber: %v", err)
	}
	var out []byte
	for _, c := range held {
		out = append(out, c.Data...)
	}
	ReleaseAll(held)
	if !bytes.Equal(out, want) {
		t.Fatalf("held chunks read %d bytes, not the workload's %d", len(out), len(want))
	}
}

// TestSlabClasses: every size a stream's slabs grow through is pooled.
func TestSlabClasses(t *testing.T) {
	t.Parallel()
	size, window := minSlab, minSlab/4
	for {
		if slabClass(size) < 0 {
			t.Fatalf("slab size %d has no pool", size)
		}
		if window >= readSize {
			break
		}
		window, size = min(window*4, readSize), min(size*4, slabSize)
	}
	if size != slabSize || slabClass(slabSize) != slabClasses-1 || slabClass(3000) != -1 {
		t.Fatalf("growth stops at %d; class of slabSize %d", size, slabClass(slabSize))
	}
}
