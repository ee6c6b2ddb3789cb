// Package lease owns sessions: the Session resource, its states and TTL
// policy, the Store contract that persists sessions with their audit events,
// and the Expirer that records expiries as they fall due.
package lease
