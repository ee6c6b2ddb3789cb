package channels

import (
	"context"
	"errors"
	"io"
	"sync"
	"time"

	"github.com/coder/websocket"
)

// Pipe is the one WebSocket relay of the gateway: a cdp or page client to
// its browser (RelayCDP), a client to the replica that owns its session
// (proxy's relay). Two named copiers run until the first of them ends, or
// ctx does; then the end rule below closes the client.

// Far is the far side of a Pipe: what a client is relayed to. WebSocketFar
// makes one of another WebSocket connection (streamed frame by frame);
// RelayCDP makes one of a CDPUpstream (whole messages).
type Far interface {
	// down copies the far side's next message to client; up copies the
	// client's next message to the far side. Both return the bytes copied
	// and which side failed.
	down(ctx context.Context, client *websocket.Conn) (int64, copyEnd)
	up(ctx context.Context, client *websocket.Conn) (int64, copyEnd)
	// cut ends the far side: a pending down read or up write returns.
	cut()
	// closed says how the client is closed when the far side ended first,
	// given what the far side's reads and writes failed with.
	closed(errs ...error) *CloseError
}

// PipeOptions tune Pipe. The zero value works.
type PipeOptions struct {
	// OnBytes, if not nil, is called once per relayed message with its
	// size: dir "in" (client to far side) or "out".
	OnBytes func(dir string, n int)
}

// copyEnd says which side of a copier failed.
type copyEnd struct {
	client, far error
}

func (e copyEnd) failed() bool { return e.client != nil || e.far != nil }

// copyBufSize is the buffer a streamed message is copied through: a frame
// larger than it is relayed as several.
const copyBufSize = 32 << 10

// copyBufs lends a buffer for one message at a time: none is allocated per
// message, and an idle connection, waiting for its next message, holds
// none.
var copyBufs = sync.Pool{New: func() any { b := make([]byte, copyBufSize); return &b }}

// errGoingAway closes a client whose connection ended for a reason that
// carries no close code of its own (SPEC §5: 1001 at gateway shutdown).
var errGoingAway = Close(websocket.StatusGoingAway, "gateway shutting down")

// Pipe relays client to far until one side ends or ctx does, then closes
// both and returns how the client was closed. The end rule:
//
//   - ctx ended (whatever else happened): the client is closed with its
//     cause, a *CloseError the caller put there (4408, 4410, 1001…);
//     another cause is 1001.
//   - the far side ended first (a read or a write of it failed): the far
//     side says how (Far.closed) — a WebSocket passes its close code
//     through, anything else is 4502 target unavailable.
//   - the client ended first (closed, vanished, sent a message over its
//     read limit): nil; there is nobody to send a frame to.
//
// The far side is cut at once. The message in flight to the client and the
// close handshake share one second (SPEC §5); then the TCP connection is
// cut. Pipe returns once both copiers have; the caller's own Close
// afterwards is a harmless no-op.
//
// Both copiers run under a context that is never cancelled: coder/websocket
// arms a timer per read and write of a cancellable context, an allocation
// a frame, and closes the connection when it ends. The cut is explicit
// instead (cutClient).
func Pipe(ctx context.Context, client *websocket.Conn, far Far, o PipeOptions) error {
	cctx := context.WithoutCancel(ctx)
	toClient := make(chan copyEnd, 1)   // far → client
	fromClient := make(chan copyEnd, 1) // client → far
	go func() { toClient <- copyDown(cctx, far, client, o.OnBytes) }()
	go func() { fromClient <- copyUp(cctx, far, client, o.OnBytes) }()

	var first copyEnd
	downRunning, upRunning := true, true
	select {
	case first = <-toClient:
		downRunning = false
	case first = <-fromClient:
		upRunning = false
	case <-ctx.Done():
	}
	ctxEnded := ctx.Err() != nil
	far.cut()
	// The frame in flight to a client that may not be reading gets the
	// one second; the close frame gets what is left of it.
	deadline := time.Now().Add(closeLinger)
	stuck := time.AfterFunc(closeLinger, func() { _ = client.CloseNow() })
	var last copyEnd
	if downRunning {
		last = <-toClient
	}
	stuck.Stop()

	var ce *CloseError
	switch {
	case ctxEnded:
		// The session's end is the news: a close through the API kills
		// the target too.
		var ok bool
		if ce, ok = AsClose(context.Cause(ctx)); !ok {
			ce = errGoingAway
		}
	case first.far != nil:
		// The far side's reader may have seen its close frame after the
		// writer failed: both errors go to the verdict.
		ce = far.closed(first.far, last.far)
	}
	if ce != nil {
		handshake := time.AfterFunc(time.Until(deadline), func() { cutClient(client) })
		_ = client.Close(ce.Code, ce.Reason)
		handshake.Stop()
	} else {
		_ = client.CloseNow()
	}
	if upRunning {
		<-fromClient
	}
	if ce == nil {
		return nil
	}
	return ce
}

