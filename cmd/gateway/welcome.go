package main

import (
	"crypto/ed25519"
	"fmt"
	"io"
	"net"
	"time"

	"github.com/nimbus/gateway/authn"
	"github.com/nimbus/gateway/targets"
)

// printWelcome prints, on a gateway running with the development key, a
// token for the first tenant of the catalog and a curl line that opens a
// session with it: the newcomer's first minute (SPEC §6).
func printWelcome(w io.Writer, addr net.Addr, key ed25519.PrivateKey, cfg *targets.Config) {
	if len(cfg.Tenants) == 0 {
		return
	}
	t := cfg.Tenants[0]
	req := authn.MintRequest{Tenant: t.ID, Subject: "dev", Admin: true, TTL: 24 * time.Hour}
	for _, s := range t.Services {
		req.Services = append(req.Services, s.Name)
	}
	for _, sb := range t.Sandboxes {
		req.Sandboxes = append(req.Sandboxes, sb.ID)
	}
	tok, err := authn.Mint(key, authn.DevKeyID, req)
	if err != nil {
		fmt.Fprintln(w, "could not mint a development token:", err)
		return
	}
	port := "8080"
	if ta, ok := addr.(*net.TCPAddr); ok {
		port = fmt.Sprint(ta.Port)
	}
	target := `{"service":{"name":"worker"}}`
	if len(t.Services) > 0 && t.Services[0].Kind == targets.KindSandbox {
		target = fmt.Sprintf(`{"service":{"name":%q}}`, t.Services[0].Name)
	}
	fmt.Fprintf(w, `Nimbus gateway on http://localhost:%[1]s (development key: do not expose this gateway)

A development token for tenant %[2]q (admin, all grants, valid 24h):

export NIMBUS_TOKEN=%[3]s

Open a session:

curl -s -X POST http://localhost:%[1]s/v1/tenants/%[2]s/sessions \
  -H "Authorization: Bearer $NIMBUS_TOKEN" -H 'Content-Type: application/json' \
  -d '{"target":%[4]s,"channels":["stdio"],"requestedTtlMs":600000}'

`, port, t.ID, tok, target)
}
