package targets

import (
	"context"
	"io"
	"strconv"
	"testing"
)

// BenchmarkWorkloadOutput measures output from a process through the hub
// to subscribers (pipe read, chunk copy, fan-out, Next).
func BenchmarkWorkloadOutput(b *testing.B) {
	for _, subs := range []int{1, 4} {
		b.Run("subscribers="+strconv.Itoa(subs), func(b *testing.B) {
			const size = 256 << 20
			b.SetBytes(size)
			for range b.N {
				w := startT(b, false, "sh", "-c", "read go; exec head -c "+strconv.Itoa(size)+" /dev/zero")
				errc := make(chan error, subs)
				for range subs {
					s := w.Subscribe(SubscribeOptions{})
					go func() {
						defer s.Close()
						var buf []Chunk
						var n int
						for {
							var err error
							buf, err = s.Next(context.Background(), buf[:0])
							for _, c := range buf {
								n += len(c.Data)
							}
							ReleaseAll(buf)
							if err != nil {
								if err == io.EOF && n != size {
									err = io.ErrUnexpectedEOF
								} else if err == io.EOF {
									err = nil
								}
								errc <- err
								return
							}
						}
					}()
				}
				goAhead(b, w)
				for range subs {
					if err := <-errc; err != nil {
						b.Fatal(err)
					}
				}
			}
		})
	}
}
