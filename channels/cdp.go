package channels

import (
	"context"

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
// does: a Pipe whose far side is upstream. Messages are whole, not
// streamed frame by frame: the browser's pipe carries complete JSON
// messages, which the gateway renumbers and routes (targets/cdp_pipe.go).
// It returns how the client was closed (Pipe's end rule):
// Close(4502, "target unavailable") when the browser side closed or died,
// nil when the client closed or vanished, context.Cause(ctx) when ctx
// ended (the caller puts a *CloseError there: 4408, 4410, 1001…; any
// other cause is 1001). A client message over MaxCDPMessage closes the
// client with 1009.
//
// RelayCDP closes both sides itself before it returns — the client with
// the code it returns — because coder/websocket unblocks a pending Read
// only by closing its connection, and RelayCDP waits for both of its
// copiers. The caller's own Close afterwards is a harmless no-op. A
// message being written to the client when the relay ends gets one second
// (SPEC §5), so does the close handshake; then the TCP connection is cut.
func RelayCDP(ctx context.Context, client *websocket.Conn, upstream CDPUpstream, o CDPOptions) error {
	client.SetReadLimit(MaxCDPMessage)
	// The browser side's operations run under a context cancelled to cut
	// it (Far.cut), with upstream.Close.
	uctx, cutUpstream := context.WithCancel(context.WithoutCancel(ctx))
	defer cutUpstream()
	return Pipe(ctx, client, &cdpFar{browser: upstream, ctx: uctx, cancel: cutUpstream}, PipeOptions{OnBytes: o.OnBytes})
}

// errTargetGone closes a client whose target went away.
var errTargetGone = Close(StatusTargetUnavailable, "target unavailable")

// cdpFar is the Far of a CDPUpstream: whole messages both ways.
type cdpFar struct {
	browser CDPUpstream
	ctx     context.Context // of the upstream's operations
	cancel  context.CancelFunc
}

var _ Far = (*cdpFar)(nil)

// down copies the browser side's next message to the client, as text
// (CDP is JSON).
func (f *cdpFar) down(cctx context.Context, client *websocket.Conn) (int64, copyEnd) {
	msg, err := f.browser.Read(f.ctx)
	if err != nil {
		return 0, copyEnd{far: err}
	}
	if err := client.Write(cctx, websocket.MessageText, msg); err != nil {
		return 0, copyEnd{client: err}
	}
	return int64(len(msg)), copyEnd{}
}

// up copies the client's next message, text or binary, to the browser
// side.
func (f *cdpFar) up(cctx context.Context, client *websocket.Conn) (int64, copyEnd) {
	_, msg, err := client.Read(cctx)
	if err != nil {
		return 0, copyEnd{client: err}
	}
	if err := f.browser.Write(f.ctx, msg); err != nil {
		return 0, copyEnd{far: err}
	}
	return int64(len(msg)), copyEnd{}
}

// cut lets go of the browser side, which also stops the browser → client
// copier between messages.
func (f *cdpFar) cut() {
	_ = f.browser.Close()
	f.cancel()
}

// closed: a browser side that ended, however, is 4502.
func (f *cdpFar) closed(...error) *CloseError { return errTargetGone }

// cdpUnavailable is the error of a discovery request the browser did not
// answer.
func cdpUnavailable(err error) error {
	return problem.Wrap(problem.BadGateway, err, "the browser did not answer")
}
