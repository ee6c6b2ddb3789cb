# The README's two commands are `go run ./cmd/gateway` and `make test`.
GO ?= go
PKGS := ./...
# Node suites: each directory's `npm test` (after `npm ci`, which .ci/run does).
NODE_SUITES := $(wildcard sdk/typescript/package.json examples/web-terminal/package.json e2e/browser/package.json)

.PHONY: test check vet race node build bench fuzz docker

## test: everything CI runs: formatting, vet, the race-enabled Go tests (with the
## one-minute soak of e2e; `go test ./e2e -run Soak -args -soak=5m` for the long one),
## the Node suites.
test: check vet race node

check:
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go' -not -path './node_modules/*')); \
	if [ -n "$$out" ]; then echo "gofmt needed on:"; echo "$$out"; exit 1; fi

vet:
	$(GO) vet $(PKGS)

race:
	$(GO) test -race -count=1 -timeout 20m $(PKGS)
	@# The sandbox suites again under the other runtime (SPEC §9.1): the
	@# in-process harnesses default to child processes, the gateways of e2e
	@# to runc where it can run.
	NIMBUS_TEST_SANDBOX_RUNTIME=runc $(GO) test -race -count=1 -timeout 20m ./channels/ ./proxy/
	NIMBUS_TEST_SANDBOX_RUNTIME=process $(GO) test -race -count=1 -timeout 20m ./e2e/

node:
	@for f in $(NODE_SUITES); do d=$$(dirname $$f); echo "== npm test in $$d"; \
	  if [ ! -d $$d/node_modules ]; then (cd $$d && npm ci --no-audit --no-fund) || exit 1; fi; \
	  (cd $$d && npm test) || exit 1; done

build:
	CGO_ENABLED=0 $(GO) build -trimpath -o bin/gateway ./cmd/gateway

## bench: reproduces every figure in BENCHMARKS.md (needs PostgreSQL and Chromium, as make test does).
bench:
	$(GO) test -run '^$$' -bench '^BenchmarkOpen$$' -benchtime 3000x -count 1 ./proxy/
	$(GO) test -run '^$$' -bench '^BenchmarkCreateSession' -benchtime 3s -count 1 ./store/
	$(GO) test -run '^TestExpiryDisconnects200$$' -count 1 -v ./proxy/ | grep -E 'lag|^ok'
	$(GO) test -run '^$$' -bench '^BenchmarkCrossReplicaClose$$' -benchtime 200x -count 1 ./cmd/gateway/
	$(GO) test -run '^$$' -bench '^BenchmarkStdioThroughput$$' -benchtime 1x -count 3 ./channels/
	$(GO) test -run '^$$' -bench '^BenchmarkIdleStdioMemory$$' -benchtime 1x -count 1 ./cmd/gateway/
	$(GO) test -run '^$$' -bench '^BenchmarkFiles$$' -benchtime 3x -count 1 ./proxy/
	$(GO) test -run '^$$' -bench '^Benchmark(CDP|Browser)' -count 1 ./proxy/

## fuzz: each fuzz target for FUZZTIME (default 60s).
FUZZTIME ?= 60s
fuzz:
	$(GO) test -run '^$$' -fuzz '^FuzzDecodeOpenRequest$$' -fuzztime $(FUZZTIME) ./proxy/
	$(GO) test -run '^$$' -fuzz '^FuzzVerify$$' -fuzztime $(FUZZTIME) ./authn/
	$(GO) test -run '^$$' -fuzz '^FuzzStdioControl$$' -fuzztime $(FUZZTIME) ./channels/
	$(GO) test -run '^$$' -fuzz '^FuzzStdioMessage$$' -fuzztime $(FUZZTIME) ./channels/
	$(GO) test -run '^$$' -fuzz '^FuzzFilesRequest$$' -fuzztime $(FUZZTIME) ./channels/
	$(GO) test -run '^$$' -fuzz '^FuzzFilesPath$$' -fuzztime $(FUZZTIME) ./channels/

docker:
	docker build -t nimbus-gateway .
