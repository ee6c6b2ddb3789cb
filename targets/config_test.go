package targets

import (
	"bytes"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/nimbus/gateway/problem"
)

func TestLoadConfigDemo(t *testing.T) {
	t.Parallel()
	cfg, err := LoadConfig("../testdata/catalog.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if len(cfg.Tenants) != 1 || cfg.Tenants[0].ID != "demo" {
		t.Fatalf("tenants = %+v", cfg.Tenants)
	}
	tc := cfg.Tenants[0]
	want := SandboxConfig{ID: "sbx-worker", Command: []string{"/bin/sh"}, TTY: true}
	if len(tc.Sandboxes) != 1 || tc.Sandboxes[0].ID != want.ID || !tc.Sandboxes[0].TTY ||
		strings.Join(tc.Sandboxes[0].Command, " ") != "/bin/sh" {
		t.Fatalf("sandboxes = %+v", tc.Sandboxes)
	}
	wantSvcs := []ServiceConfig{
		{Name: "worker", Kind: KindSandbox, Sandbox: "sbx-worker"},
		{Name: "browser", Kind: KindBrowser},
		{Name: "pg", Kind: KindBuiltin},
		{Name: "billing", Kind: KindExternal, URL: "https://billing.internal"},
	}
	if len(tc.Services) != len(wantSvcs) {
		t.Fatalf("services = %+v", tc.Services)
	}
	for i, s := range wantSvcs {
		if tc.Services[i] != s {
			t.Errorf("services[%d] = %+v, want %+v", i, tc.Services[i], s)
		}
	}
}

func TestDemoYAMLIsTestdataCatalog(t *testing.T) {
	t.Parallel()
	td, err := os.ReadFile("../testdata/catalog.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(td, demoYAML) {
		t.Fatal("targets/demo.yaml differs from testdata/catalog.yaml; copy one over the other")
	}
	if cfg := DefaultConfig(); cfg.Tenants[0].ID != "demo" {
		t.Fatalf("DefaultConfig = %+v", cfg)
	}
	// Each call is a fresh copy.
	DefaultConfig().Tenants[0].ID = "changed"
	if DefaultConfig().Tenants[0].ID != "demo" {
		t.Fatal("DefaultConfig shares state between calls")
	}
}

