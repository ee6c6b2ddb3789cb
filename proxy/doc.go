// Package proxy is the gateway's HTTP face: the sessions, catalog and audit
// API, problem+json errors, request ids, health and metrics, and (with the
// channels package) the WebSocket connect endpoint and its live connections.
package proxy
