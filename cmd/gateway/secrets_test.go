package main

import (
	"bytes"
	"os"
	"strings"
	"testing"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// TestArgvSecrets: a password or key material in argv is found, the same
// value from the environment is not, and neither the warning nor the
// redacted store spec shows the secret.
func TestArgvSecrets(t *testing.T) {
	const pw = "s3cret-pw"
	keys := `{"signing":"k1","keys":{"k1":"c2VjcmV0LWtleS1tYXRlcmlhbC0wMTIzNDU2Nzg5YWJjZGVm"}}`
	cases := []struct {
		name string
		args []string
		env  map[string]string
		want []string // flags warned about
	}{
		{"url password in argv", []string{"--store", "postgres://u:" + pw + "@db/x"}, nil, []string{"--store"}},
		{"url password= in argv", []string{"--store=postgres://u@db/x?password=" + pw}, nil, []string{"--store"}},
		{"dsn password in argv", []string{"-store", "host=db user=u password=" + pw}, nil, []string{"--store"}},
		{"url without password", []string{"--store", "postgres://u@db/x?sslmode=disable"}, nil, nil},
		{"sqlite path", []string{"--store", "/var/lib/nimbus/nimbus.db"}, nil, nil},
		{"url password in env", nil, map[string]string{"NIMBUS_STORE": "postgres://u:" + pw + "@db/x"}, nil},
		{"keys json in argv", []string{"--connect-keys", keys}, nil, []string{"--connect-keys"}},
		{"keys file in argv", []string{"--connect-keys", "/etc/nimbus/connect.json"}, nil, nil},
		{"keys json in env", nil, map[string]string{"NIMBUS_CONNECT_KEYS": keys}, nil},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			for k, v := range tc.env {
				t.Setenv(k, v)
			}
			var c serveConfig
			fs := newFlagSet("serve")
			fs.StringVar(&c.store, "store", "", "")
			fs.StringVar(&c.connectKeys, "connect-keys", "", "")
			fromArgs, err := parseWithEnvArgs(fs, tc.args)
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, s := range argvSecrets(c, fromArgs) {
				got = append(got, s.flag)
			}
			if strings.Join(got, ",") != strings.Join(tc.want, ",") {
				t.Fatalf("warned about %v, want %v", got, tc.want)
			}
			var logs bytes.Buffer
			log := zap.New(zapcore.NewCore(zapcore.NewJSONEncoder(zap.NewProductionEncoderConfig()), zapcore.AddSync(&logs), zap.WarnLevel))
			warnArgvSecrets(log, argvSecrets(c, fromArgs))
			if len(tc.want) > 0 && !strings.Contains(logs.String(), "a secret is on the command line") {
				t.Errorf("no warning logged: %s", logs.String())
			}
			if out := logs.String() + redactStore(c.store); strings.Contains(out, pw) || strings.Contains(out, "c2VjcmV0") {
				t.Errorf("the secret is in the log or the redacted store: %s", out)
			}
		})
	}
}

// TestStoreFile: --store-file's content is the store spec; with --store
// as well it is a usage error.
func TestStoreFile(t *testing.T) {
	dir := t.TempDir()
	f := dir + "/store"
	writeTestFile(t, f, "  "+dir+"/other.db\n")
	if got, err := storeSpec(serveConfig{storeFile: f}); err != nil || got != dir+"/other.db" {
		t.Fatalf("storeSpec = %q, %v", got, err)
	}
	if _, err := storeSpec(serveConfig{storeFile: f, store: "x.db"}); err == nil {
		t.Fatal("--store with --store-file accepted")
	}
	writeTestFile(t, f, "\n")
	if _, err := storeSpec(serveConfig{storeFile: f}); err == nil {
		t.Fatal("an empty --store-file accepted")
	}
}

func writeTestFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
}
