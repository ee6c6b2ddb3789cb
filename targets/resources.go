package targets

import (
	"encoding/json"
	"fmt"
	"strconv"

	"github.com/dustin/go-humanize"
)

// Resources are the limits of a sandbox's workload (SPEC §9.2), enforced
// by the container's cgroups under the runc runtime; the process runtime
// has no cgroups and ignores them. A zero field takes the gateway's
// default (Options.Runc.Defaults).
type Resources struct {
	// Memory is the most memory (and swap: none beyond it) the workload's
	// processes may use together; past it the kernel OOM-kills one.
	Memory Bytes `json:"memory,omitempty"`
	// PIDs is the most processes and threads the workload may have; past
	// it fork and clone fail with EAGAIN.
	PIDs int64 `json:"pids,omitempty"`
	// CPUs is the CPU time it may use per wall-clock second (1.5: one and
	// a half cores), as a CFS quota.
	CPUs float64 `json:"cpus,omitempty"`
}

// Or returns r with its zero fields taken from d.
func (r Resources) Or(d Resources) Resources {
	if r.Memory == 0 {
		r.Memory = d.Memory
	}
	if r.PIDs == 0 {
		r.PIDs = d.PIDs
	}
	if r.CPUs == 0 {
		r.CPUs = d.CPUs
	}
	return r
}

// Bytes is a size in bytes, written in JSON and flags as a quantity
// ("512Mi", "1Gi", "64M", "1048576") and read back from either a string
// or a number.
type Bytes int64

// ParseBytes reads a quantity: a number of bytes with an optional unit,
// binary (Ki, Mi, Gi, KiB, …) or decimal (k, M, G, …).
func ParseBytes(s string) (Bytes, error) {
	n, err := humanize.ParseBytes(s)
	if err != nil || n > 1<<62 {
		return 0, fmt.Errorf("%q is not a size such as 512Mi or 1Gi", s)
	}
	return Bytes(n), nil
}

// String writes b with the largest binary unit that divides it.
func (b Bytes) String() string {
	for _, u := range []struct {
		suffix string
		size   Bytes
	}{{"Gi", 1 << 30}, {"Mi", 1 << 20}, {"Ki", 1 << 10}} {
		if b != 0 && b%u.size == 0 {
			return strconv.FormatInt(int64(b/u.size), 10) + u.suffix
		}
	}
	return strconv.FormatInt(int64(b), 10)
}

// MarshalJSON writes b as its quantity string.
func (b Bytes) MarshalJSON() ([]byte, error) { return json.Marshal(b.String()) }

// UnmarshalJSON reads a quantity string or a number of bytes.
func (b *Bytes) UnmarshalJSON(p []byte) error {
	var n int64
	if err := json.Unmarshal(p, &n); err == nil {
		if n < 0 {
			return fmt.Errorf("size %d is negative", n)
		}
		*b = Bytes(n)
		return nil
	}
	var s string
	if err := json.Unmarshal(p, &s); err != nil {
		return fmt.Errorf("a size is a string such as \"512Mi\" or a number of bytes")
	}
	v, err := ParseBytes(s)
	if err != nil {
		return err
	}
	*b = v
	return nil
}

// Set makes Bytes a flag.Value.
func (b *Bytes) Set(s string) error {
	v, err := ParseBytes(s)
	if err == nil {
		*b = v
	}
	return err
}

// Network is what a sandbox's workload can reach (SPEC §9.3).
type Network string

// The sandbox networks.
const (
	// NetworkNone is a network namespace with only its own loopback.
	NetworkNone Network = "none"
	// NetworkEgress adds a veth to a bridge with NAT out; the host's
	// loopback and own addresses, the gateway's ports and the other
	// containers are blocked.
	NetworkEgress Network = "egress"
)

// Usage is what a running workload uses now, read from its cgroups
// (SPEC §9.2 status.usage).
type Usage struct {
	MemoryBytes uint64  `json:"memoryBytes"`
	PIDs        uint64  `json:"pids"`
	CPUSeconds  float64 `json:"cpuSeconds"`
}

// ExitReason says how a workload ended (SPEC §9.2).
type ExitReason string

// The exit reasons.
const (
	// ReasonExited: the process exited by itself with a code.
	ReasonExited ExitReason = "exited"
	// ReasonSignaled: a signal killed it.
	ReasonSignaled ExitReason = "signaled"
	// ReasonOOM: the kernel killed it for going over its memory limit.
	ReasonOOM ExitReason = "oom"
)
