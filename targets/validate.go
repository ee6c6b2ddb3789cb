package targets

import (
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
	return nil
}
