package proxy

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"reflect"
	"strconv"
	"strings"
	"time"

	"github.com/nimbus/gateway/lease"
	"github.com/nimbus/gateway/problem"
)

// maxBody bounds every JSON request body (SPEC §4.1).
const maxBody = 1 << 20

// timeLayout is RFC 3339 UTC with milliseconds, the API's one time format.
const timeLayout = "2006-01-02T15:04:05.000Z"

func formatTime(t time.Time) string { return t.UTC().Format(timeLayout) }

func formatTimePtr(t *time.Time) *string {
	if t == nil {
		return nil
	}
	s := formatTime(*t)
	return &s
}

// sessionJSON is the session resource of SPEC §3.
type sessionJSON struct {
	Metadata struct {
		ID        string `json:"id"`
		TenantID  string `json:"tenantId"`
		CreatedAt string `json:"createdAt"`
		CreatedBy string `json:"createdBy"`
	} `json:"metadata"`
	Spec struct {
		Target         lease.Target    `json:"target"`
		Channels       []lease.Channel `json:"channels"`
		RequestedTTLMs *int64          `json:"requestedTtlMs"`
		TTLMs          int64           `json:"ttlMs"`
		ExpiresAt      string          `json:"expiresAt"`
		TargetSnapshot lease.Snapshot  `json:"targetSnapshot"`
	} `json:"spec"`
	Status struct {
		State       lease.State       `json:"state"`
		ClosedAt    *string           `json:"closedAt"`
		CloseReason *string           `json:"closeReason"`
		ClosedBy    *string           `json:"closedBy"`
		Connect     map[string]string `json:"connect,omitempty"`
	} `json:"status"`
}

// renderSession builds the resource as read at now; connect is nil except
// in the responses that mint URLs.
func renderSession(s *lease.Session, now time.Time, connect map[string]string) sessionJSON {
	var j sessionJSON
	j.Metadata.ID = s.ID
	j.Metadata.TenantID = s.TenantID
	j.Metadata.CreatedAt = formatTime(s.CreatedAt)
	j.Metadata.CreatedBy = s.CreatedBy
	j.Spec.Target = s.Target
	j.Spec.Channels = s.Channels
	j.Spec.RequestedTTLMs = s.RequestedTTLMs
	j.Spec.TTLMs = s.TTL.Milliseconds()
	j.Spec.ExpiresAt = formatTime(s.ExpiresAt)
	j.Spec.TargetSnapshot = s.Snapshot
	j.Status.State = s.StateAt(now)
	j.Status.ClosedAt = formatTimePtr(s.ClosedAt)
	j.Status.CloseReason = s.CloseReason
	j.Status.ClosedBy = s.ClosedBy
	j.Status.Connect = connect
	return j
}

// OpenRequest is the decoded body of an open (SPEC §4.1).
type OpenRequest struct {
	Target         lease.Target
	Channels       []lease.Channel
	RequestedTTLMs *int64
}

// DecodeOpenRequest parses and validates an open body: exactly one target,
// known channels without duplicates (at least one), requestedTtlMs absent
// or a JSON integer ≥ 1000. Unknown fields are rejected, not ignored: a
// misspelt "requestedTTLMs" would otherwise silently open a session with
// the default TTL. Every failure is invalid_argument naming the field.
func DecodeOpenRequest(body []byte) (*OpenRequest, error) {
	var raw struct {
		Target         *json.RawMessage `json:"target"`
		Channels       *json.RawMessage `json:"channels"`
		RequestedTTLMs *json.RawMessage `json:"requestedTtlMs"`
	}
	if err := decodeStrict(body, &raw); err != nil {
		return nil, err
	}
	req := &OpenRequest{}
	if raw.Target == nil {
		return nil, invalid("target", "target is required")
	}
	var tgt struct {
		Service *struct {
			Name string `json:"name"`
		} `json:"service"`
		Sandbox *struct {
			ID string `json:"id"`
		} `json:"sandbox"`
	}
	if err := decodeStrict(*raw.Target, &tgt); err != nil {
		return nil, withField(err, "target")
	}
	switch {
	case tgt.Service != nil && tgt.Sandbox != nil:
		return nil, invalid("target", "target must name exactly one of service or sandbox, not both")
	case tgt.Service != nil:
		if tgt.Service.Name == "" {
			return nil, invalid("target.service.name", "target.service.name is required")
		}
		req.Target.Service = &lease.ServiceRef{Name: tgt.Service.Name}
	case tgt.Sandbox != nil:
		if tgt.Sandbox.ID == "" {
			return nil, invalid("target.sandbox.id", "target.sandbox.id is required")
		}
		req.Target.Sandbox = &lease.SandboxRef{ID: tgt.Sandbox.ID}
	default:
		return nil, invalid("target", "target must name exactly one of service or sandbox")
	}

	if raw.Channels == nil {
		return nil, invalid("channels", "channels is required")
	}
	var names []string
	if err := json.Unmarshal(*raw.Channels, &names); err != nil || names == nil {
		return nil, invalid("channels", "channels must be an array of channel names")
	}
	if len(names) == 0 {
		return nil, invalid("channels", "channels must name at least one channel")
	}
	seen := map[lease.Channel]bool{}
	for _, n := range names {
		c := lease.Channel(n)
		if !c.Valid() {
			return nil, invalid("channels", fmt.Sprintf("unknown channel %q (known: stdio, files, cdp, page)", n))
		}
		if seen[c] {
			return nil, invalid("channels", fmt.Sprintf("channel %q is listed twice", n))
		}
		seen[c] = true
		req.Channels = append(req.Channels, c)
	}

	if raw.RequestedTTLMs != nil && !bytes.Equal(bytes.TrimSpace(*raw.RequestedTTLMs), []byte("null")) {
		v, err := strconv.ParseInt(string(bytes.TrimSpace(*raw.RequestedTTLMs)), 10, 64)
		if err != nil {
			return nil, invalid("requestedTtlMs", "requestedTtlMs must be an integer number of milliseconds")
		}
		if v < lease.MinRequestedTTLMs {
			return nil, invalid("requestedTtlMs", fmt.Sprintf("requestedTtlMs must be at least %d", lease.MinRequestedTTLMs))
		}
		req.RequestedTTLMs = &v
	}
	return req, nil
}

