// Package store persists sessions, their audit trail and the catalog: one
// SQLite implementation of lease.Store and targets.Store, and (in storetest)
// the conformance suite every implementation must pass.
package store
