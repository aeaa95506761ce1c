# etcd-defrag-agent — every target works on a fresh machine with Go 1.26.

GO             ?= go
VERSION        ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo devel)
LDFLAGS        := -s -w -X main.version=$(VERSION)
GOLANGCI_LINT  := github.com/golangci/golangci-lint/v2/cmd/golangci-lint@v2.15.0
FUZZTIME       ?= 60s
IMAGE          ?= etcd-defrag-agent
IMAGE_TAG      ?= $(VERSION)
# The image's platform follows the binary's (GOARCH=arm64 make image needs BuildKit; see the README).
IMAGE_PLATFORM ?= linux/$(shell $(GO) env GOARCH)

.PHONY: all build image test-image demo test test-busy test-short check-fmt vet race lint fuzz fuzz-seeds clean

all: build test

## build: the agent binary (static, trimmed, version stamped) in bin/
build:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o bin/etcd-defrag-agent ./cmd/agent

## image: the container image $(IMAGE):$(IMAGE_TAG), FROM scratch around bin/etcd-defrag-agent
image: build
	docker build --platform $(IMAGE_PLATFORM) --build-arg VERSION=$(VERSION) -t $(IMAGE):$(IMAGE_TAG) .

## test-image: build the image and run it: non-root, no shell, read-only root filesystem,
## --version, --check-config, /healthz (scripts/test-image.sh; starts a private dockerd if none answers)
test-image: build
	VERSION=$(VERSION) IMAGE=$(IMAGE) scripts/test-image.sh

## demo: an embedded 3-member etcd, one agent per member, a round as it happens
demo:
	$(GO) run ./cmd/demo

## test: the README's test command — formatting, vet, and every test with the race detector, in both
## modules: the product's (.) and the harness's (test/: e2e and bench helpers, the manifests' tests)
test: check-fmt vet race

# The harness's own module (test/go.mod): e2e, benchmarks, manifest tests, kubecheck.
HARNESS := cd test &&

check-fmt:
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi

vet:
	$(GO) vet ./...
	$(HARNESS) $(GO) vet ./... && $(GO) vet -tags e2e ./e2e/ && $(GO) vet -tags bench ./bench/

race:
	$(GO) test -race -count=1 -timeout 20m ./...
	$(HARNESS) $(GO) test -race -count=1 -timeout 20m ./...

## test-busy: make test TEST_BUSY_RUNS times in a row (default 3) with every core kept busy beside it
## (stress-ng, installed from Debian if missing); logs in bin/test-busy/
test-busy:
	scripts/test-busy.sh

## test-short: the fast tier alone: decisions against fakes, config, rule (no etcd starts)
test-short:
	$(GO) test -short -count=1 ./...

## lint: golangci-lint with the linters of .golangci.yml (installed on demand)
lint:
	$(GO) run $(GOLANGCI_LINT) run ./...
	$(HARNESS) $(GO) run $(GOLANGCI_LINT) run --config ../.golangci.yml ./...

## fuzz: run each fuzz target for FUZZTIME (seed corpora run in `make test`)
fuzz:
	$(GO) test -run='^$$' -fuzz='^FuzzCompile$$' -fuzztime=$(FUZZTIME) ./rule/
	$(GO) test -run='^$$' -fuzz='^FuzzLoadYAML$$' -fuzztime=$(FUZZTIME) ./config/

clean:
	rm -rf bin/

## e2e: the end-to-end suite (test/e2e): etcd members and agents as separate processes, on etcd 3.4-3.7.
## Needs Debian's etcd-server (etcd 3.4) and the Go module proxy (3.5-3.7 are built once, then cached).
## E2E_ETCD_VERSIONS=3.6,3.7 narrows the version matrix; E2E_RUN selects scenarios (go test -run).
E2E_RUN      ?= .
STRESS_COUNT ?= 20

e2e:
	$(HARNESS) $(GO) vet -tags e2e ./e2e/
	$(HARNESS) $(GO) test -tags e2e -count=1 -timeout 30m -v -run '$(E2E_RUN)' ./e2e/

## stress: repeat the e2e fault scenarios STRESS_COUNT times (default 20); summary in bin/stress/summary.txt
stress:
	STRESS_COUNT=$(STRESS_COUNT) test/e2e/stress.sh

.PHONY: e2e stress

## bench: the benchmarks (test/bench) against real etcd processes: builds the agent and etcd (3.6 unless
## E2E_ETCD_VERSIONS says otherwise), runs them (about 70 minutes; P1 alone 43) and writes docs/BENCHMARKS.md and
## docs/bench/ (plots, results.json). Numbers need a quiet machine: BENCH_QUIET_LOAD=0.8 makes the run
## wait (up to BENCH_QUIET_TIMEOUT, default 2h) until the 1-minute load average stays below 0.8 for a minute.
## bench-quick runs every benchmark briefly into bin/bench-quick/ (its numbers mean nothing);
## bench-report renders docs/BENCHMARKS.md again from docs/bench/results.json.
## BENCH_RUN selects benchmarks (go test -run); with BENCH_MERGE=1 their numbers replace those of
## docs/bench/results.json and the report says so (e.g. BENCH_MERGE=1 make bench BENCH_RUN='TestP2|TestP3').
## BENCH_P1 replaces P1's cases: members x MiB x runs, agent flags after a colon, comma separated
## (e.g. BENCH_MERGE=1 BENCH_P1=3x1000x5,5x1000x5 make bench BENCH_RUN=TestP1RoundOverhead).
BENCH_TIMEOUT ?= 120m
BENCH_RUN     ?= .

bench:
	$(HARNESS) $(GO) vet -tags bench ./bench/
	$(HARNESS) BENCH_COMMAND="$(if $(BENCH_P1),BENCH_P1='$(BENCH_P1)' )make bench$(if $(filter-out .,$(BENCH_RUN)), BENCH_RUN='$(BENCH_RUN)')" $(GO) test -tags bench -count=1 -timeout $(BENCH_TIMEOUT) -v -run '$(BENCH_RUN)' ./bench/

bench-quick:
	$(HARNESS) $(GO) vet -tags bench ./bench/
	$(HARNESS) BENCH_QUICK=1 BENCH_COMMAND="make bench-quick" $(GO) test -tags bench -count=1 -timeout 20m -v ./bench/

bench-report:
	$(HARNESS) BENCH_REPORT_ONLY=1 $(GO) test -tags bench -count=1 -run '^$$' ./bench/

.PHONY: bench bench-quick bench-report

## kube-e2e: the manifests run by a real kubelet (containerd and runc from Debian), a real control
## plane and a real Prometheus, on this machine alone (test/kube, see its README; needs root). Builds
## and caches Kubernetes, etcd, CoreDNS and Prometheus from Go modules, installs the Debian packages
## it needs, and removes everything it started. KUBE_E2E_PARTS=kamaji,static runs what CI runs.
KUBE_E2E_PARTS ?= kamaji,static,statefulset,prometheus

kube-e2e:
	$(HARNESS) $(GO) vet ./kube/...
	KUBE_E2E_PARTS=$(KUBE_E2E_PARTS) test/kube/run.sh

.PHONY: kube-e2e
