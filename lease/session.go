package lease

import (
	"crypto/rand"
	"encoding/base32"
	"strings"
	"time"

	"github.com/nimbus/gateway/targets"
)

// State is a session's lifecycle state. The only transitions are
// open → closed and open → expired; both are final.
type State string

// The session states of SPEC §3.
const (
	Open    State = "open"
	Closed  State = "closed"
	Expired State = "expired"
)

// Valid reports whether s is one of the three states.
func (s State) Valid() bool { return s == Open || s == Closed || s == Expired }

// The vocabulary of channels and targets is the catalog's (targets owns
// the channel matrix); these aliases keep it in the session's terms.

// Channel names a kind of traffic a session carries (SPEC §1).
type Channel = targets.Channel

// The four channels.
const (
	Stdio = targets.Stdio
	Files = targets.Files
	CDP   = targets.CDP
	Page  = targets.Page
)

// Channels lists every channel in a stable order.
var Channels = targets.Channels

// Target names what a session attaches to: exactly one of Service or
// Sandbox is set.
type Target = targets.Target

// ServiceRef names a service of the tenant's catalog.
type ServiceRef = targets.ServiceRef

// SandboxRef names a sandbox of the tenant's catalog.
type SandboxRef = targets.SandboxRef

// Snapshot records what a session attached to at open time (SPEC §3).
type Snapshot struct {
	Service    string `json:"service,omitempty"`
	Sandbox    string `json:"sandbox,omitempty"`
	Generation int64  `json:"generation"`
	// Backend says which backend serves the session: "local:<pid>" style
	// provider/workload for sandboxes, the browser instance for browsers.
	Backend string `json:"backend,omitempty"`
}

// Session is the stored session. Its JSON form is built by proxy; the
// fields here are what the store persists.
type Session struct {
	ID        string
	TenantID  string
	CreatedAt time.Time
	CreatedBy string

	Target         Target
	Channels       []Channel
	RequestedTTLMs *int64 // nil when the request named none
	TTL            time.Duration
	ExpiresAt      time.Time
	Snapshot       Snapshot

	// State as stored. Use StateAt to read it: a session past its expiry
	// reads as expired before the Expirer has recorded it.
	State       State
	ClosedAt    *time.Time
	CloseReason *string
	ClosedBy    *string
	// Owner is the replica that holds the session's local backends ("" on
	// a single replica).
	Owner string
}

// StateAt is the session's state as observed at now: an open session whose
// expiresAt has passed is expired, everywhere at once, whether or not the
// Expirer has run yet.
func (s *Session) StateAt(now time.Time) State {
	if s.State == Open && !now.Before(s.ExpiresAt) {
		return Expired
	}
	return s.State
}

// HasChannel reports whether the session was opened with c.
func (s *Session) HasChannel(c Channel) bool {
	for _, k := range s.Channels {
		if k == c {
			return true
		}
	}
	return false
}

var idEncoding = base32.NewEncoding("abcdefghijklmnopqrstuvwxyz234567").WithPadding(base32.NoPadding)

// NewID returns "ses_" and 26 characters of 128 random bits: opaque and
// unguessable, so a session id is not itself a capability worth guessing.
func NewID() string { return "ses_" + randomString() }

// NewEventID returns an audit event id, "evt_" and 128 random bits.
func NewEventID() string { return "evt_" + randomString() }

func randomString() string {
	var b [16]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails (Go 1.24+).
	return strings.ToLower(idEncoding.EncodeToString(b[:]))
}

// Millis truncates t to the millisecond precision of the API and the store,
// in UTC, so a time reads back exactly as it was written.
func Millis(t time.Time) time.Time { return t.UTC().Truncate(time.Millisecond) }
