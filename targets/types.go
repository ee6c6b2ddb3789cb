package targets

import (
	"time"
)

// Kind is the kind of a service (SPEC §2).
type Kind string

// The service kinds.
const (
	KindSandbox  Kind = "sandbox"
	KindBrowser  Kind = "browser"
	KindBuiltin  Kind = "builtin"
	KindExternal Kind = "external"
)

// Valid reports whether k is a known kind.
func (k Kind) Valid() bool {
	switch k {
	case KindSandbox, KindBrowser, KindBuiltin, KindExternal:
		return true
	}
	return false
}

// Service is a named entry of a tenant's catalog.
type Service struct {
	TenantID string `json:"tenantId"`
	Name     string `json:"name"`
	Kind     Kind   `json:"kind"`
	// Sandbox is the sandbox a KindSandbox service runs in.
	Sandbox string `json:"sandbox,omitempty"`
	// URL is where a KindExternal service lives.
	URL string `json:"url,omitempty"`
	// Dynamic marks a service whose definition may change while the
	// gateway runs; opens on it check the generation at commit.
	Dynamic bool `json:"dynamic"`
	// Generation is assigned by the server: 1 on creation, +1 on every
	// change of the definition.
	Generation int64     `json:"generation"`
	UpdatedAt  time.Time `json:"updatedAt"`
}

// SameDefinition reports whether s and o define the same service, ignoring
// the server-assigned fields; a PUT of the same definition keeps the
// generation.
func (s Service) SameDefinition(o Service) bool {
	return s.Kind == o.Kind && s.Sandbox == o.Sandbox && s.URL == o.URL && s.Dynamic == o.Dynamic
}

// SandboxState is a sandbox's lifecycle state.
type SandboxState string

// The sandbox states: pending until its workload starts, then ready, or
// failed when it cannot start; stopped once deleted.
const (
	Pending SandboxState = "pending"
	Ready   SandboxState = "ready"
	Stopped SandboxState = "stopped"
	Failed  SandboxState = "failed"
)

// Sandbox is an isolated workload with its own file root.
type Sandbox struct {
	TenantID   string       `json:"tenantId"`
	ID         string       `json:"id"`
	State      SandboxState `json:"state"`
	Generation int64        `json:"generation"`
	// Command is the workload: argv, run in Root.
	Command []string `json:"command"`
	// TTY runs the workload on a pseudo-terminal instead of pipes.
	TTY bool     `json:"tty"`
	Env []string `json:"env,omitempty"`
	// Root is the sandbox's file root and the workload's working
	// directory; assigned by the provider.
	Root string `json:"root,omitempty"`
	// Resources are the workload's limits as asked for (zero fields:
	// the gateway's defaults).
	Resources Resources `json:"resources"`
	// Network is what the workload can reach; "" reads as none.
	Network Network `json:"network,omitempty"`
	// Error says why a failed sandbox failed.
	Error string `json:"error,omitempty"`
	// Reason says how a failed sandbox's workload ended (exited,
	// signaled, oom); "" when it never ran or has not ended.
	Reason ExitReason `json:"reason,omitempty"`
	// Usage is what a running workload uses now; filled in by
	// Catalog.GetSandbox from its cgroups, never stored, nil without
	// them (the process runtime).
	Usage     *Usage    `json:"usage,omitempty"`
	UpdatedAt time.Time `json:"updatedAt"`
	// UID is the user id of the sandbox's own from Options.UIDs (0:
	// none), set only through Store.SetSandboxUID. Stored, not derived,
	// so it is the same after a restart. Not shown to clients.
	UID uint32 `json:"-"`
}

// Offered returns the channels a target of this kind offers (SPEC §2):
// sandboxes and sandbox services offer stdio and files, the browser cdp
// and page, everything else none.
func Offered(k Kind) []Channel {
	switch k {
	case KindSandbox:
		return []Channel{Stdio, Files}
	case KindBrowser:
		return []Channel{CDP, Page}
	}
	return []Channel{}
}
