// Package problem is the gateway's error catalog: every stable error code,
// its HTTP status and title, and the Error type that carries a code from
// the package that detects a failure to the one that reports it.
package problem
