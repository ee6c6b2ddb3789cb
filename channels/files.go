package channels

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"

	"github.com/nimbus/gateway/problem"
)

// FilesProtocol is the WebSocket subprotocol of the files channel.
const FilesProtocol = "nimbus.files.v1"

const (
	// MaxFilesData bounds the payload of one data message (after its
	// 4-byte request id), both ways (SPEC §5.2).
	MaxFilesData = 1 << 20
	// filesChunk is the payload of the data messages of a read: small
	// enough that reads and writes in flight interleave finely, large
	// enough that framing costs nothing.
	filesChunk = 256 << 10
	// filesMaxOps bounds the requests other than writes running at once
	// on one connection; past it the reader waits (backpressure), so a
	// connection holds at most filesMaxOps read buffers.
	filesMaxOps = 16
	// filesMaxUploads bounds the writes in flight on one connection.
	filesMaxUploads = 64
	// filesQueue is the depth of the writer's queue.
	filesQueue = 8
	// filesMaxFailed bounds the ids of failed writes remembered.
	filesMaxFailed = 1024
)

// FilesOptions tune ServeFiles and FilesHTTP. The zero value is the SPEC
// default.
type FilesOptions struct {
	// MaxFileSize bounds one write/upload; zero means 16 GiB.
	MaxFileSize int64
	// OnBytes, if not nil, is called with bytes moved: dir "in" (to the
	// sandbox) or "out". It is called from several goroutines and must not
	// block.
	OnBytes func(dir string, n int)
	// Owner, if not nil, is given every file and directory the channel
	// creates: the user the workload runs as, when that is not the
	// gateway's (the gateway then runs as root, and what it creates would
	// otherwise be root's, read-only to the workload). Nil leaves them the
	// gateway's.
	Owner *Owner
	// MinFreeBytes, when positive, is the space uploads leave free on the
	// file system they write to: a write that would go below it is
	// refused with 507 resource_exhausted (before it starts when its size
	// is announced) and its temp file removed (space.go). Zero keeps no
	// reserve; a full disk still refuses, with the same answer.
	MinFreeBytes int64
}

// Owner is a user and group (FilesOptions.Owner).
type Owner struct {
	UID, GID int
}

// ServeFiles serves nimbus.files.v1 on conn (already upgraded) for the
// sandbox file tree at root until the client leaves or ctx ends. It
// returns how to close: nil when the client closed or vanished, a
// *CloseError for a client that broke the protocol (1008, or 1009 for a
// message over 1 MiB + 4), 4502 when root cannot be opened, or
// context.Cause(ctx) when ctx ended.
//
// ServeFiles never closes conn itself; the caller closes it with the
// returned code. Requests run concurrently (reads and other ops on their
// own goroutines, at most 16 at once; writes on the reader), answered in
// the order they finish. When ctx ends, ServeFiles returns without
// waiting for its reader, which is blocked on conn until the caller
// closes it: then it ends, handles no further message, and removes the
// temp files of unfinished writes. A writer stuck sending to a client
// that does not read ends the same way. One second after ServeFiles
// began to end, the connection is cut (closed without a close frame)
// whatever the caller's close handshake is waiting for (SPEC §5).
func ServeFiles(ctx context.Context, conn *websocket.Conn, root string, o FilesOptions) error {
	if o.MaxFileSize <= 0 {
		o.MaxFileSize = filesDefaultMax
	}
	r, err := os.OpenRoot(root)
	if err != nil {
		return Close(StatusTargetUnavailable, "sandbox file root unavailable")
	}
	sweepOnce(r, root)
	c := &filesConn{
		conn:     conn,
		root:     r,
		opt:      o,
		out:      make(chan filesOut, filesQueue),
		sem:      make(chan struct{}, filesMaxOps),
		inflight: map[uint32]bool{},
		uploads:  map[uint32]*upload{},
		failed:   map[uint32]bool{},
	}
	return c.serve(ctx)
}

