// Package channels holds one adapter per channel: each carries the traffic
// of one upgraded WebSocket to its target (stdio to a workload's process;
// later files, cdp and page) and reports how the connection must close.
package channels