// decodeStrict unmarshals one JSON value into v, refusing unknown fields
// and trailing data. Field names must match exactly: encoding/json alone
// matches them case-insensitively, which would let "requestedTTLMs" through.
func decodeStrict(body []byte, v any) error {
	// Field names first: exactKeys knows the full path of an unknown
	// nested field ("target.service.kind"), the decoder only its leaf.
	if err := exactKeys(body, reflect.TypeOf(v), ""); err != nil {
		return err
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return jsonError(err)
	}
	if dec.More() {
		return invalid("", "request body must hold a single JSON value")
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return invalid("", "request body must hold a single JSON value")
	}
	return nil
}

// exactKeys checks that every key of the JSON object raw is, with its
// exact case, the json name of a field of t, recursing into struct fields.
func exactKeys(raw []byte, t reflect.Type, prefix string) error {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if t.Kind() != reflect.Struct {
		return nil
	}
	var obj map[string]json.RawMessage
	if json.Unmarshal(raw, &obj) != nil {
		return nil // not an object (e.g. null); the typed decode judged it
	}
	fields := map[string]reflect.Type{}
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		if name == "" {
			name = f.Name
		}
		fields[name] = f.Type
	}
	for k, v := range obj {
		ft, ok := fields[k]
		if !ok {
			return invalid(prefix+k, fmt.Sprintf("unknown field %q", prefix+k))
		}
		if err := exactKeys(v, ft, prefix+k+"."); err != nil {
			return err
		}
	}
	return nil
}

// jsonError turns a decoding error into invalid_argument with a message a
// client can act on.
func jsonError(err error) error {
	var syn *json.SyntaxError
	var typ *json.UnmarshalTypeError
	switch {
	case errors.Is(err, io.EOF):
		return invalid("", "request body is empty; expected a JSON object")
	case errors.As(err, &syn):
		return invalid("", fmt.Sprintf("malformed JSON at byte %d", syn.Offset))
	case errors.As(err, &typ):
		return invalid(typ.Field, fmt.Sprintf("%s must be %s, not %s", fieldName(typ.Field), typ.Type.String(), typ.Value))
	}
	msg := err.Error()
	const unknown = "json: unknown field "
	if len(msg) > len(unknown) && msg[:len(unknown)] == unknown {
		f, _ := strconv.Unquote(msg[len(unknown):])
		return invalid(f, fmt.Sprintf("unknown field %s", msg[len(unknown):]))
	}
	return invalid("", "malformed JSON: "+msg)
}

func fieldName(f string) string {
	if f == "" {
		return "the body"
	}
	return f
}

func invalid(field, msg string) error {
	e := problem.New(problem.InvalidArgument, "%s", msg)
	if field != "" {
		e.With("field", field)
	}
	return e
}

// withField prefixes the field of an invalid_argument error with parent.
func withField(err error, parent string) error {
	pe := problem.From(err)
	if f, ok := pe.Details["field"].(string); ok && f != "" {
		pe.Details["field"] = parent + "." + f
	} else {
		pe.With("field", parent)
	}
	return pe
}

// bodyTimeout bounds reading one JSON request body.
const bodyTimeout = 30 * time.Second

// readBody reads a JSON body of at most maxBody bytes; a larger one is
// payload_too_large without reading past the limit.
func readBody(w http.ResponseWriter, r *http.Request) ([]byte, error) {
	// A JSON body is at most 1 MiB: a client trickling it for longer than
	// bodyTimeout is holding a connection and a goroutine for nothing.
	// (The server has no ReadTimeout, which would also cut file uploads.)
	_ = http.NewResponseController(w).SetReadDeadline(time.Now().Add(bodyTimeout))
	r.Body = http.MaxBytesReader(w, r.Body, maxBody)
	b, err := io.ReadAll(r.Body)
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return nil, problem.New(problem.PayloadTooLarge, "request body is over %d bytes", maxBody)
		}
		return nil, invalid("", "could not read the request body")
	}
	return b, nil
}