// filesConn is one client of the files channel.
type filesConn struct {
	// Static after ServeFiles.
	conn *websocket.Conn
	root *os.Root // closed by the last of serve and the reader (refs)
	opt  FilesOptions
	out  chan filesOut // to the writer, the socket's only writer
	sem  chan struct{} // a slot per running op
	// ops is cancelled when ServeFiles returns: ops and the writer stop,
	// the reader handles nothing more.
	ops    context.Context
	cancel context.CancelCauseFunc
	wg     sync.WaitGroup // running ops
	// refs counts the users of root, serve and the reader: the last one
	// out closes it.
	refs atomic.Int32

	mu sync.Mutex
	// Guarded by mu. Ids of requests in flight: inserted by the reader,
	// removed by whoever answers last, just before the final answer is
	// queued (so a client that reuses an id as soon as it has its answer
	// never hits a false duplicate).
	inflight map[uint32]bool

	// Owned by the reader.
	uploads map[uint32]*upload
	// failed holds the ids of writes answered with an error before their
	// end: their remaining data is dropped and their end swallowed, so a
	// client that streams ahead does not get an error per data message.
	// A new request with the same id clears it.
	failed map[uint32]bool
	buf    []byte // a text message
	copyb  []byte // data from the socket to a temp file
}

// filesOut is one message for the writer.
type filesOut struct {
	typ websocket.MessageType
	b   []byte
	// data: b is a pooled data message (4-byte id, payload), returned to
	// filesBufs once written.
	data bool
}

// filesBufs holds read buffers: 4-byte id then filesChunk of payload.
var filesBufs = sync.Pool{New: func() any { b := make([]byte, 4+filesChunk); return &b }}

// errFilesGone: the client closed or vanished; nothing more to send.
var errFilesGone = errors.New("files: client gone")

func (c *filesConn) serve(ctx context.Context) error {
	c.conn.SetReadLimit(4 + MaxFilesData)
	c.ops, c.cancel = context.WithCancelCause(ctx)
	c.refs.Store(2)
	defer c.cancel(errFilesGone)
	// Cancelling a coder/websocket read or write context closes the
	// connection without a close frame, so reads and writes run under a
	// context that is cancelled only to cut the connection, one second
	// after serve begins to end (below); the caller's close unblocks them
	// before that.
	ioctx, cut := context.WithCancel(context.WithoutCancel(ctx))

	writerDone := make(chan error, 1)
	readerDone := make(chan error, 1)
	go func() { writerDone <- c.writer(ioctx) }()
	go func() { readerDone <- c.reader(ioctx) }()

	var err error
	readerRunning, writerRunning := true, true
	select {
	case err = <-readerDone:
		readerRunning = false
	case err = <-writerDone:
		writerRunning = false
	case <-ctx.Done():
		err = context.Cause(ctx)
	}
	if errors.Is(err, errFilesGone) {
		err = nil
	}
	c.cancel(errFilesGone)
	// One second in all (SPEC §5) for the frame being written and the
	// caller's close handshake, then the connection is cut. Issue 12: a
	// client that stopped reading during a 50 MB read kept the writer in
	// a frame, and the caller's close frame waited behind it for
	// coder/websocket's 5 s write timeout (its CloseNow does nothing once
	// Close has begun), so the connection outlived its session by 5 s.
	time.AfterFunc(closeLinger, cut)
	c.waitOps()
	if !readerRunning && writerRunning {
		// The client is gone, so a write in progress fails at once; a
		// write stuck on a client that does not read is cut above.
		<-writerDone
	}
	c.release()
	return err
}

// waitOps waits for the running ops: they end at their next send or
// disk read. None can block for good (openFile never waits in open(2) on
// a FIFO), but should one stay stuck in a syscall, it must not keep the
// connection, and its session's connection slot, from ending (issue 12):
// after closeLinger it is left to finish on its own, its answers dropped.
func (c *filesConn) waitOps() {
	done := make(chan struct{})
	go func() {
		c.wg.Wait()
		close(done)
	}()
	t := time.NewTimer(closeLinger)
	defer t.Stop()
	select {
	case <-done:
	case <-t.C:
	}
}

// release drops one reference to the root.
func (c *filesConn) release() {
	if c.refs.Add(-1) == 0 {
		_ = c.root.Close()
	}
}

// writer is the socket's only writer: answers and read data, in the
// order they were queued.
func (c *filesConn) writer(ctx context.Context) error {
	for {
		select {
		case <-c.ops.Done():
			return errFilesGone
		case m := <-c.out:
			err := c.conn.Write(ctx, m.typ, m.b)
			if m.data {
				if c.opt.OnBytes != nil && err == nil {
					c.opt.OnBytes("out", len(m.b)-4)
				}
				b := m.b[:cap(m.b)]
				filesBufs.Put(&b)
			}
			if err != nil {
				return errFilesGone
			}
		}
	}
}

