package targets

import (
	"bytes"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
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

func TestLoadConfigMissingFile(t *testing.T) {
	t.Parallel()
	if _, err := LoadConfig(filepath.Join(t.TempDir(), "nope.yaml")); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("err = %v", err)
	}
}
