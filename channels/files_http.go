package channels

import (
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/textproto"
	"os"
	"strconv"
	"strings"

	"github.com/nimbus/gateway/problem"
)

// FilesHTTP serves the HTTP face of the files channel for one request.
// path is the request's path inside the root (already cut from
// /v1/connect/{sid}/files/ and URL-decoded; "" or "/" is the root).
//
//   - GET/HEAD on a file streams it (Range, Content-Length, ETag,
//     Last-Modified, If-None-Match…) as application/octet-stream; on a
//     directory it answers a JSON listing {"entries": […], "truncated"};
//     with ?stat=true it answers the entry of path itself (not following a
//     final symlink). A FIFO, device or socket is invalid_argument, refused
//     before it is opened (openFile). "Range: bytes=-0" is 416.
//   - PUT streams the body to a temp file in the target's directory
//     (creating missing parents), fsyncs it and renames it into place only
//     when complete and, when Content-Length was given, of that length;
//     over MaxFileSize it is payload_too_large. ?mode=0644 sets the mode
//     (default: the replaced file's, else 0644). Answers 201 (created) or
//     200 (replaced) with {"path", "bytes", "sha256"}.
//   - DELETE removes a file, symlink or empty directory, or a tree with
//     ?recursive=true. Answers 204.
//
// On a failure before anything was written FilesHTTP returns a
// *problem.Error and writes nothing (for method_not_allowed it sets the
// Allow header): the caller writes the problem+json. Once the answer has
// started it returns the error for logging only. 304 Not Modified is
// written by http.ServeContent; its 412 and 416 come back as problems
// (range_not_satisfiable keeps Content-Range: bytes */size).
func FilesHTTP(w http.ResponseWriter, r *http.Request, root, path string, o FilesOptions) error {
	if o.MaxFileSize <= 0 {
		o.MaxFileSize = filesDefaultMax
	}
	name, perr := filesPath(path)
	if perr != nil {
		return perr
	}
	switch r.Method {
	case http.MethodGet, http.MethodHead, http.MethodPut, http.MethodDelete:
	default:
		w.Header().Set("Allow", "GET, HEAD, PUT, DELETE")
		return problem.New(problem.MethodNotAllowed, "the files channel takes GET, HEAD, PUT and DELETE")
	}
	rt, err := os.OpenRoot(root)
	if err != nil {
		return problem.Wrap(problem.BadGateway, err, "sandbox file root unavailable")
	}
	defer rt.Close()
	sweepOnce(rt, root)
	h := filesHTTP{w: w, r: r, root: rt, path: path, name: name, opt: o}
	switch r.Method {
	case http.MethodPut:
		return h.put()
	case http.MethodDelete:
		return h.delete()
	default:
		return h.get()
	}
}

// filesHTTP is one request of the HTTP face.
type filesHTTP struct {
	w    http.ResponseWriter
	r    *http.Request
	root *os.Root
	path string // the client's spelling
	name string // relative to the root
	opt  FilesOptions
}

func (h *filesHTTP) get() error {
	q := h.r.URL.Query()
	if stat, perr := boolParam(q.Get("stat"), "stat"); perr != nil {
		return perr
	} else if stat {
		e, perr := statEntry(h.root, h.path, h.name)
		if perr != nil {
			return perr
		}
		return h.writeJSON(http.StatusOK, e)
	}
	f, fi, perr := openFile(h.root, h.path, h.name)
	if perr != nil {
		return perr
	}
	defer f.Close()
	switch {
	case fi.IsDir():
		entries, truncated, perr := listDir(h.root, h.path, h.name)
		if perr != nil {
			return perr
		}
		return h.writeJSON(http.StatusOK, filesListing{Entries: entries, Truncated: truncated})
	}
	hd := h.w.Header()
	hd.Set("ETag", etag(fi))
	// Never let a browser render a workload's file as a page of the
	// gateway's origin.
	hd.Set("Content-Type", "application/octet-stream")
	hd.Set("X-Content-Type-Options", "nosniff")
	req := h.r
	if v, changed := withoutEmptySuffixes(req.Header.Get("Range"), fi.Size()); changed {
		req = req.Clone(req.Context())
		req.Header.Set("Range", v)
	}
	rw := &refusalWriter{ResponseWriter: &countingWriter{ResponseWriter: h.w, onBytes: h.opt.OnBytes}}
	http.ServeContent(rw, req, "", fi.ModTime(), f)
	switch rw.refused {
	case http.StatusRequestedRangeNotSatisfiable:
		return problem.New(problem.RangeNotSatisfiable, "%s: the Range is malformed or starts past the end of its %d bytes", h.path, fi.Size()).
			With("size", fi.Size())
	case http.StatusPreconditionFailed:
		return problem.New(problem.PreconditionFailed, "%s: the file no longer matches the precondition (it is now %s)", h.path, etag(fi))
	}
	return nil
}

