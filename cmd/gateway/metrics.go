package main

import (
	"errors"
	"fmt"
	"net"
	"net/http"

	"go.uber.org/zap"

	"github.com/nimbus/gateway/proxy"
)

// metricsOnAPI is the --metrics-addr that keeps /metrics on the API
// listener (the behaviour before issue 12), for deployments that already
// keep that listener private.
const metricsOnAPI = "main"

// metricsOff reports whether --metrics-addr disables the metrics listener
// (and /metrics with it, unless it is "main").
func metricsOff(addr string) bool { return addr == "" || addr == "off" || addr == metricsOnAPI }

// serveMetrics serves srv's metrics on addr (--metrics-addr), a listener
// of their own: /metrics needs no token and, by default, that listener
// is loopback-only, out of reach of clients and of browser sessions'
// pages. stop closes it and waits for its server to return.
func serveMetrics(addr string, srv *proxy.Server, log *zap.Logger) (stop func(), err error) {
	if metricsOff(addr) {
		return func() {}, nil
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("--metrics-addr: %w", err)
	}
	if tcp, ok := ln.Addr().(*net.TCPAddr); ok && !tcp.IP.IsLoopback() {
		log.Warn("metrics are served beyond loopback: /metrics needs no token, so anyone who reaches this address reads them",
			zap.String("metricsAddr", ln.Addr().String()))
	}
	hs := srv.HTTPServer(srv.MetricsHandler())
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := hs.Serve(srv.Listener(ln)); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("metrics listener failed", zap.Error(err))
		}
	}()
	log.Info("metrics listening", zap.String("metricsAddr", ln.Addr().String()))
	return func() { _ = hs.Close(); <-done }, nil
}
