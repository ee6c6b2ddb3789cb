package client

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
)

// The files channel over HTTP (SPEC §5.2). Every method takes filesURL,
// the session's `files` connect URL (ws://host/v1/connect/{sid}/files?token=…,
// from Session.Status.Connect["files"]), and a path inside the sandbox's
// file root ("/a/b" and "a/b" are the same file). The connect token in
// filesURL authorizes the call; the tenant token is not sent.

// FileInfo is a file's entry (stat, or one line of a listing).
type FileInfo struct {
	Name string `json:"name"`
	// Type is "file", "dir", "symlink" or "other".
	Type string `json:"type"`
	Size int64  `json:"size"`
	// Mode is the permission bits as an octal string, e.g. "0644".
	Mode string `json:"mode"`
	// MTime is RFC 3339 UTC with milliseconds.
	MTime string `json:"mtime"`
}

// Listing is a directory's entries, sorted by name. Truncated says the
// directory has more than the server lists (10000).
type Listing struct {
	Entries   []FileInfo `json:"entries"`
	Truncated bool       `json:"truncated"`
}

// UploadResult is the server's account of an upload.
type UploadResult struct {
	Path   string `json:"path"`
	Bytes  int64  `json:"bytes"`
	SHA256 string `json:"sha256"`
}

// Upload writes r to remotePath, creating missing parent directories. The
// file appears only once complete: an upload cut off leaves the previous
// file (or nothing). size is r's length, or -1 when unknown (the body is
// then chunked). progress, if not nil, is called with the bytes sent so
// far.
func (c *Client) Upload(ctx context.Context, filesURL, remotePath string, r io.Reader, size int64, progress func(done int64)) error {
	_, err := c.Put(ctx, filesURL, remotePath, r, size, progress)
	return err
}

// Put is Upload that also returns the server's byte count and sha256 of
// what it stored.
func (c *Client) Put(ctx context.Context, filesURL, remotePath string, r io.Reader, size int64, progress func(done int64)) (*UploadResult, error) {
	u, err := filesHTTPURL(filesURL, remotePath, nil)
	if err != nil {
		return nil, err
	}
	body := r
	if progress != nil {
		body = &progressReader{r: r, progress: progress}
	}
	if size == 0 {
		body = http.NoBody
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPut, u, io.NopCloser(body))
	if err != nil {
		return nil, err
	}
	req.ContentLength = size
	req.Header.Set("Content-Type", "application/octet-stream")
	var res UploadResult
	return &res, c.filesDo(req, &res)
}

// Download writes remotePath's bytes from offset on to w, in order, and
// returns how many it wrote. offset > 0 asks only for the rest of the file
// (a Range request); an offset at the file's end downloads nothing.
// progress, if not nil, is called with offset plus the bytes written so
// far.
//
// w is only ever written with Write, even when it is an *os.File: issue 17
// was a download to stdout that used WriteAt and so failed on a pipe
// ("illegal seek") and on a file opened with >> (O_APPEND), and overwrote
// earlier output in the same file. Use DownloadAt to write at file
// offsets.
func (c *Client) Download(ctx context.Context, filesURL, remotePath string, w io.Writer, offset int64, progress func(done int64)) (int64, error) {
	return c.download(ctx, filesURL, remotePath, w, offset, progress)
}

// DownloadAt is Download that writes byte i of the remote file at offset i
// of w, so a partial local copy of offset bytes is completed in place
// (resumed) whatever w's current position. w must support WriteAt: a
// regular file opened without O_APPEND, not a pipe or a terminal.
func (c *Client) DownloadAt(ctx context.Context, filesURL, remotePath string, w io.WriterAt, offset int64, progress func(done int64)) (int64, error) {
	return c.download(ctx, filesURL, remotePath, io.NewOffsetWriter(w, offset), offset, progress)
}

// download writes the bytes from offset on to dst, which the exported
// callers chose: w itself, or an offset writer over it.
func (c *Client) download(ctx context.Context, filesURL, remotePath string, dst io.Writer, offset int64, progress func(done int64)) (int64, error) {
	u, err := filesHTTPURL(filesURL, remotePath, nil)
	if err != nil {
		return 0, err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return 0, err
	}
	if offset > 0 {
		req.Header.Set("Range", fmt.Sprintf("bytes=%d-", offset))
	}
	resp, err := c.httpClient().Do(req)
	if err != nil {
		return 0, redactURLError(err)
	}
	defer resp.Body.Close()
	body := io.Reader(resp.Body)
	switch {
	case resp.StatusCode == http.StatusRequestedRangeNotSatisfiable && offset > 0:
		// Nothing from offset on: complete if the file is exactly offset
		// bytes long.
		if size, ok := rangeSize(resp.Header.Get("Content-Range")); ok && size == offset {
			return 0, nil
		}
		return 0, fmt.Errorf("download %s: the remote file is shorter than offset %d", remotePath, offset)
	case resp.StatusCode >= 300:
		return 0, responseError(resp)
	case resp.StatusCode == http.StatusOK && offset > 0:
		// The server ignored the range: skip to offset.
		if _, err := io.CopyN(io.Discard, body, offset); err != nil {
			return 0, fmt.Errorf("download %s: skip to offset: %w", remotePath, err)
		}
	case resp.StatusCode == http.StatusOK && resp.Header.Get("Content-Type") == "application/json":
		return 0, fmt.Errorf("download %s: is a directory", remotePath)
	}
	if progress != nil {
		dst = &progressWriter{w: dst, done: offset, progress: progress}
	}
	n, err := io.Copy(onlyWriter{dst}, body)
	if err == nil && resp.ContentLength >= 0 && n != resp.ContentLength {
		err = io.ErrUnexpectedEOF
	}
	return n, err
}

