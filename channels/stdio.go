package channels

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"

	"github.com/nimbus/gateway/targets"
)

// StdioProtocol is the WebSocket subprotocol of the stdio channel.
const StdioProtocol = "nimbus.stdio.v1"

// Stream bytes: the first byte of every stdio message (SPEC §5.1).
const (
	streamStdin   byte = 0
	streamStdout  byte = 1 // = targets.Stdout
	streamStderr  byte = 2 // = targets.Stderr
	streamControl byte = 3
)

const (
	// MaxStdioMessage bounds a client message's payload (after the stream
	// byte); the read limit is one more.
	MaxStdioMessage = 1 << 20
	// closeLinger is how long a connection that must end gets to finish
	// the frame it is writing and the close handshake before its TCP
	// connection is cut (SPEC §5: one second).
	closeLinger = time.Second
	// maxTermSize bounds the cols and rows of a resize.
	maxTermSize = 10000
)

// StdioOptions tune ServeStdio. The zero value is the SPEC default.
type StdioOptions struct {
	// MaxBacklog bounds the output queued for the client and not yet
	// written to its socket; 0 means 1 MiB. MaxBacklog and Grace are the
	// workload hub's slow-consumer rule (targets.SubscribeOptions, which
	// applies the defaults); ServeStdio only carries out its verdict.
	MaxBacklog int
	// Grace is how long the backlog may stay over MaxBacklog before the
	// client is dropped with 4429; 0 means 5 s.
	Grace time.Duration
	// OnBytes, if not nil, is called with the stream bytes relayed (for
	// metrics): dir "out" for output written to the client, "in" for stdin
	// written to the workload. It must not block.
	OnBytes func(dir string, n int)
}

// ServeStdio carries one attached client on conn (already upgraded, its
// subprotocol negotiated by the caller) until the workload exits, the
// client leaves or misbehaves, or ctx ends. It returns how the connection
// closed: a *CloseError — 1000 after the exit message, 4429 for a slow
// consumer, 1003/1008 for a bad client, or context.Cause(ctx) (the caller
// puts a *CloseError there: 4408, 4410, 1001…) — or nil when the client
// closed or vanished first.
//
// ServeStdio closes conn itself, with the code it returns (a non-*CloseError
// cause closes it without a handshake), before it returns: coder/websocket
// can unblock a pending Reader only by closing the connection, and
// ServeStdio waits for its reader. The caller's own Close or CloseNow
// afterwards is a harmless no-op. The close handshake and the frame being
// written get one second (SPEC §5), then the TCP connection is cut.
//
// One goroutine writes to conn (hello, output, exit); another reads it.
// Stdin is written to the workload by the reader: if the workload does not
// read its stdin and the pipe is full, that write cannot be interrupted
// (targets.Workload.Write takes no context), so ServeStdio then returns
// one second after closing conn and leaves the reader to finish the write
// when the workload reads or exits; it delivers nothing more.
func ServeStdio(ctx context.Context, conn *websocket.Conn, w *targets.Workload, o StdioOptions) error {
	s := &stdio{conn: conn, w: w, opt: o}
	return s.serve(ctx)
}

// stdio is one attached client.
type stdio struct {
	// Static after ServeStdio.
	conn *websocket.Conn
	w    *targets.Workload
	opt  StdioOptions

	// Owned by output.
	buf []byte // a small chunk or control message behind its stream byte

	// Shared by output and the hub, which drops a slow consumer.
	drop slowDrop
	// stopped is set once the connection is ending: the reader writes no
	// more stdin to the workload.
	stopped atomic.Bool
}

// Causes the output loop's contexts are cancelled with.
var (
	errInputEnded = errors.New("stdio: reader ended")
	errStuckWrite = errors.New("stdio: write to client stuck")
	errSlowWrite  = errors.New("stdio: slow consumer")
	// errClientGone: the client closed the connection or vanished; there
	// is nothing left to send (ServeStdio returns nil).
	errClientGone = errors.New("stdio: client gone")
)

