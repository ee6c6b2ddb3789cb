package lease

import "time"

// Event is one audit record (SPEC §4.5). It never holds a token or a
// signed URL: Target is a name, RemoteAddr an address.
type Event struct {
	ID         string    `json:"id"`
	Time       time.Time `json:"time"`
	TenantID   string    `json:"tenantId"`
	Principal  string    `json:"principal"`
	Action     Action    `json:"action"`
	Outcome    Outcome   `json:"outcome"`
	SessionID  string    `json:"sessionId,omitempty"`
	Target     string    `json:"target,omitempty"`
	Code       string    `json:"code,omitempty"`
	RequestID  string    `json:"requestId,omitempty"`
	RemoteAddr string    `json:"remoteAddr,omitempty"`
}

// Action is what an audit event records.
type Action string

// The audited actions.
const (
	ActionOpen       Action = "session.open"
	ActionGet        Action = "session.get"
	ActionList       Action = "session.list"
	ActionClose      Action = "session.close"
	ActionConnectURL Action = "session.connect_url"
	ActionExpire     Action = "session.expire"
	ActionConnect    Action = "session.connect"
	ActionDisconnect Action = "session.disconnect"
)

// Outcome says whether the audited action happened.
type Outcome string

// The outcomes: allowed and done, refused by policy, or failed otherwise.
const (
	Success Outcome = "success"
	Denied  Outcome = "denied"
	Failure Outcome = "failure"
)

// SystemPrincipal is the principal of events the gateway causes itself,
// such as expiries.
const SystemPrincipal = "system:gateway"

// AuditQuery selects audit events of one tenant, newest first.
type AuditQuery struct {
	TenantID  string
	SessionID string // "" = any
	Action    Action // "" = any
	PageSize  int
	After     *Cursor
}
