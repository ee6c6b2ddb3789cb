// Package channels holds one adapter per channel, each carrying one client
// connection to its target: stdio to a sandbox workload's process, files
// (over WebSocket or plain HTTP) to the sandbox's root, cdp and page to a
// Chromium over its DevTools pipe, whose discovery endpoints (/json/…) it
// answers too. Each adapter reports how its connection must close.
package channels