// withoutEmptySuffixes drops the zero-length suffix ranges ("-0") from
// a Range header value v, parsed as http.ServeContent parses it. RFC 9110
// §14.1.1 counts them unsatisfiable, but ServeContent answers "bytes=-0"
// with a 206 of no bytes (issue 12). When nothing is left, the result is
// a range starting at size, which ServeContent refuses with its 416 —
// after If-Range, which may still turn the answer into a 200 of the whole
// file. changed is false, and v returned as is, when there was no "-0".
func withoutEmptySuffixes(v string, size int64) (_ string, changed bool) {
	spec, ok := strings.CutPrefix(v, "bytes=")
	if !ok {
		return v, false
	}
	var kept []string
	for ra := range strings.SplitSeq(spec, ",") {
		t := textproto.TrimString(ra)
		if t == "" {
			continue
		}
		start, end, _ := strings.Cut(t, "-")
		start, end = textproto.TrimString(start), textproto.TrimString(end)
		if n, err := strconv.ParseInt(end, 10, 64); start == "" && end != "" && end[0] != '-' && err == nil && n == 0 {
			changed = true
			continue
		}
		kept = append(kept, t)
	}
	if !changed {
		return v, false
	}
	if len(kept) == 0 {
		return "bytes=" + strconv.FormatInt(size, 10) + "-", true
	}
	return "bytes=" + strings.Join(kept, ","), true
}

// refusalWriter keeps http.ServeContent's own 412 and 416 answers (plain
// text) from being written, so FilesHTTP can answer them as problem+json
// like every other refusal. Headers ServeContent set for them stay
// (416's Content-Range: bytes */size).
type refusalWriter struct {
	http.ResponseWriter
	refused int
}

