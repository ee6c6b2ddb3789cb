package targets

// The vocabulary of what a session names (SPEC §1, §3): its channels and
// its target. It lives here, with the channel matrix (Offered), so that
// targets needs nothing of lease; lease re-exports it.

// Channel names a kind of traffic a session carries (SPEC §1).
type Channel string

// The four channels.
const (
	Stdio Channel = "stdio"
	Files Channel = "files"
	CDP   Channel = "cdp"
	Page  Channel = "page"
)

// Channels lists every channel in a stable order.
var Channels = []Channel{Stdio, Files, CDP, Page}

// Valid reports whether c is a known channel.
func (c Channel) Valid() bool {
	for _, k := range Channels {
		if c == k {
			return true
		}
	}
	return false
}

// Target names what a session attaches to: exactly one of Service or
// Sandbox is set.
type Target struct {
	Service *ServiceRef `json:"service,omitempty"`
	Sandbox *SandboxRef `json:"sandbox,omitempty"`
}

// ServiceRef names a service of the tenant's catalog.
type ServiceRef struct {
	Name string `json:"name"`
}

// SandboxRef names a sandbox of the tenant's catalog.
type SandboxRef struct {
	ID string `json:"id"`
}

// String is "service/NAME" or "sandbox/ID", the form audit events record.
func (t Target) String() string {
	switch {
	case t.Service != nil:
		return "service/" + t.Service.Name
	case t.Sandbox != nil:
		return "sandbox/" + t.Sandbox.ID
	}
	return ""
}
