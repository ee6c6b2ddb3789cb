package proxy

import "github.com/prometheus/client_golang/prometheus"

// metrics are the gateway's Prometheus series (SPEC §6).
type metrics struct {
	requests    *prometheus.CounterVec
	opened      *prometheus.CounterVec
	openDenied  *prometheus.CounterVec
	closed      prometheus.Counter
	openLatency prometheus.Histogram
	expiryLag   prometheus.Histogram

	conns               *prometheus.GaugeVec
	bytes               *prometheus.CounterVec
	disconnects         *prometheus.CounterVec
	expiryDisconnectLag prometheus.Histogram
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "nimbus_http_requests_total", Help: "HTTP requests by method and status.",
		}, []string{"method", "status"}),
		opened: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "nimbus_sessions_opened_total", Help: "Sessions opened, by target kind.",
		}, []string{"kind"}),
		openDenied: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "nimbus_sessions_open_failed_total", Help: "Opens refused, by error code.",
		}, []string{"code"}),
		closed: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "nimbus_sessions_closed_total", Help: "Sessions closed through the API.",
		}),
		openLatency: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "nimbus_session_open_seconds", Help: "Latency of successful session opens.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 14),
		}),
		expiryLag: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "nimbus_session_expiry_lag_seconds", Help: "Delay between a session's expiresAt and the recording of its expiry.",
			Buckets: prometheus.ExponentialBuckets(0.001, 2, 14),
		}),
	}
	m.conns = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "nimbus_connections", Help: "Live WebSocket connections, by channel.",
	}, []string{"channel"})
	m.bytes = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "nimbus_relayed_bytes_total", Help: "Bytes relayed, by channel and direction (in: to the target, out: to the client).",
	}, []string{"channel", "dir"})
	m.disconnects = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "nimbus_disconnects_total", Help: "Connections ended, by close code.",
	}, []string{"code"})
	m.expiryDisconnectLag = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name: "nimbus_expiry_disconnect_lag_seconds", Help: "Delay between a session's expiresAt and the 4408 close of one of its connections.",
		Buckets: prometheus.ExponentialBuckets(0.0005, 2, 14),
	})
	reg.MustRegister(m.requests, m.opened, m.openDenied, m.closed, m.openLatency, m.expiryLag,
		m.conns, m.bytes, m.disconnects, m.expiryDisconnectLag)
	return m
}
