package main

import (
	"context"
	"crypto/ed25519"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/nimbus/gateway/authn"
	"github.com/nimbus/gateway/lease"
	"github.com/nimbus/gateway/proxy"
	"github.com/nimbus/gateway/store"
	"github.com/nimbus/gateway/targets"
)

// serveConfig is everything `gateway serve` reads from flags and env.
type serveConfig struct {
	addr, dataDir, config, store, publicURL, chromium, logLevel string
	sandboxUser                                                 string
	sandboxNProc                                                int
	tenantKeys                                                  listFlag
	connectKeys                                                 string
	ttlDefault, ttlMax                                          time.Duration
	maxSessions                                                 int
	maxConns                                                    int
	browserWarm, browserMax                                     int
	browserUser                                                 string
	browserMaxPerTenant                                         int
	pingInterval, pingTimeout                                   time.Duration
	drainTimeout                                                time.Duration
	metricsAddr                                                 string
	metricsTenantLabels                                         bool
	storeFile                                                   string
	sandboxRootDir                                              string
	sandboxRuntime                                              string
	sandboxMemory                                               targets.Bytes
	sandboxPids                                                 int
	sandboxCPUs                                                 float64
	minFreeBytes                                                byteSize
	// argvSecrets are the secrets given on the command line, warned
	// about at start (secrets.go).
	argvSecrets []argvSecret

	// listener, when set (by tests), is served instead of listening on
	// addr.
	listener net.Listener
}

