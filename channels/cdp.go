package channels

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"time"

	"github.com/coder/websocket"

	"github.com/nimbus/gateway/problem"
)

// MaxCDPMessage bounds one CDP message each way (SPEC §5.3): a full-page
// screenshot or a big Network.getResponseBody is tens of MiB of base64.
const MaxCDPMessage = 256 << 20

// cdpBufSize is each copier's buffer: a frame per Write, so large
// buffers keep the per-frame cost small next to the bytes moved.
const cdpBufSize = 64 << 10

// ErrNoSuchTarget is DialCDP's error for a target the browser does not have.
var ErrNoSuchTarget = errors.New("cdp: no such target")

// cdpDialTimeout bounds the upstream handshake with a local Chromium.
const cdpDialTimeout = 10 * time.Second

// cdpHTTP talks to Chromium on loopback: never through a proxy from the
// environment, and without keep-alive (the discovery requests are rare,
// and an idle connection would hold goroutines per browser).
var cdpHTTP = &http.Client{Transport: &http.Transport{Proxy: nil, DisableKeepAlives: true}}

// CDPOptions tune RelayCDP. The zero value works.
type CDPOptions struct {
	// OnBytes, if not nil, is called once per relayed message with its
	// size: dir "in" (client to browser) or "out".
	OnBytes func(dir string, n int)
}

// DialCDP opens the WebSocket of a Chromium DevTools endpoint
// (ws://127.0.0.1:PORT/devtools/…). It sends Host: localhost and no
// Origin: Chromium refuses DevTools connections for other host names
// (DNS rebinding) and from origins not allowed by
// --remote-allow-origins, and the gateway is neither. The connection
// accepts messages up to MaxCDPMessage.
func DialCDP(ctx context.Context, upstreamURL string) (*websocket.Conn, error) {
	ctx, cancel := context.WithTimeout(ctx, cdpDialTimeout)
	defer cancel()
	conn, resp, err := websocket.Dial(ctx, upstreamURL, &websocket.DialOptions{
		HTTPClient:      cdpHTTP,
		Host:            "localhost",
		CompressionMode: websocket.CompressionDisabled,
	})
	if err != nil {
		if resp != nil && resp.Body != nil {
			// Chromium answers an unknown /devtools/page/<id> with 500
			// "No such target id: <id>".
			b, _ := io.ReadAll(resp.Body)
			if bytes.HasPrefix(b, []byte("No such target")) {
				return nil, ErrNoSuchTarget
			}
		}
		return nil, fmt.Errorf("dialing the browser: %w", err)
	}
	conn.SetReadLimit(MaxCDPMessage)
	return conn, nil
}

// RelayCDP carries raw CDP between an upgraded client and a browser
// endpoint dialled with DialCDP, frame by frame and never a whole message
// in memory, each message keeping its type, until one side ends or ctx
// does. It returns how the client must be closed: Close(4502, "target
// unavailable") when the browser closed or died, nil when the client
// closed or vanished, context.Cause(ctx) when ctx ended (the caller puts a
// *CloseError there: 4408, 4410, 1001…). A message over MaxCDPMessage
// closes the side that sent it with 1009.
//
// RelayCDP closes both connections itself before it returns — the client
// with the code it returns — because coder/websocket unblocks a pending
// Reader only by closing its connection, and RelayCDP waits for both of
// its copiers. The caller's own Close afterwards is a harmless no-op. A
// message being written to the client when the relay ends gets one second
// (SPEC §5), so does the close handshake; then the TCP connection is cut.
func RelayCDP(ctx context.Context, client, upstream *websocket.Conn, o CDPOptions) error {
	client.SetReadLimit(MaxCDPMessage)
	upstream.SetReadLimit(MaxCDPMessage)
	// Cancelling a coder/websocket read or write context closes the
	// connection, so each connection's operations run under a context
	// cancelled only to cut that connection.
	cctx, cutClient := context.WithCancel(context.WithoutCancel(ctx))
	defer cutClient()
	uctx, cutUpstream := context.WithCancel(context.WithoutCancel(ctx))
	defer cutUpstream()

	down := make(chan copyEnd, 1) // browser → client
	up := make(chan copyEnd, 1)   // client → browser
	go func() { down <- copyMessages(uctx, upstream, cctx, client, "out", o.OnBytes) }()
	go func() { up <- copyMessages(cctx, client, uctx, upstream, "in", o.OnBytes) }()

	var err error
	downRunning, upRunning := true, true
	select {
	case e := <-down:
		downRunning = false
		if e.readErr != nil {
			err = errTargetGone // the browser closed or died
		}
	case e := <-up:
		upRunning = false
		if e.writeErr != nil {
			err = errTargetGone
		}
	case <-ctx.Done():
	}
	if ctx.Err() != nil {
		// Whatever else happened, the session's end is the news: a close
		// through the API kills the browser too.
		err = context.Cause(ctx)
	}

	// The browser side is disposable: cut it, which also stops the
	// browser → client copier between (or inside) messages.
	_ = upstream.CloseNow()
	// One second in all (SPEC §5) for the message in flight to a client
	// that may not be reading and for the close handshake, then the
	// connection is cut.
	t := time.AfterFunc(closeLinger, cutClient)
	if downRunning {
		<-down
	}
	if ce, ok := AsClose(err); ok {
		_ = client.Close(ce.Code, ce.Reason)
	} else {
		_ = client.CloseNow()
	}
	t.Stop()
	if upRunning {
		<-up
	}
	return err
}

// errTargetGone closes a client whose browser went away.
var errTargetGone = Close(StatusTargetUnavailable, "target unavailable")

// copyEnd says which side of a copier failed.
type copyEnd struct {
	readErr, writeErr error
}

// copyMessages copies messages from src to dst until one fails, each
// through a Reader and a Writer: frames move as they come, a message is
// never held whole.
func copyMessages(srcCtx context.Context, src *websocket.Conn, dstCtx context.Context, dst *websocket.Conn,
	dir string, onBytes func(string, int)) copyEnd {
	buf := make([]byte, cdpBufSize)
	for {
		typ, r, err := src.Reader(srcCtx)
		if err != nil {
			return copyEnd{readErr: err}
		}
		w, err := dst.Writer(dstCtx, typ)
		if err != nil {
			return copyEnd{writeErr: err}
		}
		n := 0
		for {
			m, rerr := r.Read(buf)
			if m > 0 {
				if _, werr := w.Write(buf[:m]); werr != nil {
					return copyEnd{writeErr: werr}
				}
				n += m
			}
			if errors.Is(rerr, io.EOF) {
				break
			}
			if rerr != nil {
				// The message is cut: w is left unfinished rather than
				// closed, so the other side never sees a truncated
				// message as a whole one.
				return copyEnd{readErr: rerr}
			}
		}
		if err := w.Close(); err != nil {
			return copyEnd{writeErr: err}
		}
		if onBytes != nil {
			onBytes(dir, n)
		}
	}
}

// cdpUnavailable is the error of a discovery request the browser did not
// answer.
func cdpUnavailable(err error) error {
	return problem.Wrap(problem.BadGateway, err, "the browser did not answer")
}
