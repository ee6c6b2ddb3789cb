package proxy

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"

	"go.uber.org/zap"

	"github.com/nimbus/gateway/problem"
)

// Listener wraps ln, the listener s is served on, so that the refusals
// net/http writes by itself before any handler runs are problem+json
// like every other rejection: a request line and header over the limit
// (431 header_too_large, see HTTPServer), a malformed request (400
// invalid_argument), an unsupported Transfer-Encoding (501). net/http
// writes those as text/plain and offers no hook for them.
func (s *Server) Listener(ln net.Listener) net.Listener { return problemListener{ln, s.log} }

type problemListener struct {
	net.Listener
	log *zap.Logger
}

func (l problemListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return &problemConn{Conn: c, log: l.log}, nil
}

// problemConn rewrites net/http's own error answers (see rewriteEarly).
// It passes everything else through, and keeps the methods net/http
// looks for on its connections: ReadFrom (sendfile for downloads) and
// CloseWrite (the half-close after a 431).
type problemConn struct {
	net.Conn
	log *zap.Logger
}

func (c *problemConn) Write(p []byte) (int, error) {
	if b, ok := rewriteEarly(p); ok {
		c.log.Info("http request refused before routing", zap.String("remoteAddr", c.RemoteAddr().String()),
			zap.ByteString("status", statusLine(p)))
		if _, err := c.Conn.Write(b); err != nil {
			return 0, err
		}
		return len(p), nil
	}
	return c.Conn.Write(p)
}

// ReadFrom lets io.Copy reach the TCP connection's sendfile path.
func (c *problemConn) ReadFrom(r io.Reader) (int64, error) {
	if rf, ok := c.Conn.(io.ReaderFrom); ok {
		return rf.ReadFrom(r)
	}
	return io.Copy(struct{ io.Writer }{c.Conn}, r)
}

// CloseWrite half-closes the connection when it can.
func (c *problemConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}

// earlyHeaders is what net/http puts after the status line of the
// answers it writes itself (server.go, "errorHeaders"). A response of a
// handler never starts this way: net/http writes its header fields
// sorted, so Connection would come before Content-Type.
var earlyHeaders = []byte("\r\nContent-Type: text/plain; charset=utf-8\r\nConnection: close\r\n\r\n")

var http11 = []byte("HTTP/1.1 ")

// rewriteEarly turns one of net/http's own error answers ("HTTP/1.1 431
// Request Header Fields Too Large" + earlyHeaders + text, in one write)
// into problem+json with the same status; ok is false for anything else.
func rewriteEarly(p []byte) (b []byte, ok bool) {
	if len(p) < len(http11)+3 || !bytes.HasPrefix(p, http11) || len(p) > 4096 {
		return nil, false
	}
	i := bytes.Index(p, earlyHeaders)
	if i < 0 || bytes.IndexByte(p[:i], '\n') >= 0 {
		return nil, false
	}
	status, err := strconv.Atoi(string(p[len(http11) : len(http11)+3]))
	if err != nil || status < 400 || status > 599 {
		return nil, false
	}
	text := string(p[i+len(earlyHeaders):])
	pe := problem.New(problem.InvalidArgument, "%s", text)
	pe.Status = status
	if status == http.StatusRequestHeaderFieldsTooLarge {
		pe = problem.New(problem.HeaderTooLarge, "the request line and header are over %d bytes", maxHeaderRead)
	}
	e := problem.Lookup(pe.Code)
	rid := newRequestID()
	body, _ := json.Marshal(problemBody{
		Type: "urn:nimbus:error:" + string(e.Code), Title: e.Title, Status: pe.HTTPStatus(),
		Code: e.Code, Detail: pe.Detail, RequestID: rid,
	})
	var out bytes.Buffer
	fmt.Fprintf(&out, "HTTP/1.1 %d %s\r\nContent-Type: application/problem+json\r\nCache-Control: no-store\r\n"+
		"X-Request-Id: %s\r\nConnection: close\r\nContent-Length: %d\r\n\r\n", status, http.StatusText(status), rid, len(body)+1)
	out.Write(body)
	out.WriteByte('\n')
	return out.Bytes(), true
}

// statusLine is the first line of p, for the log.
func statusLine(p []byte) []byte {
	if i := bytes.IndexByte(p, '\r'); i >= 0 {
		return p[:i]
	}
	return p
}
