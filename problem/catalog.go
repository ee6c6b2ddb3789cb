package problem

import "net/http"

// Code is a stable, machine-readable error code. Codes are part of the API:
// clients switch on them, so they are never renamed or reused.
type Code string

// The error catalog. docs/errors.md is rendered from Catalog by Markdown:
// TestErrorsDoc fails when the two drift apart, and `go test ./problem -run
// TestErrorsDoc -update` rewrites the file.
const (
	InvalidArgument     Code = "invalid_argument"
	Unauthenticated     Code = "unauthenticated"
	PermissionDenied    Code = "permission_denied"
	NotFound            Code = "not_found"
	AlreadyExists       Code = "already_exists"
	SandboxNotReady     Code = "sandbox_not_ready"
	ChannelUnsupported  Code = "channel_unsupported"
	TargetChanged       Code = "target_changed"
	SessionNotOpen      Code = "session_not_open"
	ResourceExhausted   Code = "resource_exhausted"
	PayloadTooLarge     Code = "payload_too_large"
	HeaderTooLarge      Code = "header_too_large"
	MethodNotAllowed    Code = "method_not_allowed"
	UpgradeRequired     Code = "upgrade_required"
	RangeNotSatisfiable Code = "range_not_satisfiable"
	PreconditionFailed  Code = "precondition_failed"
	BadGateway          Code = "bad_gateway"
	Unavailable         Code = "unavailable"
	Internal            Code = "internal"
)

// Entry describes one code of the catalog.
type Entry struct {
	Code   Code
	Status int
	Title  string
	// When says in one sentence when a client sees this code; it is the
	// text of the error reference.
	When string
}

// Catalog lists every code in the order the error reference shows them.
var Catalog = []Entry{
	{InvalidArgument, http.StatusBadRequest, "Invalid argument",
		"The request is malformed: bad JSON, a wrong type, an unknown field, a missing or duplicated value, or a value out of range. `details.field` names the offending field when there is one."},
	{Unauthenticated, http.StatusUnauthorized, "Unauthenticated",
		"The bearer token (or connect token) is missing, malformed, badly signed, expired, not yet valid, or meant for another audience."},
	{PermissionDenied, http.StatusForbidden, "Permission denied",
		"The token is valid but does not allow this: another tenant, no exact grant for the service, no reach to the sandbox, not an admin, a connect token for another session or channel, or a file path that leaves the sandbox root."},
	{NotFound, http.StatusNotFound, "Not found",
		"The session, service, sandbox, route or file does not exist (for this tenant)."},
	{AlreadyExists, http.StatusConflict, "Already exists",
		"A sandbox with this id already exists in the tenant, or (files channel) a directory made without `parents` already exists."},
	{SandboxNotReady, http.StatusConflict, "Sandbox not ready",
		"The target sandbox exists but is not in the `ready` state; `details.state` says which state it is in."},
	{ChannelUnsupported, http.StatusBadRequest, "Channel unsupported",
		"A requested channel is not offered by the target; `details.offered` lists the channels it does offer."},
	{TargetChanged, http.StatusConflict, "Target changed",
		"A dynamic service's definition changed while the session was being opened; nothing was created. Retry the open."},
	{SessionNotOpen, http.StatusConflict, "Session not open",
		"The session is closed or expired, so it cannot be connected to or closed again; `details.state` says which."},
	{ResourceExhausted, http.StatusTooManyRequests, "Resource exhausted",
		"A limit was reached (open sessions per tenant, connections per session, browsers). `Retry-After` says when to try again. (files channel) An upload that would leave less than `--min-free-bytes` free on the sandbox's file system, or that finds it full, answers HTTP 507 Insufficient Storage with this code and no `Retry-After`; `details.freeBytes` and `details.minFreeBytes` say how far it is."},
	{PayloadTooLarge, http.StatusRequestEntityTooLarge, "Payload too large",
		"The request body is over its limit: 1 MiB for JSON bodies; the configured maximum file size (16 GiB by default) for uploads through the files channel."},
	{HeaderTooLarge, http.StatusRequestHeaderFieldsTooLarge, "Request header too large",
		"The request line and header together are over 64 KiB; nothing was read past them and the connection is closed."},
	{RangeNotSatisfiable, http.StatusRequestedRangeNotSatisfiable, "Range not satisfiable",
		"(files over HTTP) The `Range` of a download starts past the end of the file; `Content-Range: bytes */<size>` gives the size."},
	{PreconditionFailed, http.StatusPreconditionFailed, "Precondition failed",
		"(files over HTTP) `If-Match` or `If-Unmodified-Since` does not hold: the file changed since the client last saw it."},
	{MethodNotAllowed, http.StatusMethodNotAllowed, "Method not allowed",
		"The route exists but not with this HTTP method; `Allow` lists the methods it takes."},
	{UpgradeRequired, http.StatusUpgradeRequired, "Upgrade required",
		"A connect URL was fetched without a WebSocket handshake (say, pasted into a browser's address bar), or with a WebSocket version other than 13; `Upgrade` (and `Sec-WebSocket-Version`) say what to send. Nothing was attached."},
	{BadGateway, http.StatusBadGateway, "Bad gateway",
		"The target could not be reached when connecting (its workload or browser is gone)."},
	{Unavailable, http.StatusServiceUnavailable, "Unavailable",
		"The gateway cannot serve this now: provisioning failed, the store is unavailable or read-only, or the gateway is draining."},
	{Internal, http.StatusInternalServerError, "Internal error",
		"A bug or an unexpected failure; the `requestId` finds it in the logs."},
}

var byCode = func() map[Code]Entry {
	m := make(map[Code]Entry, len(Catalog))
	for _, e := range Catalog {
		m[e.Code] = e
	}
	return m
}()

// Lookup returns the catalog entry of c; an unknown code reads as Internal,
// so a typo can never produce a response without a status.
func Lookup(c Code) Entry {
	if e, ok := byCode[c]; ok {
		return e
	}
	return byCode[Internal]
}

// Status is the HTTP status of c.
func (c Code) Status() int { return Lookup(c).Status }