// cutClient cuts the TCP connection of a client that has not finished the
// close handshake. CloseNow does nothing once Close has begun, and the
// copiers' reads have no context to cancel, but a read whose context has
// ended closes the connection: CloseRead's reader, given one already
// done, does so as it returns — whoever holds the read lock.
func cutClient(c *websocket.Conn) {
	done, cancel := context.WithCancel(context.Background())
	cancel()
	c.CloseRead(done)
}

// copyDown is the far → client copier: message after message until either
// side fails.
func copyDown(ctx context.Context, far Far, client *websocket.Conn, onBytes func(string, int)) copyEnd {
	for {
		n, end := far.down(ctx, client)
		if end.failed() {
			return end
		}
		if onBytes != nil {
			onBytes("out", int(n))
		}
	}
}

// copyUp is the client → far copier.
func copyUp(ctx context.Context, far Far, client *websocket.Conn, onBytes func(string, int)) copyEnd {
	for {
		n, end := far.up(ctx, client)
		if end.failed() {
			return end
		}
		if onBytes != nil {
			onBytes("in", int(n))
		}
	}
}

// WebSocketFar is a Far of another WebSocket connection, which Pipe owns
// from then on: messages are streamed frame by frame through the copier's
// buffer, never held whole, and the far side's close code reaches the
// client.
func WebSocketFar(c *websocket.Conn) Far { return wsFar{c} }

type wsFar struct{ c *websocket.Conn }

var _ Far = wsFar{}

func (f wsFar) down(ctx context.Context, client *websocket.Conn) (int64, copyEnd) {
	n, rerr, werr := copyMessage(ctx, client, f.c)
	return n, copyEnd{far: rerr, client: werr}
}

func (f wsFar) up(ctx context.Context, client *websocket.Conn) (int64, copyEnd) {
	n, rerr, werr := copyMessage(ctx, f.c, client)
	return n, copyEnd{client: rerr, far: werr}
}

func (f wsFar) cut() { _ = f.c.CloseNow() }

// closed passes the far side's close code and reason through; a far side
// that went away without one is 4502.
func (f wsFar) closed(errs ...error) *CloseError {
	for _, err := range errs {
		var wce websocket.CloseError
		if errors.As(err, &wce) {
			return Close(wce.Code, wce.Reason)
		}
	}
	return errTargetGone
}

// copyMessage copies src's next message to dst through a pooled buffer:
// each read returns at most one frame's payload, each write sends one
// frame. It reports a failure of src as readErr, one of dst as writeErr.
func copyMessage(ctx context.Context, dst, src *websocket.Conn) (n int64, readErr, writeErr error) {
	typ, r, err := src.Reader(ctx)
	if err != nil {
		return 0, err, nil
	}
	bp := copyBufs.Get().(*[]byte)
	defer copyBufs.Put(bp)
	buf := *bp
	w, err := dst.Writer(ctx, typ)
	if err != nil {
		return 0, nil, err
	}
	for {
		m, err := r.Read(buf)
		if m > 0 {
			if _, werr := w.Write(buf[:m]); werr != nil {
				return n, nil, werr
			}
			n += int64(m)
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			return n, err, nil
		}
	}
	return n, nil, w.Close()
}