// send queues m for the writer; false once the connection is ending.
func (c *filesConn) send(m filesOut) bool {
	select {
	case c.out <- m:
		return true
	case <-c.ops.Done():
		if m.data {
			b := m.b[:cap(m.b)]
			filesBufs.Put(&b)
		}
		return false
	}
}

// answer queues the final answer of request id, which is no longer in
// flight.
func (c *filesConn) answer(id uint32, resp filesResponse) bool {
	c.mu.Lock()
	delete(c.inflight, id)
	c.mu.Unlock()
	return c.reply(id, resp)
}

// reply queues an answer without touching the in-flight set (for an
// error about a request that never became in flight).
func (c *filesConn) reply(id uint32, resp filesResponse) bool {
	resp.ID = id
	b, err := json.Marshal(resp)
	if err != nil {
		b, _ = json.Marshal(filesResponse{ID: id, Error: &filesErrorBody{Code: problem.Internal, Message: "internal error"}})
	}
	return c.send(filesOut{typ: websocket.MessageText, b: b})
}

// replyErr answers id with the error perr.
func (c *filesConn) replyErr(id uint32, perr *problem.Error, final bool) {
	resp := filesResponse{Error: &filesErrorBody{Code: perr.Code, Message: perr.Detail}}
	if final {
		c.answer(id, resp)
	} else {
		c.reply(id, resp)
	}
}

// filesRequest is a client request; fields beyond id and op depend on op.
type filesRequest struct {
	ID        *uint32 `json:"id"`
	Op        string  `json:"op"`
	Path      string  `json:"path"`
	Offset    int64   `json:"offset"`
	Length    int64   `json:"length"`
	Size      *int64  `json:"size"`
	Mode      string  `json:"mode"`
	Parents   bool    `json:"parents"`
	Recursive bool    `json:"recursive"`
	From      string  `json:"from"`
	To        string  `json:"to"`
}

// filesResponse is an answer: ok with the op's results, or an error.
type filesResponse struct {
	ID        uint32          `json:"id"`
	OK        bool            `json:"ok"`
	Error     *filesErrorBody `json:"error,omitempty"`
	Entry     *fileEntry      `json:"entry,omitempty"`
	Entries   []fileEntry     `json:"entries,omitzero"`
	Truncated bool            `json:"truncated,omitzero"`
	Bytes     *int64          `json:"bytes,omitempty"`
	Size      *int64          `json:"size,omitempty"`
	SHA256    string          `json:"sha256,omitempty"`
}

type filesErrorBody struct {
	Code    problem.Code `json:"code"`
	Message string       `json:"message"`
}

// reader reads the client's messages until it leaves, breaks the
// protocol, or the connection is ending. Writes run on it: their data
// goes from the socket to the temp file with no queue in between, so a
// fast client is slowed to the disk's pace and memory stays flat.
func (c *filesConn) reader(ctx context.Context) error {
	defer func() {
		for id, u := range c.uploads {
			u.abort()
			delete(c.uploads, id)
		}
		c.release()
	}()
	for {
		typ, r, err := c.conn.Reader(ctx)
		if err != nil {
			return filesReadErr(err)
		}
		if c.ops.Err() != nil {
			return errFilesGone // ending: handle nothing more
		}
		if typ == websocket.MessageBinary {
			err = c.data(r)
		} else {
			err = c.text(r)
		}
		if err != nil {
			return err
		}
	}
}

// filesReadErr maps a failed read: a message over the limit (the library
// has already closed with 1009); anything else means the client closed or
// vanished.
func filesReadErr(err error) error {
	if errors.Is(err, websocket.ErrMessageTooBig) {
		return Close(websocket.StatusMessageTooBig, "message over 1 MiB")
	}
	return errFilesGone
}

