package main

import (
	"fmt"
	"net/url"
	"os"
	"regexp"
	"strings"

	"go.uber.org/zap"
)

// A flag's value on the command line is readable by every process on the
// host, sandbox workloads included, in /proc/<pid>/cmdline (issue 12: a
// workload read the PostgreSQL password there, then another tenant's
// audit rows). The environment (/proc/<pid>/environ) and a 0600 file are
// readable by the gateway's user and root only. So secrets come from
// NIMBUS_STORE / --store-file and NIMBUS_CONNECT_KEYS / a --connect-keys
// file, and serve warns when argv carries one.

// storeSpec is the store to open: --store-file's content, else --store
// (or NIMBUS_STORE), else SQLite in the data directory.
func storeSpec(c serveConfig) (string, error) {
	if c.storeFile == "" {
		return c.store, nil
	}
	if c.store != "" {
		return "", usageError("give --store or --store-file (or NIMBUS_STORE or NIMBUS_STORE_FILE), not both")
	}
	b, err := os.ReadFile(c.storeFile)
	if err != nil {
		return "", fmt.Errorf("--store-file: %w", err)
	}
	spec := strings.TrimSpace(string(b))
	if spec == "" {
		return "", fmt.Errorf("--store-file %s is empty", c.storeFile)
	}
	return spec, nil
}

// argvSecret is a flag whose value on the command line carries a secret,
// and where the secret should come from instead.
type argvSecret struct{ flag, instead string }

// argvSecrets lists the flags given on the command line (fromArgs, from
// parseWithEnvArgs) whose value carries a secret: a store URL or DSN with
// a password, a connect keyset given as its JSON rather than a file.
func argvSecrets(c serveConfig, fromArgs map[string]bool) []argvSecret {
	var out []argvSecret
	if fromArgs["store"] && storeHasPassword(c.store) {
		out = append(out, argvSecret{"--store", "NIMBUS_STORE, --store-file FILE, or PGPASSWORD/PGPASSFILE"})
	}
	if fromArgs["connect-keys"] && strings.HasPrefix(strings.TrimSpace(c.connectKeys), "{") {
		out = append(out, argvSecret{"--connect-keys", "--connect-keys FILE or NIMBUS_CONNECT_KEYS"})
	}
	return out
}

// warnArgvSecrets logs one warning per secret on the command line; the
// log names the flag, never the value.
func warnArgvSecrets(log *zap.Logger, secrets []argvSecret) {
	for _, s := range secrets {
		log.Warn("a secret is on the command line, where every process on the host can read it (/proc/<pid>/cmdline); pass it in the environment or a file",
			zap.String("flag", s.flag), zap.String("instead", s.instead))
	}
}

// dsnPassword finds the password of a key=value DSN ("host=db
// password='a b'"), quoted or not.
var dsnPassword = regexp.MustCompile(`(?i)(\bpassword\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)`)

// storeHasPassword reports whether spec, a store URL or DSN, carries a
// password: in the URL's user info, its password= parameter, or a DSN's
// password= key.
func storeHasPassword(spec string) bool {
	if u, err := url.Parse(spec); err == nil && u.Scheme != "" {
		_, inUser := u.User.Password()
		return inUser || u.Query().Has("password")
	}
	return dsnPassword.MatchString(spec)
}

// redactStore hides the password of a store URL or DSN for the log.
func redactStore(spec string) string {
	if u, err := url.Parse(spec); err == nil && u.Scheme != "" {
		if q := u.Query(); q.Has("password") {
			q.Set("password", "xxxxx")
			u.RawQuery = q.Encode()
		}
		return u.Redacted()
	}
	return dsnPassword.ReplaceAllString(spec, "${1}xxxxx")
}
