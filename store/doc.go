// Package store persists sessions, their audit trail and the catalog: a
// SQLite implementation (one gateway) and a PostgreSQL one (replicas, with
// session ends announced to all of them), both of lease.Store and
// targets.Store, and in storetest the conformance suite both pass.
package store
