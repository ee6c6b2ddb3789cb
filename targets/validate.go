package targets

import (
	"math"
	"net/url"
	"regexp"
	"strings"

	"github.com/nimbus/gateway/problem"
)

// nameRE is the shape of tenant ids, service names and sandbox ids: it is
// safe as a path element (sandbox roots are DataDir/sandboxes/<tenant>/<id>)
// and in URLs, and cannot be "." or "..".
var nameRE = regexp.MustCompile(`^[a-zA-Z0-9][a-zA-Z0-9._-]{0,62}$`)

// invalid returns an InvalidArgument error naming field.
func invalid(field, format string, args ...any) *problem.Error {
	return problem.New(problem.InvalidArgument, field+": "+format, args...).With("field", field)
}

func checkName(field, v string) error {
	if !nameRE.MatchString(v) {
		return invalid(field, "%q must match %s", v, nameRE)
	}
	return nil
}

// validateService checks a service definition; prefix is prepended to the
// field names ("" for the admin API, "tenants[0].services[1]." for config).
func validateService(prefix string, s Service) error {
	if err := checkName(prefix+"tenant", s.TenantID); err != nil {
		return err
	}
	if err := checkName(prefix+"name", s.Name); err != nil {
		return err
	}
	if !s.Kind.Valid() {
		return invalid(prefix+"kind", "%q is not one of sandbox, browser, builtin, external", s.Kind)
	}
	switch s.Kind {
	case KindSandbox:
		if s.Sandbox == "" {
			return invalid(prefix+"sandbox", "a sandbox service must name its sandbox")
		}
		if err := checkName(prefix+"sandbox", s.Sandbox); err != nil {
			return err
		}
		if s.URL != "" {
			return invalid(prefix+"url", "a sandbox service takes no url")
		}
	case KindExternal:
		if s.Sandbox != "" {
			return invalid(prefix+"sandbox", "an external service takes no sandbox")
		}
		u, err := url.Parse(s.URL)
		if s.URL == "" || err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return invalid(prefix+"url", "%q must be an absolute http or https URL", s.URL)
		}
	default: // browser, builtin
		if s.Sandbox != "" {
			return invalid(prefix+"sandbox", "a %s service takes no sandbox", s.Kind)
		}
		if s.URL != "" {
			return invalid(prefix+"url", "a %s service takes no url", s.Kind)
		}
	}
	return nil
}

// validateSpec checks a sandbox spec; prefix as for validateService.
func validateSpec(prefix string, spec SandboxSpec) error {
	if err := checkName(prefix+"id", spec.ID); err != nil {
		return err
	}
	if len(spec.Command) == 0 || spec.Command[0] == "" {
		return invalid(prefix+"command", "a sandbox needs a command")
	}
	for _, a := range spec.Command {
		if strings.IndexByte(a, 0) >= 0 {
			return invalid(prefix+"command", "arguments cannot contain NUL bytes")
		}
	}
	for _, e := range spec.Env {
		k, _, ok := strings.Cut(e, "=")
		if !ok || k == "" || strings.IndexByte(e, 0) >= 0 {
			return invalid(prefix+"env", "%q must be KEY=VALUE", e)
		}
	}
	if err := validateResources(prefix+"resources.", spec.Resources); err != nil {
		return err
	}
	switch spec.Network {
	case "", NetworkNone, NetworkEgress:
	default:
		return invalid(prefix+"network", "%q is not one of none, egress", spec.Network)
	}
	return nil
}

// The bounds of a sandbox's limits (SPEC §9.2). Zero is always allowed: it
// takes the gateway's default.
const (
	// minMemory is the least memory limit: below a few MiB the container's
	// init cannot even start (Docker refuses limits under 6MB for this
	// reason), and a workload OOM-killed before it runs reads as a bug in
	// the workload rather than in its limit.
	minMemory Bytes = 4 << 20
	// maxPIDs is the most processes and threads a limit may allow: the
	// limit is there to stop a fork bomb, and past a million tasks it no
	// longer would.
	maxPIDs = 1 << 20
	// maxCPUs is the most CPUs a limit may allow, above any host's count:
	// a bigger number is a typo, not a limit.
	maxCPUs = 1024
)

// validateResources checks a sandbox's limits; prefix ends in
// "resources.".
func validateResources(prefix string, r Resources) error {
	if r.Memory != 0 && r.Memory < minMemory {
		return invalid(prefix+"memory", "%s must be at least %s", r.Memory, minMemory)
	}
	if r.PIDs < 0 || r.PIDs > maxPIDs {
		return invalid(prefix+"pids", "%d must be between 1 and %d", r.PIDs, maxPIDs)
	}
	if r.CPUs != 0 && (math.IsNaN(r.CPUs) || r.CPUs < 0 || r.CPUs > maxCPUs) {
		return invalid(prefix+"cpus", "%v must be more than 0 and at most %d", r.CPUs, maxCPUs)
	}
	return nil
}