func (s *stdio) serve(ctx context.Context) error {
	s.conn.SetReadLimit(MaxStdioMessage + 1)

	// stop ends the output loop at a message boundary (or in Next).
	stop, stopOutput := context.WithCancelCause(ctx)
	defer stopOutput(nil)
	// Cancelling a coder/websocket read or write context closes the
	// connection, so conn's operations run under contexts that are
	// cancelled only to cut it: writes when they are stuck on a client
	// that does not read, reads when the close handshake overruns.
	wctx, cutWrites := context.WithCancelCause(context.WithoutCancel(ctx))
	defer cutWrites(nil)
	rctx, cutReads := context.WithCancel(context.WithoutCancel(ctx))
	defer cutReads()
	s.drop.cut = cutWrites
	sub := s.w.Subscribe(targets.SubscribeOptions{MaxBacklog: s.opt.MaxBacklog, Grace: s.opt.Grace, OnDrop: s.drop.dropped})
	defer sub.Close()

	// The output loop runs on this goroutine and the reader on one other:
	// an idle attached client costs two goroutines, not three. The reader
	// ending stops the output loop; ctx ending stops it too (stop derives
	// from ctx).
	inDone := make(chan error, 1)
	go func() {
		err := s.input(rctx)
		stopOutput(errInputEnded)
		inDone <- err
	}()
	// Once stop fires, let the output loop finish the message it is
	// writing (a client reading slowly still gets the close frame after
	// it), but cut a write stuck for good.
	var lingerMu sync.Mutex
	var linger *time.Timer
	var stoppedAt time.Time
	stopLinger := context.AfterFunc(stop, func() {
		lingerMu.Lock()
		stoppedAt = time.Now()
		linger = time.AfterFunc(closeLinger, func() { cutWrites(errStuckWrite) })
		lingerMu.Unlock()
	})
	outErr := s.output(stop, wctx, sub)
	s.drop.stop()
	stopLinger()
	lingerMu.Lock()
	if linger != nil {
		linger.Stop()
	}
	// The frame in flight and the close handshake share one second from
	// the stop (SPEC §5: gone within one second of expiresAt), not one
	// second each.
	handshake := closeLinger
	if !stoppedAt.IsZero() {
		handshake = max(closeLinger-time.Since(stoppedAt), 0)
	}
	lingerMu.Unlock()
	s.stopped.Store(true)

	var err error
	inRunning := true
	switch {
	case ctx.Err() != nil:
		err = context.Cause(ctx)
	case errors.Is(context.Cause(stop), errInputEnded):
		err = <-inDone
		inRunning = false
	default:
		err = outErr // the output loop ended on its own: exit, slow consumer, client gone
	}
	if errors.Is(err, errClientGone) {
		// The reader saw the connection end; if the output loop cut it
		// (slow consumer) or finished (exit) meanwhile, that is the news.
		err = nil
		if _, ok := AsClose(outErr); ok {
			err = outErr
		}
	}

	t := time.AfterFunc(handshake, cutReads) // cuts the handshake's wait
	if ce, ok := AsClose(err); ok {
		_ = s.conn.Close(ce.Code, ce.Reason)
	} else {
		_ = s.conn.CloseNow()
	}
	t.Stop()
	if inRunning {
		select {
		case <-inDone:
		case <-time.After(closeLinger):
			// The reader is in Workload.Write (see ServeStdio).
		}
	}
	return err
}

// output is the socket's only writer: hello, then the output as it comes,
// then the exit message once Next reported io.EOF — every byte written.
// stop ends it between messages; wctx is the context of its writes.
func (s *stdio) output(stop, wctx context.Context, sub *targets.Subscription) error {
	err := s.writeControl(wctx, helloMessage{Type: "hello", TTY: s.w.TTY(), Replayed: sub.Replayed()})
	if err != nil {
		return s.writeErr(wctx, err)
	}
	var batch []targets.Chunk
	for {
		batch, err = sub.Next(stop, batch[:0])
		if err != nil {
			break
		}
		err := s.writeBatch(stop, wctx, batch)
		// writeBatch released every chunk, possibly from a grown copy of
		// batch: drop this array's references, none of them to be read.
		clear(batch)
		if err != nil {
			return err
		}
	}
	switch {
	case errors.Is(err, io.EOF):
		ex := s.w.Exit()
		m := exitMessage{Type: "exit", Code: ex.Code, Reason: ex.Reason}
		if ex.Signal != "" {
			m.Signal = &ex.Signal
		}
		if err := s.writeControl(wctx, m); err != nil {
			return s.writeErr(wctx, err)
		}
		return Close(websocket.StatusNormalClosure, "workload exited")
	case errors.Is(err, targets.ErrSlowConsumer):
		return Close(StatusSlowConsumer, "slow consumer")
	default:
		return context.Cause(stop)
	}
}

