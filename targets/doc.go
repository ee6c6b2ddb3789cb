// Package targets owns what sessions attach to: the per-tenant catalog of
// services and sandboxes, the channel matrix, and the providers that run
// what is behind a target (local sandbox workloads; later the browser pool).
package targets
