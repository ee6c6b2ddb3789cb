package lease

import (
	"encoding/base64"
	"encoding/json"
	"time"

	"github.com/nimbus/gateway/problem"
)

// Cursor is a keyset position in a newest-first listing: the last item
// returned. Keyset (not offset) paging keeps pages stable while sessions
// are being opened.
type Cursor struct {
	Time time.Time
	ID   string
	// Filter binds the cursor to the query that made it, so a token from
	// one listing cannot silently page through another.
	Filter string
}

type cursorWire struct {
	T int64  `json:"t"`
	I string `json:"i"`
	F string `json:"f,omitempty"`
}

// Encode returns the opaque page token of c.
func (c *Cursor) Encode() string {
	b, _ := json.Marshal(cursorWire{T: c.Time.UnixMilli(), I: c.ID, F: c.Filter})
	return base64.RawURLEncoding.EncodeToString(b)
}

// DecodeCursor parses a page token made for filter; "" is the first page.
func DecodeCursor(token, filter string) (*Cursor, error) {
	if token == "" {
		return nil, nil
	}
	bad := problem.New(problem.InvalidArgument, "pageToken is not valid for this listing").With("field", "pageToken")
	b, err := base64.RawURLEncoding.DecodeString(token)
	if err != nil {
		return nil, bad
	}
	var w cursorWire
	if json.Unmarshal(b, &w) != nil || w.I == "" || w.F != filter {
		return nil, bad
	}
	return &Cursor{Time: time.UnixMilli(w.T).UTC(), ID: w.I, Filter: filter}, nil
}

// PageSize clamps a requested page size: 0 means 50, and at most 500.
func PageSize(n int) int {
	switch {
	case n <= 0:
		return 50
	case n > 500:
		return 500
	}
	return n
}
