// Package client is the Go client of the gateway's HTTP API, used by the
// gateway CLI and by the project's end-to-end tests. Failures the server
// reports come back as *Error with the problem+json fields.
package client