func (w *refusalWriter) WriteHeader(code int) {
	if code == http.StatusRequestedRangeNotSatisfiable || code == http.StatusPreconditionFailed {
		w.refused = code
		return
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *refusalWriter) Write(p []byte) (int, error) {
	if w.refused != 0 {
		return len(p), nil // the plain-text body of the refusal
	}
	return w.ResponseWriter.Write(p)
}

func (w *refusalWriter) ReadFrom(r io.Reader) (int64, error) {
	if w.refused != 0 {
		return io.Copy(io.Discard, r)
	}
	return w.ResponseWriter.(io.ReaderFrom).ReadFrom(r)
}

// Unwrap lets http.ResponseController reach the connection.
func (w *refusalWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// filesListing is the JSON answer for a directory.
type filesListing struct {
	Entries   []fileEntry `json:"entries"`
	Truncated bool        `json:"truncated"`
}

func (h *filesHTTP) put() error {
	size := h.r.ContentLength // -1 when unknown
	if size > h.opt.MaxFileSize {
		return problem.New(problem.PayloadTooLarge, "%s: %d bytes is over the %d-byte file limit", h.path, size, h.opt.MaxFileSize).With("limit", h.opt.MaxFileSize)
	}
	existed := false
	if fi, err := h.root.Stat(h.name); err == nil && !fi.IsDir() {
		existed = true
	}
	u, perr := h.opt.beginUpload(h.root, h.path, size, h.r.URL.Query().Get("mode"))
	if perr != nil {
		return perr
	}
	bp := filesBufs.Get().(*[]byte)
	n, err := io.CopyBuffer(onlyWriter{u, &h.opt}, h.r.Body, (*bp)[:filesChunk])
	filesBufs.Put(bp)
	if h.opt.OnBytes != nil && n > 0 {
		h.opt.OnBytes("in", int(n))
	}
	if err != nil {
		u.abort()
		var werr *uploadWriteError
		if errors.As(err, &werr) {
			return u.writeError(werr.err)
		}
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return problem.New(problem.PayloadTooLarge, "%s: request body over its limit", h.path)
		}
		// The client went away or sent less than its Content-Length.
		return problem.Wrap(problem.InvalidArgument, err, h.path+": upload cut off")
	}
	res, perr := u.commit()
	if perr != nil {
		return perr
	}
	if res.fi != nil {
		h.w.Header().Set("ETag", etag(res.fi))
	}
	status := http.StatusCreated
	if existed {
		status = http.StatusOK
	}
	return h.writeJSON(status, struct {
		Path   string `json:"path"`
		Bytes  int64  `json:"bytes"`
		SHA256 string `json:"sha256"`
	}{"/" + trimDot(h.name), res.Bytes, res.SHA256})
}

func (h *filesHTTP) delete() error {
	recursive, perr := boolParam(h.r.URL.Query().Get("recursive"), "recursive")
	if perr != nil {
		return perr
	}
	name, perr := filesLeaf(h.path)
	if perr != nil {
		return perr
	}
	if perr := removePath(h.root, h.path, name, recursive); perr != nil {
		return perr
	}
	h.w.WriteHeader(http.StatusNoContent)
	return nil
}

func (h *filesHTTP) writeJSON(status int, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return problem.Wrap(problem.Internal, err, "encode answer")
	}
	hd := h.w.Header()
	hd.Set("Content-Type", "application/json")
	hd.Set("Content-Length", strconv.Itoa(len(b)))
	h.w.WriteHeader(status)
	if h.r.Method == http.MethodHead {
		return nil
	}
	_, err = h.w.Write(b)
	return err
}

func boolParam(v, field string) (bool, *problem.Error) {
	if v == "" {
		return false, nil
	}
	b, err := strconv.ParseBool(v)
	if err != nil {
		return false, problem.New(problem.InvalidArgument, "%s must be true or false", field).With("field", field)
	}
	return b, nil
}

func trimDot(name string) string {
	if name == "." {
		return ""
	}
	return name
}

// onlyWriter hides upload's other methods from io.Copy and tells the
// upload's own failures from the body's.
type onlyWriter struct {
	u *upload
	o *FilesOptions
}

func (w onlyWriter) Write(p []byte) (int, error) {
	n, err := w.o.writeUpload(w.u, p)
	if err != nil {
		err = &uploadWriteError{err}
	}
	return n, err
}

type uploadWriteError struct{ err error }

func (e *uploadWriteError) Error() string { return e.err.Error() }
func (e *uploadWriteError) Unwrap() error { return e.err }

// countingWriter reports the bytes of a response body to onBytes. It
// implements io.ReaderFrom so http.ServeContent still reaches net/http's
// sendfile path: a download does not pass through user-space buffers.
type countingWriter struct {
	http.ResponseWriter
	onBytes func(dir string, n int)
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.ResponseWriter.Write(p)
	c.count(int64(n))
	return n, err
}

func (c *countingWriter) ReadFrom(r io.Reader) (int64, error) {
	var n int64
	var err error
	if rf, ok := c.ResponseWriter.(io.ReaderFrom); ok {
		n, err = rf.ReadFrom(r)
	} else {
		n, err = io.Copy(onlyWriterOf{c.ResponseWriter}, r)
	}
	c.count(n)
	return n, err
}

func (c *countingWriter) count(n int64) {
	if c.onBytes != nil && n > 0 {
		c.onBytes("out", int(n))
	}
}

// Unwrap lets http.ResponseController reach the real writer.
func (c *countingWriter) Unwrap() http.ResponseWriter { return c.ResponseWriter }

// onlyWriterOf hides everything but Write (no ReaderFrom recursion).
type onlyWriterOf struct{ io.Writer }