func TestConfigErrors(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name, yaml, field, text string
	}{
		{"unknown field", "tenants:\n  - id: demo\n    sandboxes:\n      - id: a\n        command: [sh]\n        ttty: true\n", "", "ttty"},
		{"unknown top-level", "tenant: []\n", "", "tenant"},
		{"empty", "", "tenants", "empty"},
		{"two documents", "tenants: []\n---\ntenants: []\n", "", "single"},
		{"bad tenant id", "tenants:\n  - id: 'a b'\n", "tenants[0].id", ""},
		{"duplicate tenant", "tenants:\n  - id: a\n  - id: a\n", "tenants[1].id", "duplicate"},
		{"no command", "tenants:\n  - id: a\n    sandboxes:\n      - id: s\n", "tenants[0].sandboxes[0].command", ""},
		{"bad env", "tenants:\n  - id: a\n    sandboxes:\n      - {id: s, command: [sh], env: [NOEQUALS]}\n", "tenants[0].sandboxes[0].env", ""},
		{"duplicate sandbox", "tenants:\n  - id: a\n    sandboxes:\n      - {id: s, command: [sh]}\n      - {id: s, command: [sh]}\n", "tenants[0].sandboxes[1].id", "duplicate"},
		{"bad kind", "tenants:\n  - id: a\n    services:\n      - {name: x, kind: vm}\n", "tenants[0].services[0].kind", ""},
		{"sandbox kind without sandbox", "tenants:\n  - id: a\n    services:\n      - {name: x, kind: sandbox}\n", "tenants[0].services[0].sandbox", ""},
		{"external without url", "tenants:\n  - id: a\n    services:\n      - {name: x, kind: external}\n", "tenants[0].services[0].url", ""},
		{"external relative url", "tenants:\n  - id: a\n    services:\n      - {name: x, kind: external, url: /x}\n", "tenants[0].services[0].url", ""},
		{"builtin with url", "tenants:\n  - id: a\n    services:\n      - {name: x, kind: builtin, url: 'http://x'}\n", "tenants[0].services[0].url", ""},
		{"bad memory", "tenants:\n  - id: a\n    sandboxes:\n      - {id: s, command: [sh], resources: {memory: lots}}\n", "tenants[0].sandboxes[0].resources.memory", "512Mi"},
		{"small memory", "tenants:\n  - id: a\n    sandboxes:\n      - {id: s, command: [sh], resources: {memory: 1Mi}}\n", "tenants[0].sandboxes[0].resources.memory", "4Mi"},
		{"negative pids", "tenants:\n  - id: a\n    sandboxes:\n      - {id: s, command: [sh], resources: {pids: -1}}\n", "tenants[0].sandboxes[0].resources.pids", ""},
		{"too many pids", "tenants:\n  - id: a\n    sandboxes:\n      - {id: s, command: [sh], resources: {pids: 1048577}}\n", "tenants[0].sandboxes[0].resources.pids", ""},
		{"negative cpus", "tenants:\n  - id: a\n    sandboxes:\n      - {id: s, command: [sh], resources: {cpus: -0.5}}\n", "tenants[0].sandboxes[0].resources.cpus", ""},
		{"nan cpus", "tenants:\n  - id: a\n    sandboxes:\n      - {id: s, command: [sh], resources: {cpus: .nan}}\n", "tenants[0].sandboxes[0].resources.cpus", ""},
		{"too many cpus", "tenants:\n  - id: a\n    sandboxes:\n      - {id: s, command: [sh], resources: {cpus: 1025}}\n", "tenants[0].sandboxes[0].resources.cpus", ""},
		{"unknown resource", "tenants:\n  - id: a\n    sandboxes:\n      - {id: s, command: [sh], resources: {disk: 1Gi}}\n", "", "disk"},
		{"bad network", "tenants:\n  - id: a\n    sandboxes:\n      - {id: s, command: [sh], network: host}\n", "tenants[0].sandboxes[0].network", "host"},
		{"duplicate service", "tenants:\n  - id: a\n    services:\n      - {name: x, kind: builtin}\n      - {name: x, kind: browser}\n", "tenants[0].services[1].name", "duplicate"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			path := filepath.Join(t.TempDir(), "c.yaml")
			if err := os.WriteFile(path, []byte(tt.yaml), 0o600); err != nil {
				t.Fatal(err)
			}
			_, err := LoadConfig(path)
			if err == nil {
				t.Fatal("no error")
			}
			if problem.CodeOf(err) != problem.InvalidArgument {
				t.Errorf("code = %q (%v)", problem.CodeOf(err), err)
			}
			if tt.field != "" {
				if f := problem.From(err).Details["field"]; f != tt.field {
					t.Errorf("field = %v, want %q (%v)", f, tt.field, err)
				}
			}
			if !strings.Contains(err.Error(), tt.text) || !strings.Contains(err.Error(), path) {
				t.Errorf("error %q should contain %q and the path", err, tt.text)
			}
		})
	}
}

// TestConfigResources: a sandbox's resources and network (SPEC §9.2, §9.3)
// in the catalog YAML reach its SandboxSpec; absent ones are the defaults.
func TestConfigResources(t *testing.T) {
	t.Parallel()
	cfg, err := ParseConfig([]byte(`tenants:
  - id: a
    sandboxes:
      - id: limited
        command: [sh]
        resources: {memory: 512Mi, pids: 256, cpus: 1.0}
        network: egress
      - id: bytes
        command: [sh]
        resources: {memory: 8388608, cpus: 0.5}
        network: none
      - id: plain
        command: [sh]
`))
	if err != nil {
		t.Fatal(err)
	}
	for i, want := range []SandboxSpec{
		{ID: "limited", Command: []string{"sh"}, Resources: Resources{Memory: 512 << 20, PIDs: 256, CPUs: 1}, Network: NetworkEgress},
		{ID: "bytes", Command: []string{"sh"}, Resources: Resources{Memory: 8 << 20, CPUs: 0.5}, Network: NetworkNone},
		{ID: "plain", Command: []string{"sh"}},
	} {
		if got := cfg.Tenants[0].Sandboxes[i].spec(); !reflect.DeepEqual(got, want) {
			t.Errorf("sandboxes[%d].spec() = %+v, want %+v", i, got, want)
		}
	}
	// A config built in code and never validated cannot run a sandbox
	// whose memory it could not read with the default limit instead.
	bad := SandboxConfig{ID: "s", Command: []string{"sh"}, Resources: ResourcesConfig{Memory: "lots"}}
	if err := validateSpec("", bad.spec()); problem.CodeOf(err) != problem.InvalidArgument {
		t.Errorf("validateSpec of an unreadable memory = %v, want invalid_argument", err)
	}
}

func TestLoadConfigMissingFile(t *testing.T) {
	t.Parallel()
	if _, err := LoadConfig(filepath.Join(t.TempDir(), "nope.yaml")); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("err = %v", err)
	}
}
