package targets

import "errors"

// ErrSlowConsumer is returned by Subscription.Next once the subscriber has
// been dropped because its backlog stayed over SubscribeOptions.MaxBacklog
// for longer than SubscribeOptions.Grace (or passed HardLimit). The stdio
// channel closes the client with 4429.
var ErrSlowConsumer = errors.New("slow consumer")

// ErrClosed is returned by Subscription.Next after Subscription.Close.
var ErrClosed = errors.New("subscription closed")

// errNoTTY is returned by Workload.Resize on a workload run on pipes.
var errNoTTY = errors.New("targets: workload has no terminal to resize")
