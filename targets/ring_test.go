package targets

import (
	"bytes"
	"fmt"
	"strings"
	"testing"
)

func TestRing(t *testing.T) {
	t.Parallel()
	r := ring{size: 10}
	r.add(Chunk{Stream: Stdout, Data: []byte("abcd")})
	r.add(Chunk{Stream: Stderr, Data: []byte("efgh")})
	r.add(Chunk{Stream: Stdout, Data: []byte("ijkl")}) // trims "ab"
	got, n := r.appendTo(nil)
	if n != 10 || len(got) != 3 || string(got[0].Data) != "cd" || got[1].Stream != Stderr {
		t.Fatalf("ring = %s (%d)", chunksString(got), n)
	}
	r.add(Chunk{Stream: Stderr, Data: []byte("0123456789xyz")}) // larger than the ring
	got, n = r.appendTo(nil)
	if n != 10 || len(got) != 1 || string(got[0].Data) != "3456789xyz" || got[0].Stream != Stderr {
		t.Fatalf("ring = %s (%d)", chunksString(got), n)
	}
	r.add(Chunk{Stream: Stdout}) // empty chunks are not kept
	if got, _ := r.appendTo(nil); len(got) != 1 {
		t.Fatalf("ring = %s", chunksString(got))
	}
}

func TestRingLongRunBounded(t *testing.T) {
	t.Parallel()
	r := ring{size: 1000}
	var all []byte
	for i := range 100000 {
		b := []byte{byte(i), byte(i >> 8), byte(i >> 16)}
		all = append(all, b...)
		r.add(Chunk{Stream: Stdout, Data: b})
	}
	got, n := r.appendTo(nil)
	var flat []byte
	for _, c := range got {
		flat = append(flat, c.Data...)
	}
	if n != 1000 || !bytes.Equal(flat, all[len(all)-1000:]) {
		t.Fatalf("ring holds %d bytes, tail mismatch", n)
	}
	if cap(r.chunks) > 4*len(got)+64 {
		t.Fatalf("ring slice grew to %d for %d live chunks", cap(r.chunks), len(got))
	}
}

// chunksString shows chunks as stream:"data" pairs.
func chunksString(cs []Chunk) string {
	var b strings.Builder
	for _, c := range cs {
		fmt.Fprintf(&b, "%d:%q ", c.Stream, c.Data)
	}
	return b.String()
}
