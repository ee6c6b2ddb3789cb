package proxy

import (
	"bufio"
	"bytes"
	"io"
	"net"
	"net/http"
)

// smallBufWriter makes the WebSocket library keep small I/O buffers.
// net/http hands a hijacked connection over with its 4 KiB read buffer and
// a fresh 4 KiB write buffer, and coder/websocket keeps both for the
// connection's life: 8 KiB of every idle connection, a quarter of its
// cost. Frames larger than a bufio buffer bypass it (reads and writes
// bigger than it go straight to the socket), so small buffers cost only
// an extra syscall on some small messages.
type smallBufWriter struct {
	http.ResponseWriter
}

// hijackBufSize is the size of the buffers a hijacked connection keeps.
const hijackBufSize = 512

// Hijack implements http.Hijacker with small buffers. Bytes the client
// sent after its request, which net/http may have buffered, are kept.
func (w smallBufWriter) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	conn, brw, err := http.NewResponseController(w.ResponseWriter).Hijack()
	if err != nil {
		return nil, nil, err
	}
	n := brw.Reader.Buffered()
	if n == 0 {
		return conn, bufio.NewReadWriter(bufio.NewReaderSize(conn, hijackBufSize), bufio.NewWriterSize(conn, hijackBufSize)), nil
	}
	// The early bytes must end up in the new reader's buffer, not merely
	// ahead of it: coder/websocket takes what is buffered and resets the
	// reader onto the connection.
	early, _ := brw.Reader.Peek(n)
	br := bufio.NewReaderSize(io.MultiReader(bytes.NewReader(bytes.Clone(early)), conn), max(hijackBufSize, n))
	if _, err := br.Peek(n); err != nil {
		conn.Close()
		return nil, nil, err
	}
	return conn, bufio.NewReadWriter(br, bufio.NewWriterSize(conn, hijackBufSize)), nil
}

// Unwrap lets http.ResponseController reach the underlying writer.
func (w smallBufWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }
