# provision: the two commands in the README are `make demo` and `make test`.
SHELL := /bin/bash
GO ?= go
BIN := bin/provision
HOST_IMAGE ?= provision/host:bookworm
PKGS := ./...
export GOFLAGS ?= -mod=mod

.PHONY: all build demo demo-destroy env host-image test unit acceptance vet fmt bench fuzz clean

all: build

build:
	$(GO) build -o $(BIN) ./cmd/provision

# Everything the tests and the demo need on this machine: a running Docker
# engine (installed from the machine's apt sources when missing) and the local
# driver's host image (debootstrap, no registry).
env:
	./acceptance/env/dockerd.sh
	./drivers/local/image/build.sh $(HOST_IMAGE)

host-image:
	./drivers/local/image/build.sh $(HOST_IMAGE)

# The main job on the local default: a 1-manager, 2-worker TLS swarm of system containers.
demo: env build
	$(BIN) apply examples/local.hcl --auto-approve
	$(BIN) status examples/local.hcl

demo-destroy: build
	$(BIN) destroy examples/local.hcl --auto-approve

vet:
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { echo "gofmt needed:"; gofmt -l $$(git ls-files '*.go'); exit 1; }
	$(GO) vet $(PKGS)
	$(GO) vet -tags acceptance ./acceptance/

# The test command: unit tests, driver and host tests on real containers,
# emulator-backed cloud tests, then the end-to-end acceptance suite.
test: env vet
	PROVISION_REQUIRE_DOCKER=1 $(GO) test -count=1 -timeout 25m $(PKGS)
	PROVISION_ACC=1 PROVISION_REQUIRE_DOCKER=1 $(GO) test -count=1 -tags acceptance -timeout 30m -v ./acceptance/ 2>&1 | tee /tmp/provision-acceptance.log | grep -E '^(=== RUN|--- |PASS|FAIL|ok|panic)|_test.go:' ; exit $${PIPESTATUS[0]}

unit:
	$(GO) test -count=1 $(PKGS)

# Every fuzz target for a minute each (their seed corpora, in testdata/fuzz,
# also run as plain tests in `make unit` and `make test`).
FUZZ_TARGETS := ./provision/spec/:FuzzLoad ./provision/spec/:FuzzVarFile ./provision/spec/:FuzzVarValue ./provision/state/:FuzzLoadState
FUZZ_TIME ?= 60s

fuzz:
	@set -e; for t in $(FUZZ_TARGETS); do \
		pkg=$${t%%:*}; name=$${t##*:}; echo "== $$name ($$pkg, $(FUZZ_TIME))"; \
		$(GO) test -run='^$$' -fuzz="^$$name\$$" -fuzztime=$(FUZZ_TIME) $$pkg; \
	done

bench: env build
	$(GO) test -run='^$$' -bench=. -benchmem ./provision/spec/ ./provision/plan/
	./acceptance/bench.sh

clean:
	rm -rf bin