func serve(args []string, stdout, stderr io.Writer) error {
	var c serveConfig
	fs := newFlagSet("serve")
	fs.StringVar(&c.addr, "addr", ":8080", "listen address")
	fs.StringVar(&c.dataDir, "data-dir", "./nimbus-data", "directory for the SQLite store, keys and sandbox roots")
	fs.StringVar(&c.config, "config", "", "catalog YAML to seed (default: the embedded demo catalog, same as testdata/catalog.yaml)")
	fs.StringVar(&c.store, "store", "", "store: a SQLite file path (default <data-dir>/nimbus.db), or a postgres:// URL; a password in it belongs in NIMBUS_STORE or --store-file, not on the command line, where every process can read it")
	fs.StringVar(&c.storeFile, "store-file", "", "file holding the --store value (e.g. a postgres:// URL with its password), read at start; keep it 0600")
	fs.StringVar(&c.publicURL, "public-url", "", "base URL of minted connect URLs (default: from each request's Host)")
	fs.StringVar(&c.sandboxUser, "sandbox-user", "", `user ids of sandbox workloads (needs the gateway to run as root): a block first-last, one id per sandbox (200000-299999), or one user[:group] for all; default: the gateway's own user, which lets workloads read the data directory's keys`)
	fs.StringVar(&c.sandboxRuntime, "sandbox-runtime", runtimeAuto, `what runs sandbox workloads: "runc" (an OCI container each: own namespaces, read-only /usr, own uid, seccomp, cgroup limits), "process" (child processes of the gateway, no isolation boundary), or "auto": runc when the gateway runs as root and runc works, else process`)
	c.sandboxMemory = 512 << 20
	fs.Var(&c.sandboxMemory, "sandbox-memory", "memory limit of a runc sandbox unless its resources say otherwise (512Mi, 1Gi, …); over it the kernel OOM-kills the workload")
	fs.IntVar(&c.sandboxPids, "sandbox-pids", 256, "processes and threads a runc sandbox may have unless its resources say otherwise")
	fs.Float64Var(&c.sandboxCPUs, "sandbox-cpus", 1, "CPUs a runc sandbox may use unless its resources say otherwise (a CFS quota; 0.5 is half a core)")
	fs.IntVar(&c.sandboxNProc, "sandbox-nproc", 256, "RLIMIT_NPROC of sandbox workloads: processes and threads a sandbox's user may have, beyond which its forks fail with EAGAIN (0: no limit); per sandbox with a --sandbox-user block, shared by all with one user, not applied without --sandbox-user")
	fs.StringVar(&c.chromium, "chromium", "", "Chromium binary for the browser service (default: found on PATH)")
	fs.Var(&c.tenantKeys, "tenant-key", "tenant-token verification key file (HS256 secret, Ed25519 or RSA public key PEM); repeatable; default: the development key in the data dir")
	fs.StringVar(&c.connectKeys, "connect-keys", "", `connect-URL keyset: a JSON file, or the JSON itself ({"signing":"k2","keys":{"k1":"<base64>","k2":"<base64>"}}) in NIMBUS_CONNECT_KEYS (on the command line every process could read it); default: <data-dir>/keys/connect.json, created if absent`)
	fs.DurationVar(&c.ttlDefault, "ttl-default", 15*time.Minute, "session TTL when the request names none")
	fs.DurationVar(&c.ttlMax, "ttl-max", time.Hour, "cap on every session TTL")
	fs.IntVar(&c.maxSessions, "max-sessions-per-tenant", 1000, "open sessions a tenant may hold")
	fs.IntVar(&c.browserWarm, "browser-warm", 2, "Chromium processes kept started for the next browser sessions (negative: none)")
	fs.IntVar(&c.browserMax, "browser-max", 8, "Chromium processes at most, warm ones included; opens beyond answer 429")
	fs.IntVar(&c.browserMaxPerTenant, "browser-max-per-tenant", 0, "browsers one tenant may hold at once; opens beyond answer 429 (default: half of --browser-max, at least 1)")
	fs.StringVar(&c.browserUser, "browser-user", "auto", `user ids of the browsers, one per Chromium: a block first-last, "auto" (`+defaultBrowserUsers+` when the gateway runs as root, else none) or "off" (browsers run as the gateway's user and can read what it can)`)
	fs.IntVar(&c.maxConns, "max-conns-per-session", 32, "live connections a session may hold")
	fs.DurationVar(&c.pingInterval, "ping-interval", 30*time.Second, "WebSocket ping interval (negative disables)")
	fs.DurationVar(&c.pingTimeout, "ping-timeout", 15*time.Second, "how long a pong may take before the client is dropped")
	fs.DurationVar(&c.drainTimeout, "drain-timeout", 10*time.Second, "how long SIGTERM waits for requests to finish")
	fs.StringVar(&c.logLevel, "log-level", "info", "debug, info, warn or error")
	fs.StringVar(&c.sandboxRootDir, "sandbox-root-dir", "", "directory of the sandbox roots, <dir>/<tenant>/<id>, best on a file system of its own so that a full sandbox cannot fill the store's (default <data-dir>/sandboxes; existing sandboxes keep theirs)")
	c.minFreeBytes = 64 << 20
	fs.Var(&c.minFreeBytes, "min-free-bytes", "free space uploads through the files channel leave on the file system they write to; beyond, 507 resource_exhausted (bytes, or with KiB, MiB, GiB; 0: no reserve)")
	fs.StringVar(&c.metricsAddr, "metrics-addr", "127.0.0.1:9090", `address of the Prometheus /metrics listener, which needs no token: keep it private; "off" disables metrics, "main" serves /metrics on --addr`)
	fs.BoolVar(&c.metricsTenantLabels, "metrics-tenant-labels", false, "label per-tenant series with the tenant id (default: totals only, so a scrape does not list the tenants)")
	fromArgs, err := parseWithEnvArgs(fs, args)
	if err != nil {
		return err
	}
	c.argvSecrets = argvSecrets(c, fromArgs)
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	return runServer(ctx, c, stdout, stderr)
}