// Stat returns remotePath's entry; a symlink is reported as itself.
func (c *Client) Stat(ctx context.Context, filesURL, remotePath string) (*FileInfo, error) {
	u, err := filesHTTPURL(filesURL, remotePath, url.Values{"stat": {"true"}})
	if err != nil {
		return nil, err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, err
	}
	var fi FileInfo
	return &fi, c.filesDo(req, &fi)
}

// ListFiles returns the entries of the directory remotePath. (List is
// the listing of sessions.)
func (c *Client) ListFiles(ctx context.Context, filesURL, remotePath string) (*Listing, error) {
	u, err := filesHTTPURL(filesURL, remotePath, nil)
	if err != nil {
		return nil, err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Accept", "application/json")
	resp, err := c.httpClient().Do(req)
	if err != nil {
		return nil, redactURLError(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode >= 300 {
		return nil, responseError(resp)
	}
	if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
		return nil, fmt.Errorf("list %s: not a directory", remotePath)
	}
	var l Listing
	return &l, json.NewDecoder(resp.Body).Decode(&l)
}

// Remove removes a file, symlink or empty directory; with recursive, a
// whole tree.
func (c *Client) Remove(ctx context.Context, filesURL, remotePath string, recursive bool) error {
	var q url.Values
	if recursive {
		q = url.Values{"recursive": {"true"}}
	}
	u, err := filesHTTPURL(filesURL, remotePath, q)
	if err != nil {
		return err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodDelete, u, nil)
	if err != nil {
		return err
	}
	return c.filesDo(req, nil)
}

// FilesHTTPURL turns the files connect URL into the HTTP URL of
// remotePath: ws→http, wss→https, /v1/connect/{sid}/files →
// /v1/connect/{sid}/files/{remotePath}, the token kept. extra is added to
// the query.
func FilesHTTPURL(filesURL, remotePath string, extra url.Values) (string, error) {
	return filesHTTPURL(filesURL, remotePath, extra)
}

func filesHTTPURL(filesURL, remotePath string, extra url.Values) (string, error) {
	u, err := url.Parse(filesURL)
	if err != nil {
		return "", fmt.Errorf("files URL: %w", err)
	}
	switch u.Scheme {
	case "ws":
		u.Scheme = "http"
	case "wss":
		u.Scheme = "https"
	case "http", "https":
	default:
		return "", fmt.Errorf("files URL: scheme %q, want ws or wss", u.Scheme)
	}
	if !strings.HasSuffix(u.Path, "/files") && !strings.HasSuffix(u.Path, "/files/") {
		return "", fmt.Errorf("files URL: path %q is not a files connect path", u.Path)
	}
	base := strings.TrimSuffix(u.Path, "/")
	u.Path = base + "/" + strings.TrimLeft(remotePath, "/")
	u.RawPath = ""
	if extra != nil {
		q := u.Query()
		for k, vs := range extra {
			q[k] = vs
		}
		u.RawQuery = q.Encode()
	}
	return u.String(), nil
}

// filesDo sends req and decodes a JSON answer into out (nil to discard).
func (c *Client) filesDo(req *http.Request, out any) error {
	resp, err := c.httpClient().Do(req)
	if err != nil {
		return redactURLError(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode >= 300 {
		return responseError(resp)
	}
	if out == nil {
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<20))
		return nil
	}
	return json.NewDecoder(io.LimitReader(resp.Body, 16<<20)).Decode(out)
}

func (c *Client) httpClient() *http.Client {
	if c != nil && c.HTTP != nil {
		return c.HTTP
	}
	return http.DefaultClient
}

// responseError reads a non-2xx answer as *Error.
func responseError(resp *http.Response) error {
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	e := &Error{Status: resp.StatusCode, RetryAfter: resp.Header.Get("Retry-After")}
	if json.Unmarshal(b, e) != nil || e.Code == "" {
		e.Code, e.Detail = "unknown", strings.TrimSpace(string(b))
		if e.Detail == "" {
			e.Detail = resp.Status
		}
	}
	if e.RequestID == "" {
		e.RequestID = resp.Header.Get("X-Request-Id")
	}
	return e
}

// rangeSize reads the size of "bytes */size".
func rangeSize(cr string) (int64, bool) {
	_, s, ok := strings.Cut(cr, "/")
	if !ok {
		return 0, false
	}
	n, err := strconv.ParseInt(s, 10, 64)
	return n, err == nil
}

type progressReader struct {
	r        io.Reader
	done     int64
	progress func(int64)
}

func (p *progressReader) Read(b []byte) (int, error) {
	n, err := p.r.Read(b)
	if n > 0 {
		p.done += int64(n)
		p.progress(p.done)
	}
	return n, err
}

type progressWriter struct {
	w        io.Writer
	done     int64
	progress func(int64)
}

func (p *progressWriter) Write(b []byte) (int, error) {
	n, err := p.w.Write(b)
	if n > 0 {
		p.done += int64(n)
		p.progress(p.done)
	}
	return n, err
}

// onlyWriter hides ReaderFrom so io.Copy uses its own buffer.
type onlyWriter struct{ io.Writer }

// errNotFiles is returned for a session without the files channel.
var errNotFiles = errors.New("the session has no files channel")

// FilesURL returns the session's files connect URL, or an error when the
// session was not opened with the files channel.
func (s *Session) FilesURL() (string, error) {
	if u := s.Status.Connect["files"]; u != "" {
		return u, nil
	}
	return "", errNotFiles
}
