package client

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
)

// Client calls one gateway for one tenant. Safe for concurrent use.
type Client struct {
	// Endpoint is the gateway's base URL, e.g. "http://localhost:8080".
	Endpoint string
	// Tenant is the tenant id of every call.
	Tenant string
	// Token is the tenant bearer token.
	Token string
	// HTTP is the client used; nil means http.DefaultClient.
	HTTP *http.Client
}

// New returns a Client.
func New(endpoint, tenant, token string) *Client {
	return &Client{Endpoint: strings.TrimRight(endpoint, "/"), Tenant: tenant, Token: token}
}

// Error is a problem+json answer of the gateway.
type Error struct {
	Status    int            `json:"status"`
	Code      string         `json:"code"`
	Title     string         `json:"title"`
	Detail    string         `json:"detail"`
	RequestID string         `json:"requestId"`
	Details   map[string]any `json:"details"`
	// RetryAfter is the Retry-After header, when the server sent one.
	RetryAfter string `json:"-"`
}

// Error implements error.
func (e *Error) Error() string {
	return fmt.Sprintf("%s (%d): %s [request %s]", e.Code, e.Status, e.Detail, e.RequestID)
}

// Target names what a session attaches to: set exactly one field.
type Target struct {
	Service *struct {
		Name string `json:"name"`
	} `json:"service,omitempty"`
	Sandbox *struct {
		ID string `json:"id"`
	} `json:"sandbox,omitempty"`
}

// ServiceTarget targets the service name.
func ServiceTarget(name string) Target {
	var t Target
	t.Service = &struct {
		Name string `json:"name"`
	}{name}
	return t
}

// SandboxTarget targets the sandbox id.
func SandboxTarget(id string) Target {
	var t Target
	t.Sandbox = &struct {
		ID string `json:"id"`
	}{id}
	return t
}

// OpenRequest is the body of an open.
type OpenRequest struct {
	Target         Target   `json:"target"`
	Channels       []string `json:"channels"`
	RequestedTTLMs int64    `json:"requestedTtlMs,omitempty"`
}

// Session is the session resource (SPEC §3).
type Session struct {
	Metadata struct {
		ID        string `json:"id"`
		TenantID  string `json:"tenantId"`
		CreatedAt string `json:"createdAt"`
		CreatedBy string `json:"createdBy"`
	} `json:"metadata"`
	Spec struct {
		Target         Target         `json:"target"`
		Channels       []string       `json:"channels"`
		RequestedTTLMs *int64         `json:"requestedTtlMs"`
		TTLMs          int64          `json:"ttlMs"`
		ExpiresAt      string         `json:"expiresAt"`
		TargetSnapshot map[string]any `json:"targetSnapshot"`
	} `json:"spec"`
	Status struct {
		State       string            `json:"state"`
		ClosedAt    *string           `json:"closedAt"`
		CloseReason *string           `json:"closeReason"`
		ClosedBy    *string           `json:"closedBy"`
		Connect     map[string]string `json:"connect"`
	} `json:"status"`
}

// Page is one page of a listing.
type Page struct {
	Items         []Session `json:"items"`
	NextPageToken string    `json:"nextPageToken"`
}

// ListOptions filter and page a listing.
type ListOptions struct {
	State     string
	PageSize  int
	PageToken string
}

// Open opens a session.
func (c *Client) Open(ctx context.Context, req OpenRequest) (*Session, error) {
	var s Session
	return &s, c.Do(ctx, http.MethodPost, c.tenantPath("sessions"), req, &s)
}

// Get reads a session.
func (c *Client) Get(ctx context.Context, id string) (*Session, error) {
	var s Session
	return &s, c.Do(ctx, http.MethodGet, c.tenantPath("sessions", id), nil, &s)
}

// List reads one page of sessions, newest first.
func (c *Client) List(ctx context.Context, o ListOptions) (*Page, error) {
	q := url.Values{}
	if o.State != "" {
		q.Set("state", o.State)
	}
	if o.PageSize > 0 {
		q.Set("pageSize", strconv.Itoa(o.PageSize))
	}
	if o.PageToken != "" {
		q.Set("pageToken", o.PageToken)
	}
	p := c.tenantPath("sessions")
	if len(q) > 0 {
		p += "?" + q.Encode()
	}
	var page Page
	return &page, c.Do(ctx, http.MethodGet, p, nil, &page)
}

// Close closes a session with reason.
func (c *Client) Close(ctx context.Context, id, reason string) (*Session, error) {
	var s Session
	return &s, c.Do(ctx, http.MethodPost, c.tenantPath("sessions", id, "close"), map[string]string{"reason": reason}, &s)
}

// Connect mints fresh connect URLs for an open session.
func (c *Client) Connect(ctx context.Context, id string) (*Session, error) {
	var s Session
	return &s, c.Do(ctx, http.MethodPost, c.tenantPath("sessions", id, "connect"), struct{}{}, &s)
}

func (c *Client) tenantPath(parts ...string) string {
	p := "/v1/tenants/" + url.PathEscape(c.Tenant)
	for _, s := range parts {
		p += "/" + url.PathEscape(s)
	}
	return p
}

// Do sends one API call: in (nil for none) as JSON, the answer decoded
// into out (nil to discard). A problem+json answer is returned as *Error.
func (c *Client) Do(ctx context.Context, method, path string, in, out any) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.Endpoint+path, body)
	if err != nil {
		return err
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	req.Header.Set("Authorization", "Bearer "+c.Token)
	hc := c.HTTP
	if hc == nil {
		hc = http.DefaultClient
	}
	resp, err := hc.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return err
	}
	if resp.StatusCode >= 300 {
		e := &Error{Status: resp.StatusCode, RetryAfter: resp.Header.Get("Retry-After")}
		if json.Unmarshal(b, e) != nil || e.Code == "" {
			e.Code, e.Detail = "unknown", strings.TrimSpace(string(b))
		}
		if e.RequestID == "" {
			e.RequestID = resp.Header.Get("X-Request-Id")
		}
		return e
	}
	if out == nil || len(b) == 0 {
		return nil
	}
	return json.Unmarshal(b, out)
}
