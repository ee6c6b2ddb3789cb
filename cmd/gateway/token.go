package main

import (
	"fmt"
	"io"
	"time"

	"github.com/nimbus/gateway/authn"
)

// tokenMint is `gateway token mint`: a tenant token signed with the data
// directory's development key, printed alone on stdout so that
// `export NIMBUS_TOKEN=$(gateway token mint …)` works.
func tokenMint(args []string, stdout, stderr io.Writer) error {
	var (
		dataDir, tenant, subject string
		services, sandboxes      listFlag
		admin                    bool
		ttl                      time.Duration
	)
	fs := newFlagSet("token mint")
	fs.SetOutput(stderr)
	fs.StringVar(&dataDir, "data-dir", "./nimbus-data", "data directory holding the development key")
	fs.StringVar(&tenant, "tenant", "", "tenant id (required)")
	fs.StringVar(&subject, "subject", "", "principal (required)")
	fs.Var(&services, "service", "service name to grant (exact); repeatable")
	fs.Var(&sandboxes, "sandbox", "sandbox id to grant reach to (exact); repeatable")
	fs.BoolVar(&admin, "admin", false, "grant the catalog and audit admin API")
	fs.DurationVar(&ttl, "ttl", time.Hour, "token lifetime")
	if err := parseWithEnv(fs, args); err != nil {
		return err
	}
	if tenant == "" || subject == "" {
		return usageError("gateway token mint: --tenant and --subject are required")
	}
	if ttl <= 0 {
		return usageError("gateway token mint: --ttl must be positive")
	}
	key, err := authn.LoadOrCreateDevKey(dataDir)
	if err != nil {
		return err
	}
	tok, err := authn.Mint(key, authn.DevKeyID, authn.MintRequest{
		Tenant: tenant, Subject: subject, Services: services, Sandboxes: sandboxes, Admin: admin, TTL: ttl,
	})
	if err != nil {
		return err
	}
	fmt.Fprintln(stdout, tok)
	return nil
}
