package targets

import (
	"bytes"
	_ "embed" // for demo.yaml
	"errors"
	"fmt"
	"io"
	"os"

	"gopkg.in/yaml.v3"

	"github.com/nimbus/gateway/problem"
)

// Config is the catalog a gateway is seeded with (--config; SPEC §2). It
// only adds: Seed creates what is missing and leaves everything else in the
// store alone, so entries added through the admin API survive a restart.
type Config struct {
	Tenants []TenantConfig `yaml:"tenants"`
}

// TenantConfig is one tenant's part of the catalog.
type TenantConfig struct {
	ID        string          `yaml:"id"`
	Sandboxes []SandboxConfig `yaml:"sandboxes"`
	Services  []ServiceConfig `yaml:"services"`
}

// SandboxConfig declares a sandbox; see SandboxSpec for the fields.
type SandboxConfig struct {
	ID        string          `yaml:"id"`
	Command   []string        `yaml:"command"`
	TTY       bool            `yaml:"tty"`
	Env       []string        `yaml:"env"`
	Resources ResourcesConfig `yaml:"resources"`
	// Network is none (the default) or egress.
	Network Network `yaml:"network"`
}

// ResourcesConfig is a sandbox's Resources as the catalog YAML writes them:
// `resources: {memory: 512Mi, pids: 256, cpus: 1.0}`, every field optional
// (absent: the gateway's default). Memory is kept as written until
// Validate, so a bad quantity is reported with its field's path rather than
// as a YAML decoding error with only a line number.
type ResourcesConfig struct {
	// Memory is a quantity such as 512Mi, 1Gi or a number of bytes.
	Memory string  `yaml:"memory"`
	PIDs   int64   `yaml:"pids"`
	CPUs   float64 `yaml:"cpus"`
}

// ServiceConfig declares a service; see Service for the fields.
type ServiceConfig struct {
	Name    string `yaml:"name"`
	Kind    Kind   `yaml:"kind"`
	Sandbox string `yaml:"sandbox"`
	URL     string `yaml:"url"`
	Dynamic bool   `yaml:"dynamic"`
}

//go:embed demo.yaml
var demoYAML []byte

// LoadConfig reads and validates the catalog YAML at path. Decoding is
// strict: an unknown or misspelled key is an error rather than a silently
// ignored setting. Errors name the file and the offending field, e.g.
// "tenants[0].services[3].url".
func LoadConfig(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("load catalog config: %w", err)
	}
	cfg, err := ParseConfig(data)
	if err != nil {
		return nil, fmt.Errorf("load catalog config %s: %w", path, err)
	}
	return cfg, nil
}

// ParseConfig decodes and validates catalog YAML, as LoadConfig does.
func ParseConfig(data []byte) (*Config, error) {
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	var cfg Config
	if err := dec.Decode(&cfg); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, problem.New(problem.InvalidArgument, "empty catalog config").With("field", "tenants")
		}
		return nil, problem.Wrap(problem.InvalidArgument, err, "malformed catalog config")
	}
	// A second document would be ignored silently; refuse it instead.
	var extra any
	if err := dec.Decode(&extra); !errors.Is(err, io.EOF) {
		return nil, problem.New(problem.InvalidArgument, "catalog config must be a single YAML document")
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	return &cfg, nil
}

// DefaultConfig returns the embedded demo catalog (testdata/catalog.yaml):
// tenant "demo" with a shell sandbox "sbx-worker", its "worker" service, and
// the "browser", "pg" and "billing" services. Each call returns a fresh copy.
func DefaultConfig() *Config {
	cfg, err := ParseConfig(demoYAML)
	if err != nil {
		panic("targets: embedded demo.yaml is invalid: " + err.Error()) // a test guards this
	}
	return cfg
}

// Validate checks every entry with the admin API's rules and rejects
// duplicate tenant ids, sandbox ids and service names. The error is an
// InvalidArgument *problem.Error whose details.field is the path of the
// offending field.
func (c *Config) Validate() error {
	tenants := make(map[string]bool, len(c.Tenants))
	for i, t := range c.Tenants {
		at := fmt.Sprintf("tenants[%d]", i)
		if err := checkName(at+".id", t.ID); err != nil {
			return err
		}
		if tenants[t.ID] {
			return invalid(at+".id", "duplicate tenant %q", t.ID)
		}
		tenants[t.ID] = true

		ids := make(map[string]bool, len(t.Sandboxes))
		for j, sc := range t.Sandboxes {
			at := fmt.Sprintf("tenants[%d].sandboxes[%d]", i, j)
			if _, err := sc.Resources.memory(); err != nil {
				return invalid(at+".resources.memory", "%v", err)
			}
			if err := validateSpec(at+".", sc.spec()); err != nil {
				return err
			}
			if ids[sc.ID] {
				return invalid(at+".id", "duplicate sandbox %q", sc.ID)
			}
			ids[sc.ID] = true
		}

		names := make(map[string]bool, len(t.Services))
		for j, sc := range t.Services {
			at := fmt.Sprintf("tenants[%d].services[%d]", i, j)
			if err := validateService(at+".", sc.service(t.ID)); err != nil {
				return err
			}
			if names[sc.Name] {
				return invalid(at+".name", "duplicate service %q", sc.Name)
			}
			names[sc.Name] = true
		}
	}
	return nil
}

func (sc SandboxConfig) spec() SandboxSpec {
	mem, err := sc.Resources.memory()
	if err != nil {
		// Not through Validate: a negative limit fails validateSpec, so
		// the sandbox is refused rather than run with the default.
		mem = -1
	}
	return SandboxSpec{ID: sc.ID, Command: sc.Command, TTY: sc.TTY, Env: sc.Env,
		Resources: Resources{Memory: mem, PIDs: sc.Resources.PIDs, CPUs: sc.Resources.CPUs},
		Network:   sc.Network}
}

// memory parses Memory; "" is 0, the default.
func (rc ResourcesConfig) memory() (Bytes, error) {
	if rc.Memory == "" {
		return 0, nil
	}
	return ParseBytes(rc.Memory)
}

func (sc ServiceConfig) service(tenantID string) Service {
	return Service{TenantID: tenantID, Name: sc.Name, Kind: sc.Kind, Sandbox: sc.Sandbox, URL: sc.URL, Dynamic: sc.Dynamic}
}
