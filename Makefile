# The README's two commands are `go run ./cmd/gateway` and `make test`.
GO ?= go
PKGS := ./...

.PHONY: test check vet race build bench fuzz docker

## test: everything CI runs: formatting, vet, and the race-enabled test suite.
test: check vet race

check:
	@out=$$(gofmt -l . 2>&1); if [ -n "$$out" ]; then echo "gofmt needed on:"; echo "$$out"; exit 1; fi

vet:
	$(GO) vet $(PKGS)

race:
	$(GO) test -race -count=1 -timeout 15m $(PKGS)

build:
	CGO_ENABLED=0 $(GO) build -trimpath -o bin/gateway ./cmd/gateway

## bench: reproduces every figure in BENCHMARKS.md.
bench:
	$(GO) test -run '^$$' -bench . -benchtime 3000x -count 1 ./proxy/
	$(GO) test -run '^$$' -bench . -count 1 ./store/ ./authn/

## fuzz: each fuzz target for FUZZTIME (default 60s).
FUZZTIME ?= 60s
fuzz:
	$(GO) test -run '^$$' -fuzz '^FuzzDecodeOpenRequest$$' -fuzztime $(FUZZTIME) ./proxy/
	$(GO) test -run '^$$' -fuzz '^FuzzVerify$$' -fuzztime $(FUZZTIME) ./authn/

docker:
	docker build -t nimbus-gateway .