// runServer wires the gateway and serves until ctx ends, then drains.
func runServer(ctx context.Context, c serveConfig, stdout, stderr io.Writer) error {
	log, err := newLogger(c.logLevel, stderr)
	if err != nil {
		return err
	}
	defer func() { _ = log.Sync() }()
	warnArgvSecrets(log, c.argvSecrets)
	if err := os.MkdirAll(c.dataDir, 0o750); err != nil {
		return fmt.Errorf("data dir: %w", err)
	}

	dbPath, err := storeSpec(c)
	if err != nil {
		return err
	}
	if dbPath == "" {
		dbPath = filepath.Join(c.dataDir, "nimbus.db")
	}
	db, err := openStore(ctx, dbPath)
	if err != nil {
		return fmt.Errorf("store: %w", err)
	}
	defer db.Close()

	verifier, devKey, err := tenantVerifier(c)
	if err != nil {
		return err
	}
	ck, err := connectKeys(c)
	if err != nil {
		return err
	}

	cfg, err := catalogConfig(c.config)
	if err != nil {
		return err
	}
	runAs, uids, err := parseSandboxUsers(c.sandboxUser)
	if err != nil {
		return err
	}
	runc, uids, err := sandboxRuntime(c, runAs, uids, log)
	if err != nil {
		return err
	}
	if runc != nil {
		defer runc.Close() // after the catalog's Close, deferred below
	}
	runtimeDesc := describeRuntime(runc, log)
	browserUIDs, err := parseBrowserUsers(c.browserUser)
	if err == nil {
		err = checkBlocksApart(browserUIDs, uids)
	}
	if err != nil {
		return err
	}
	profileDir, err := browserProfileDir(c.dataDir, browserUIDs)
	if err != nil {
		return fmt.Errorf("--browser-user: %w", err)
	}
	switch {
	case uids != nil:
		// A container sees its root bind-mounted: the data directory stays
		// closed to the sandbox users. A child process walks to it.
		if runc == nil {
			if err := openSandboxesTo(c, targets.Credential{UID: uids.First, GID: uids.First}); err != nil {
				return fmt.Errorf("--sandbox-user: %w", err)
			}
		}
		unlock, err := lockDataDir(c.dataDir)
		if err != nil {
			return fmt.Errorf("--sandbox-user: %w", err)
		}
		defer unlock()
	case runAs != nil:
		if err := openSandboxesTo(c, *runAs); err != nil {
			return fmt.Errorf("--sandbox-user: %w", err)
		}
		log.Warn("every sandbox workload runs as the same user: each can reach the others' roots; give a block of ids (--sandbox-user 200000-299999) to separate them")
	case os.Geteuid() == 0:
		log.Warn("sandbox workloads run as root, the gateway's user: they can read its keys and database; set --sandbox-user")
	}
	catalog := targets.NewCatalog(db, targets.Options{DataDir: c.dataDir, Logger: log, RunAs: runAs, UIDs: uids, NProc: c.sandboxNProc,
		SandboxDir: c.sandboxRootDir, Runc: runc})
	if err := catalog.Seed(ctx, cfg); err != nil {
		return fmt.Errorf("seeding the catalog: %w", err)
	}
	if err := catalog.Start(ctx); err != nil {
		return fmt.Errorf("starting sandboxes: %w", err)
	}
	defer catalog.Close()

	browsers := browserPool(ctx, c, browserUIDs, profileDir, log)
	if browsers != nil {
		// Deferred after the catalog's, so it runs before it; both run after
		// the server's Shutdown, so clients get 1001 before browsers die.
		defer browsers.Close()
	}

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	sessions := newSessions(c, db, catalog, browsers, log)
	srv := proxy.New(proxy.Options{
		Sessions: db, Lease: sessions, Catalog: catalog, Tenants: verifier, ConnectKeys: ck, Ping: db.Ping,
		Writable: db.CheckWritable, MinFreeBytes: int64(c.minFreeBytes),
		MaxConnsPerSession: c.maxConns, PingInterval: c.pingInterval, PingTimeout: c.pingTimeout,
		PublicURL: c.publicURL, Logger: log, Registry: reg, Browsers: browsers,
		MetricsOnAPI: c.metricsAddr == metricsOnAPI, MetricsTenantLabels: c.metricsTenantLabels,
		Runtime: map[string]string{"sandboxes": runtimeDesc, "browsers": describeBrowsers(browsers, browserUIDs)},
	})

	ln := c.listener
	if ln == nil {
		if ln, err = net.Listen("tcp", c.addr); err != nil {
			return err
		}
	}
	hs := srv.HTTPServer(srv) // bounded headers and header time (proxy)
	stopMetrics, err := serveMetrics(c.metricsAddr, srv, log)
	if err != nil {
		_ = ln.Close()
		return err
	}
	defer stopMetrics()
	bgCtx, cancelBg := context.WithCancel(context.Background())
	defer cancelBg()
	if n, ok := db.(lease.Notifier); ok {
		// Closes and expiries committed by other replicas cut this
		// replica's connections of those sessions.
		if err := srv.WatchEnds(bgCtx, n); err != nil {
			return fmt.Errorf("watching session ends: %w", err)
		}
	}
	expCtx, cancelExp := context.WithCancel(context.Background())
	expDone := make(chan struct{})
	go func() { defer close(expDone); sessions.RunExpiry(expCtx) }()
	defer func() { cancelExp(); <-expDone }()

	if devKey != nil {
		printWelcome(stdout, ln.Addr(), devKey, cfg)
	}
	serveErr := make(chan error, 1)
	go func() { serveErr <- hs.Serve(srv.Listener(ln)) }()
	log.Info("gateway listening", zap.String("addr", ln.Addr().String()), zap.String("dataDir", c.dataDir), zap.String("store", redactStore(dbPath)))

	select {
	case err := <-serveErr:
		return err
	case <-ctx.Done():
	}
	log.Info("draining")
	sctx, cancel := context.WithTimeout(context.Background(), c.drainTimeout)
	defer cancel()
	// Live WebSockets first (1001 to each), then in-flight requests.
	if err := srv.Shutdown(sctx); err != nil {
		log.Warn("connections still open after the drain timeout", zap.Error(err))
	}
	if err := hs.Shutdown(sctx); err != nil {
		log.Warn("drain timed out", zap.Error(err))
		_ = hs.Close()
	}
	return nil
}

