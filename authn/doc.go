// Package authn owns the gateway's tokens: it verifies tenant bearer tokens
// (SPEC §4.2) into a Principal, and signs and verifies the connect tokens of
// connect URLs (SPEC §5), together with the key files both of them need.
package authn
