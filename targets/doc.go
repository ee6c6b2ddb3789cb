// Package targets owns what sessions attach to: the per-tenant catalog of
// services and sandboxes with the Store that keeps it, the channel matrix,
// and what runs behind a target: sandbox workloads, child processes whose
// output is fanned out to every subscriber, and the browser pool, Chromiums
// each driven over a DevTools pipe (cdp_pipe.go), with no TCP port.
package targets
