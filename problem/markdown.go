package problem

import (
	"fmt"
	"strings"
)

// Markdown renders the error reference (docs/errors.md) from Catalog, so
// the documentation cannot name a code the gateway does not send.
func Markdown() string {
	var b strings.Builder
	b.WriteString(`# Error reference

<!-- Generated from problem/catalog.go by: go test ./problem -run TestErrorsDoc -update. Do not edit. -->

Every non-2xx answer of the gateway is an RFC 9457 ` + "`application/problem+json`" + ` document:

` + "```json" + `
{"type": "urn:nimbus:error:sandbox_not_ready", "title": "Sandbox not ready",
 "status": 409, "code": "sandbox_not_ready", "detail": "sandbox sbx-1 is pending",
 "requestId": "req_…", "details": {"sandbox": "sbx-1", "state": "pending"}}
` + "```" + `

- ` + "`code`" + ` is stable: switch on it, never on ` + "`detail`" + `, which is for people.
- ` + "`type`" + ` is ` + "`urn:nimbus:error:<code>`" + `.
- ` + "`requestId`" + ` equals the ` + "`X-Request-Id`" + ` header that every response carries; the gateway log has the same id.
- ` + "`details`" + ` is present when there is machine-readable context.
- ` + "`Retry-After`" + ` (seconds) accompanies ` + "`resource_exhausted`" + `.

After a WebSocket upgrade, failures are close codes instead; see docs/channels.

| code | HTTP status | title | when |
|---|---|---|---|
`)
	for _, e := range Catalog {
		fmt.Fprintf(&b, "| `%s` | %d | %s | %s |\n", e.Code, e.Status, e.Title, e.When)
	}
	return b.String()
}