// data handles a data message: the payload of a write in flight.
func (c *filesConn) data(r io.Reader) error {
	var hdr [4]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return Close(websocket.StatusPolicyViolation, "data message without its 4-byte request id")
		}
		return filesReadErr(err)
	}
	id := binary.BigEndian.Uint32(hdr[:])
	u := c.uploads[id]
	if u == nil {
		if _, err := io.Copy(io.Discard, r); err != nil {
			return filesReadErr(err)
		}
		if !c.failed[id] {
			c.replyErr(id, problem.New(problem.InvalidArgument, "data for id %d, which is not a write in flight", id), false)
		}
		return nil
	}
	if c.copyb == nil {
		c.copyb = make([]byte, filesChunk)
	}
	var n int64
	for {
		k, rerr := r.Read(c.copyb)
		if k > 0 {
			if _, werr := c.opt.writeUpload(u, c.copyb[:k]); werr != nil {
				c.failUpload(id, u, u.writeError(werr))
				if _, err := io.Copy(io.Discard, r); err != nil {
					return filesReadErr(err)
				}
				return nil
			}
			n += int64(k)
		}
		if rerr == io.EOF {
			break
		}
		if rerr != nil {
			return filesReadErr(rerr)
		}
	}
	if c.opt.OnBytes != nil && n > 0 {
		c.opt.OnBytes("in", int(n))
	}
	return nil
}

// failUpload answers a write with an error before its end.
func (c *filesConn) failUpload(id uint32, u *upload, perr *problem.Error) {
	u.abort()
	delete(c.uploads, id)
	c.markFailed(id)
	c.replyErr(id, perr, true)
}

// markFailed records a write answered early. The set is bounded: past
// filesMaxFailed it is dropped, and stray data then only draws error
// answers.
func (c *filesConn) markFailed(id uint32) {
	if len(c.failed) >= filesMaxFailed {
		clear(c.failed)
	}
	c.failed[id] = true
}

// text handles a request.
func (c *filesConn) text(r io.Reader) error {
	buf, err := appendAll(r, c.buf[:0])
	if err != nil {
		return filesReadErr(err)
	}
	c.buf = buf
	if cap(c.buf) > 64<<10 {
		c.buf = nil
	}
	var req filesRequest
	dec := json.NewDecoder(bytes.NewReader(buf))
	dec.DisallowUnknownFields()
	derr := dec.Decode(&req)
	if derr == nil && dec.More() {
		derr = errors.New("trailing data after the request")
	}
	if derr != nil || req.ID == nil {
		// Answer on the id if one can be read, else the client cannot be
		// told which request was wrong: close.
		var idOnly struct {
			ID *uint32 `json:"id"`
		}
		if json.Unmarshal(buf, &idOnly) != nil || idOnly.ID == nil {
			return Close(websocket.StatusPolicyViolation, "malformed request: no id")
		}
		msg := "malformed request"
		if derr != nil {
			msg += ": " + derr.Error()
		}
		c.replyErr(*idOnly.ID, problem.New(problem.InvalidArgument, "%s", msg), false)
		return nil
	}
	id := *req.ID

	if req.Op == "end" {
		c.end(id)
		return nil
	}
	delete(c.failed, id) // a new request reuses the id
	c.mu.Lock()
	dup := c.inflight[id]
	if !dup {
		c.inflight[id] = true
	}
	c.mu.Unlock()
	if dup {
		c.replyErr(id, problem.New(problem.InvalidArgument, "id %d is already in flight", id), false)
		return nil
	}

	switch req.Op {
	case "write":
		c.begin(id, &req)
		return nil
	case "stat", "list", "read", "mkdir", "remove", "rename":
	default:
		c.replyErr(id, problem.New(problem.InvalidArgument, "unknown op %q", req.Op).With("field", "op"), true)
		return nil
	}
	select {
	case c.sem <- struct{}{}:
	case <-c.ops.Done():
		return errFilesGone
	}
	c.wg.Add(1)
	go func() {
		defer func() { <-c.sem; c.wg.Done() }()
		c.run(id, &req)
	}()
	return nil
}

// begin starts a write.
func (c *filesConn) begin(id uint32, req *filesRequest) {
	if len(c.uploads) >= filesMaxUploads {
		c.markFailed(id)
		c.replyErr(id, problem.New(problem.ResourceExhausted, "more than %d writes in flight", filesMaxUploads), true)
		return
	}
	size := int64(-1)
	if req.Size != nil {
		if *req.Size < 0 {
			c.markFailed(id)
			c.replyErr(id, problem.New(problem.InvalidArgument, "size must not be negative").With("field", "size"), true)
			return
		}
		size = *req.Size
	}
	u, perr := c.opt.beginUpload(c.root, req.Path, size, req.Mode)
	if perr != nil {
		c.markFailed(id)
		c.replyErr(id, perr, true)
		return
	}
	c.uploads[id] = u
}

