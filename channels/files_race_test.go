//go:build race

package channels_test

// raceEnabled: the race detector slows the WebSocket path about fifteen
// times, so the big round trip shrinks under it.
const raceEnabled = true