// writeBatch writes the chunks Next returned and releases them. A chunk
// of at least directMessage bytes that the slab holds as a wire message
// goes out as it is; runs of smaller chunks of one stream are coalesced
// into messages of up to maxOutMessage: one frame and one write per
// message instead of one per read of the workload's pipe. It stops early
// when stop ends (returning its cause) or when the hub dropped this client
// as a slow consumer (4429).
func (s *stdio) writeBatch(stop, wctx context.Context, batch []targets.Chunk) error {
	defer func() { targets.ReleaseAll(batch) }() // those not written
	var bp *[]byte
	defer func() {
		if bp != nil {
			outBufs.Put(bp)
		}
	}()
	for i := 0; i < len(batch); {
		if stop.Err() != nil {
			return context.Cause(stop)
		}
		if s.drop.isDropped.Load() {
			return Close(StatusSlowConsumer, "slow consumer")
		}
		var msg []byte
		first := i
		if m := batch[i].Message(); len(m) > directMessage {
			msg = m
			i++
		} else {
			if bp == nil {
				bp = outBufs.Get().(*[]byte)
			}
			stream := batch[i].Stream
			msg = append((*bp)[:0], stream)
			for ; i < len(batch) && batch[i].Stream == stream && len(batch[i].Message()) <= directMessage; i++ {
				if len(msg) > 1 && len(msg)+len(batch[i].Data) > maxOutMessage {
					break
				}
				msg = append(msg, batch[i].Data...)
			}
			*bp = msg
		}
		if err := s.conn.Write(wctx, websocket.MessageBinary, msg); err != nil {
			return s.writeErr(wctx, err)
		}
		targets.ReleaseAll(batch[first:i])
		if s.opt.OnBytes != nil {
			s.opt.OnBytes("out", len(msg)-1)
		}
	}
	return nil
}

// directMessage is the size from which a chunk is written as its own
// message rather than copied into a coalesced one: past it, the copy
// costs more than the extra frame and write.
const directMessage = 32 << 10

// maxOutMessage bounds a coalesced output message (stream byte included).
const maxOutMessage = 1 << 20

// outBufs holds the buffers output messages are built in, shared by all
// connections so an idle one holds none.
var outBufs = sync.Pool{New: func() any {
	b := make([]byte, 0, maxOutMessage)
	return &b
}}

// writeErr maps a failed write: cut after the hub's drop, a slow consumer;
// otherwise the client is gone and there is nothing to send.
func (s *stdio) writeErr(wctx context.Context, err error) error {
	if errors.Is(context.Cause(wctx), errSlowWrite) {
		return Close(StatusSlowConsumer, "slow consumer")
	}
	return errClientGone
}

func (s *stdio) writeControl(ctx context.Context, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	s.buf = append(append(s.buf[:0], streamControl), b...)
	return s.conn.Write(ctx, websocket.MessageBinary, s.buf)
}

// Server control messages.
type (
	helloMessage struct {
		Type     string `json:"type"`
		TTY      bool   `json:"tty"`
		Replayed int    `json:"replayed"`
	}
	exitMessage struct {
		Type   string  `json:"type"`
		Code   int     `json:"code"`
		Signal *string `json:"signal"` // null when the process exited by itself
		// Reason is exited, signaled or oom (SPEC §9.2).
		Reason targets.ExitReason `json:"reason"`
	}
)

// slowDrop carries out the hub's slow-consumer verdict while the output
// loop is stuck writing to a client that stopped reading: the loop takes
// nothing from Next while a write blocks, so Next's ErrSlowConsumer would
// reach it only when the client reads again — never, for a client that
// froze. The hub calls dropped (SubscribeOptions.OnDrop) instead; the loop
// then writes no more messages, and the frame being written gets
// closeLinger to finish (a client that reads again then gets a clean 4429)
// before the write is cut.
type slowDrop struct {
	// Static after serve subscribed.
	cut context.CancelCauseFunc // cuts the output loop's writes

	isDropped atomic.Bool // read by the output loop per message

	mu sync.Mutex
	// Guarded by mu.
	timer *time.Timer // cuts the writes closeLinger after the drop
	done  bool        // the output loop returned: cut nothing
}

// dropped is the hub's OnDrop: it runs with the hub locked, so it only
// sets a flag and a timer.
func (d *slowDrop) dropped() {
	d.isDropped.Store(true)
	d.mu.Lock()
	defer d.mu.Unlock()
	if !d.done {
		d.timer = time.AfterFunc(closeLinger, func() { d.cut(errSlowWrite) })
	}
}

// stop is called once the output loop returned.
func (d *slowDrop) stop() {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.done = true
	if d.timer != nil {
		d.timer.Stop()
	}
}
