// Package e2e holds end-to-end hostile-input, fault and soak tests against a
// real gateway process: the binary is built once, started on a free port and
// a temp data dir, attacked over real sockets, killed and restarted.
package e2e