// newSessions wires the session use cases: the store, the catalog, the
// TTL and limits, this replica's identity, and the browser pool as the
// browser service's provisioner (when there is one).
func newSessions(c serveConfig, db lease.Store, catalog *targets.Catalog, browsers *targets.BrowserPool, log *zap.Logger) *lease.Sessions {
	prov := map[targets.Kind]lease.Provisioner{}
	if browsers != nil {
		prov[targets.KindBrowser] = browsers
	}
	return lease.NewSessions(lease.SessionsOptions{
		Store: db, Catalog: catalog, TTL: lease.TTLPolicy{Default: c.ttlDefault, Max: c.ttlMax},
		MaxOpenPerTenant: c.maxSessions, Owner: strings.TrimRight(c.publicURL, "/"), Provisioners: prov,
		Expiry: lease.ExpirerOptions{Logger: log}, Logger: log,
	})
}

// browserPool starts the browser service's Chromium pool. Without a
// working Chromium the gateway runs without a browser service.
func browserPool(ctx context.Context, c serveConfig, uids *targets.UIDRange, profileDir string, log *zap.Logger) *targets.BrowserPool {
	pool, err := targets.NewBrowserPool(targets.BrowserOptions{Chromium: c.chromium, DataDir: c.dataDir, ProfileDir: profileDir,
		Warm: c.browserWarm, Max: c.browserMax, MaxPerTenant: c.browserMaxPerTenant, UIDs: uids,
		Logger: log.Named("browser")})
	if err != nil {
		// The rest of the gateway is still useful; opens on the browser
		// service answer 503 unavailable and say why in the log.
		log.Error("browser service disabled", zap.String("chromium", c.chromium), zap.Error(err))
		return nil
	}
	// What confines a browser (SPEC §9.1b), said once at start: the
	// DevTools pipe always; its own user only with a block.
	if uids != nil {
		log.Info("browsers: DevTools over a pipe, no TCP port; each Chromium runs as its own user",
			zap.String("browserUsers", fmt.Sprintf("%d-%d", uids.First, uids.Last)),
			zap.String("notConfined", "world-readable host files and the host's loopback are still reachable from pages"))
	} else {
		log.Warn("browsers run as the gateway's own user: a page can read what the gateway can through file: URLs the relay does not see (set --browser-user)",
			zap.String("confined", "DevTools over a pipe, no TCP port"))
	}
	// Start also kills Chromium left by a gateway that died and removes
	// its profiles.
	if err := pool.Start(ctx); err != nil {
		log.Warn("warm browser pool not filled", zap.Error(err))
	}
	return pool
}