// end completes the write id.
func (c *filesConn) end(id uint32) {
	u := c.uploads[id]
	if u == nil {
		if c.failed[id] {
			delete(c.failed, id) // already answered
			return
		}
		c.replyErr(id, problem.New(problem.InvalidArgument, "end for id %d, which is not a write in flight", id), false)
		return
	}
	delete(c.uploads, id)
	res, perr := u.commit()
	if perr != nil {
		c.replyErr(id, perr, true)
		return
	}
	c.answer(id, filesResponse{OK: true, Bytes: &res.Bytes, SHA256: res.SHA256})
}

// run performs one request other than a write, on its own goroutine.
func (c *filesConn) run(id uint32, req *filesRequest) {
	var resp filesResponse
	var perr *problem.Error
	switch req.Op {
	case "stat":
		var name string
		if name, perr = filesPath(req.Path); perr == nil {
			var e fileEntry
			if e, perr = statEntry(c.root, req.Path, name); perr == nil {
				resp.Entry = &e
			}
		}
	case "list":
		var name string
		if name, perr = filesPath(req.Path); perr == nil {
			resp.Entries, resp.Truncated, perr = listDir(c.root, req.Path, name)
		}
	case "mkdir":
		var name string
		if name, perr = filesLeaf(req.Path); perr == nil {
			perr = makeDir(c.root, req.Path, name, req.Parents, c.opt.Owner)
		}
	case "remove":
		var name string
		if name, perr = filesLeaf(req.Path); perr == nil {
			perr = removePath(c.root, req.Path, name, req.Recursive)
		}
	case "rename":
		perr = renamePath(c.root, req.From, req.To)
	case "read":
		resp, perr = c.read(id, req)
		if perr == nil && c.ops.Err() != nil {
			return
		}
	}
	if perr != nil {
		c.replyErr(id, perr, true)
		return
	}
	resp.OK = true
	c.answer(id, resp)
}

// read streams a file's bytes as data messages of filesChunk, then
// returns the final answer: byte count, sha256 and the file's size.
func (c *filesConn) read(id uint32, req *filesRequest) (filesResponse, *problem.Error) {
	name, perr := filesPath(req.Path)
	if perr != nil {
		return filesResponse{}, perr
	}
	if req.Offset < 0 || req.Length < 0 {
		return filesResponse{}, problem.New(problem.InvalidArgument, "offset and length must not be negative")
	}
	f, fi, perr := openFile(c.root, req.Path, name)
	if perr != nil {
		return filesResponse{}, perr
	}
	defer f.Close()
	if !fi.Mode().IsRegular() {
		return filesResponse{}, problem.New(problem.InvalidArgument, "%s: not a regular file", req.Path)
	}
	size := fi.Size()
	if req.Offset > size {
		return filesResponse{}, problem.New(problem.InvalidArgument, "offset %d is past the end (%d bytes)", req.Offset, size).With("field", "offset")
	}
	left := int64(-1) // to EOF
	if req.Length > 0 {
		left = req.Length
	}
	h := sha256.New()
	var n int64
	off := req.Offset
	for left != 0 {
		bp := filesBufs.Get().(*[]byte)
		b := *bp
		want := filesChunk
		if left > 0 && left < int64(want) {
			want = int(left)
		}
		k, err := f.ReadAt(b[4:4+want], off)
		if k > 0 {
			binary.BigEndian.PutUint32(b, id)
			h.Write(b[4 : 4+k])
			if !c.send(filesOut{typ: websocket.MessageBinary, b: b[:4+k], data: true}) {
				return filesResponse{}, nil // ending
			}
			n += int64(k)
			off += int64(k)
			if left > 0 {
				left -= int64(k)
			}
		} else {
			filesBufs.Put(bp)
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			return filesResponse{}, filesError(req.Path, err)
		}
	}
	return filesResponse{Bytes: &n, Size: &size, SHA256: hex.EncodeToString(h.Sum(nil))}, nil
}

// appendAll appends the rest of r to buf.
func appendAll(r io.Reader, buf []byte) ([]byte, error) {
	for {
		if len(buf) == cap(buf) {
			buf = append(buf, 0)[:len(buf)]
		}
		n, err := r.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		if err == io.EOF {
			return buf, nil
		}
		if err != nil {
			return buf, err
		}
	}
}
