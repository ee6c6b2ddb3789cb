package channels

import (
	"context"
	"time"

	"github.com/coder/websocket"

	"github.com/nimbus/gateway/problem"
)

// MaxCDPMessage bounds one CDP message each way (SPEC §5.3): a full-page
// screenshot or a big Network.getResponseBody is tens of MiB of base64.
const MaxCDPMessage = 256 << 20

// CDPUpstream is the browser side of a cdp or page connection: a
// targets.CDPConn, one session multiplexed on the browser's DevTools pipe.
// Read returns whole messages; it fails once the browser side is gone.
type CDPUpstream interface {
	Read(ctx context.Context) ([]byte, error)
	Write(ctx context.Context, msg []byte) error
	Close() error
}

// CDPOptions tune RelayCDP. The zero value works.
type CDPOptions struct {
	// OnBytes, if not nil, is called once per relayed message with its
	// size: dir "in" (client to browser) or "out".
	OnBytes func(dir string, n int)
}

// RelayCDP carries raw CDP between an upgraded client and the browser
// side of its connection, message by message, until one side ends or ctx
// does. Messages are whole, not streamed frame by frame: the browser's
// pipe carries complete JSON messages, which the gateway renumbers and
// routes (targets/cdp_pipe.go). It returns how the client must be closed:
// Close(4502, "target unavailable") when the browser side closed or died,
// nil when the client closed or vanished, context.Cause(ctx) when ctx
// ended (the caller puts a *CloseError there: 4408, 4410, 1001…). A
// client message over MaxCDPMessage closes the client with 1009.
//
// RelayCDP closes both sides itself before it returns — the client with
// the code it returns — because coder/websocket unblocks a pending Read
// only by closing its connection, and RelayCDP waits for both of its
// copiers. The caller's own Close afterwards is a harmless no-op. A
// message being written to the client when the relay ends gets one second
// (SPEC §5), so does the close handshake; then the TCP connection is cut.
func RelayCDP(ctx context.Context, client *websocket.Conn, upstream CDPUpstream, o CDPOptions) error {
	client.SetReadLimit(MaxCDPMessage)
	// Cancelling a coder/websocket read or write context closes the
	// connection, so the client's operations run under a context
	// cancelled only to cut it.
	cctx, cutClient := context.WithCancel(context.WithoutCancel(ctx))
	defer cutClient()
	uctx, cutUpstream := context.WithCancel(context.WithoutCancel(ctx))
	defer cutUpstream()

	down := make(chan copyEnd, 1) // browser → client
	up := make(chan copyEnd, 1)   // client → browser
	go func() { down <- copyDown(uctx, upstream, cctx, client, o.OnBytes) }()
	go func() { up <- copyUp(cctx, client, uctx, upstream, o.OnBytes) }()

	var err error
	downRunning, upRunning := true, true
	select {
	case e := <-down:
		downRunning = false
		if e.readErr != nil {
			err = errTargetGone // the browser side closed or died
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
	// browser → client copier between messages.
	_ = upstream.Close()
	cutUpstream()
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

// copyDown copies the browser side's messages to the client, as text
// (CDP is JSON), until one side fails.
func copyDown(uctx context.Context, src CDPUpstream, cctx context.Context, dst *websocket.Conn, onBytes func(string, int)) copyEnd {
	for {
		msg, err := src.Read(uctx)
		if err != nil {
			return copyEnd{readErr: err}
		}
		if err := dst.Write(cctx, websocket.MessageText, msg); err != nil {
			return copyEnd{writeErr: err}
		}
		if onBytes != nil {
			onBytes("out", len(msg))
		}
	}
}

// copyUp copies the client's messages, text or binary, to the browser
// side until one side fails.
func copyUp(cctx context.Context, src *websocket.Conn, uctx context.Context, dst CDPUpstream, onBytes func(string, int)) copyEnd {
	for {
		_, msg, err := src.Read(cctx)
		if err != nil {
			return copyEnd{readErr: err}
		}
		if err := dst.Write(uctx, msg); err != nil {
			return copyEnd{writeErr: err}
		}
		if onBytes != nil {
			onBytes("in", len(msg))
		}
	}
}

// cdpUnavailable is the error of a discovery request the browser did not
// answer.
func cdpUnavailable(err error) error {
	return problem.Wrap(problem.BadGateway, err, "the browser did not answer")
}