// gatewayStore is what serve needs of a store: sessions, audit and the
// catalog in one place.
type gatewayStore interface {
	lease.Store
	targets.Store
	Ping(context.Context) error
	CheckWritable(context.Context) error
	Close() error
}

// openStore opens PostgreSQL for a postgres:// URL, else SQLite at path.
func openStore(ctx context.Context, spec string) (gatewayStore, error) {
	if strings.HasPrefix(spec, "postgres://") || strings.HasPrefix(spec, "postgresql://") {
		return store.OpenPostgres(ctx, spec)
	}
	return store.OpenSQLite(spec)
}

// tenantVerifier loads --tenant-key files, or the development key when
// none are given (returned so the welcome text can mint with it).
func tenantVerifier(c serveConfig) (*authn.Verifier, ed25519.PrivateKey, error) {
	if len(c.tenantKeys) > 0 {
		keys := make([]authn.Key, 0, len(c.tenantKeys))
		for _, p := range c.tenantKeys {
			k, err := authn.LoadKeyFile(p)
			if err != nil {
				return nil, nil, fmt.Errorf("--tenant-key %s: %w", p, err)
			}
			keys = append(keys, k)
		}
		v, err := authn.NewVerifier(keys)
		return v, nil, err
	}
	priv, err := authn.LoadOrCreateDevKey(c.dataDir)
	if err != nil {
		return nil, nil, fmt.Errorf("development key: %w", err)
	}
	v, err := authn.NewVerifier([]authn.Key{authn.DevKey(priv)})
	return v, priv, err
}

// connectKeys loads the connect-URL keyset: --connect-keys (or
// NIMBUS_CONNECT_KEYS) is a file path, or the keyset's JSON itself so that
// replicas can share it through their environment; without it, the data
// directory's own keyset.
func connectKeys(c serveConfig) (*authn.ConnectKeys, error) {
	if v := strings.TrimSpace(c.connectKeys); strings.HasPrefix(v, "{") {
		return authn.ParseConnectKeys([]byte(v))
	}
	if c.connectKeys != "" {
		return authn.LoadConnectKeys(c.connectKeys)
	}
	return authn.LoadOrCreateConnectKeys(c.dataDir)
}

func catalogConfig(path string) (*targets.Config, error) {
	if path == "" {
		return targets.DefaultConfig(), nil
	}
	return targets.LoadConfig(path)
}

func newLogger(level string, w io.Writer) (*zap.Logger, error) {
	lvl, err := zapcore.ParseLevel(level)
	if err != nil {
		return nil, usageError("--log-level: " + err.Error())
	}
	enc := zap.NewProductionEncoderConfig()
	enc.EncodeTime = zapcore.ISO8601TimeEncoder
	core := zapcore.NewCore(zapcore.NewJSONEncoder(enc), zapcore.Lock(zapcore.AddSync(w)), lvl)
	return zap.New(core), nil
}
