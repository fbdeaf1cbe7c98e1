# provision: the two commands in the README are `make demo` and `make test`.
SHELL := /bin/bash
GO ?= go
BIN := bin/provision
HOST_IMAGE ?= provision/host:bookworm
PKGS := ./...
export GOFLAGS ?= -mod=mod
# The libvirt driver needs cgo and this tag: libvirt's client library (libvirt0) is then
# loaded at run time, so no libvirt headers are needed to build. Every build, vet and test
# below names it explicitly (a -tags in GOFLAGS would be replaced by `-tags acceptance`).
TAGS := libvirt_dlopen
# Where acceptance/env/libvirt-image.sh keeps the VM base image (a libvirt pool; outside the repo).
export PROVISION_LIBVIRT_CACHE ?= /var/cache/provision/libvirt

.PHONY: all build demo demo-destroy env host-image test unit acceptance acceptance-libvirt vet fmt bench bench-fleet fuzz clean

all: build

build:
	$(GO) build -tags $(TAGS) -o $(BIN) ./cmd/provision

# Everything the tests and the demo need on this machine: a running Docker
# engine (installed from the machine's apt sources when missing) and the local
# driver's host image (debootstrap, no registry).
env:
	./acceptance/env/dockerd.sh
	./acceptance/env/libvirt.sh lib
	./drivers/local/image/build.sh $(HOST_IMAGE)
	PROVISION_HOST_IMAGE=$(HOST_IMAGE) ./drivers/local/image/engine.sh

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
	$(GO) vet -tags $(TAGS) $(PKGS)
	CGO_ENABLED=0 $(GO) vet ./drivers/libvirt/
	CGO_ENABLED=0 $(GO) build -o /dev/null ./cmd/provision
	$(GO) vet -tags acceptance,$(TAGS) ./acceptance/

# The test command: unit tests, driver and host tests on real containers,
# emulator-backed cloud tests, then the end-to-end acceptance suite.
test: env vet
	PROVISION_REQUIRE_DOCKER=1 PROVISION_REQUIRE_LIBVIRT=1 $(GO) test -tags $(TAGS) -count=1 -timeout 25m $(PKGS)
	CGO_ENABLED=0 $(GO) test -count=1 -run '^TestNotBuilt$$' ./drivers/libvirt/
	PROVISION_ACC=1 PROVISION_REQUIRE_DOCKER=1 PROVISION_REQUIRE_LIBVIRT=1 $(GO) test -count=1 -tags acceptance,$(TAGS) -timeout 75m -parallel 32 -skip '^TestLibvirtVM$$/^measure$$/^lynis$$' -v ./acceptance/ 2>&1 | tee /tmp/provision-acceptance.log | grep -E '^(=== RUN|--- |PASS|FAIL|ok|panic)|_test.go:' ; rc=$${PIPESTATUS[0]}; \
	  if [ $$rc -ne 0 ]; then ./acceptance/env/failures.sh /tmp/provision-acceptance.log; grep -A40 -E '^panic:' /tmp/provision-acceptance.log || true; fi; exit $$rc

# One real VM under QEMU (TCG where KVM does not work): libvirtd installed and started by the
# project's script, the Debian base image built once and cached in $(PROVISION_LIBVIRT_CACHE),
# then `provision apply` with the whole hostos path, a 1-manager swarm, checks on the VM's own
# kernel (auditd, sysctls, firewall, Lynis, docker-bench-security), and `provision destroy`.
# `make test` runs the same test without its Lynis audit (under software emulation on a 2-core
# machine it takes 40-70 min, README, Measured).
acceptance-libvirt:
	./acceptance/env/libvirt.sh daemon
	./acceptance/env/libvirt-image.sh >/dev/null
	PROVISION_ACC=1 PROVISION_REQUIRE_LIBVIRT=1 $(GO) test -count=1 -tags acceptance,$(TAGS) -timeout 120m -run '^TestLibvirt' -v ./acceptance/ 2>&1 | tee /tmp/provision-acceptance-libvirt.log | grep -E '^(=== RUN|--- |PASS|FAIL|ok|panic)|_test.go:' ; rc=$${PIPESTATUS[0]}; \
	  if [ $$rc -ne 0 ]; then ./acceptance/env/failures.sh /tmp/provision-acceptance-libvirt.log; fi; exit $$rc

unit:
	$(GO) test -tags $(TAGS) -count=1 $(PKGS)

# Every fuzz target for a minute each (their seed corpora, in testdata/fuzz,
# also run as plain tests in `make unit` and `make test`).
FUZZ_TARGETS := ./provision/spec/:FuzzLoad ./provision/spec/:FuzzVarFile ./provision/spec/:FuzzVarValue ./provision/state/:FuzzLoadState
FUZZ_TIME ?= 60s

fuzz:
	@set -e; for t in $(FUZZ_TARGETS); do \
		pkg=$${t%%:*}; name=$${t##*:}; echo "== $$name ($$pkg, $(FUZZ_TIME))"; \
		$(GO) test -tags $(TAGS) -run='^$$' -fuzz="^$$name\$$" -fuzztime=$(FUZZ_TIME) $$pkg; \
	done

bench: env build
	$(GO) test -tags $(TAGS) -run='^$$' -bench=. -benchmem ./provision/spec/ ./provision/plan/
	./acceptance/bench.sh

# The fleet at scale, simulated (provision/fleetsim): apply, no-op apply, scale
# N -> 1.2N -> N and destroy on FLEET_HOSTS simulated hosts with zero latency
# (the orchestration's own cost), then a fresh apply with realistic latencies
# (about 5 minutes at 1000 hosts; FLEET_SCALE=10 runs it ten times faster but
# multiplies the tool's own cost too). No Docker, no network.
FLEET_HOSTS ?= 1000
FLEET_MANAGERS ?= 3
FLEET_SCALE ?= 1
bench-fleet:
	FLEET_HOSTS=$(FLEET_HOSTS) FLEET_MANAGERS=$(FLEET_MANAGERS) FLEET_LATENCY=zero \
		$(GO) test -tags $(TAGS) -run='^$$' -bench=Fleet -benchtime=1x -timeout 60m ./provision/fleetsim/
	FLEET_HOSTS=$(FLEET_HOSTS) FLEET_MANAGERS=$(FLEET_MANAGERS) FLEET_LATENCY=realistic FLEET_SCALE=$(FLEET_SCALE) FLEET_APPLY_ONLY=1 \
		$(GO) test -tags $(TAGS) -run='^$$' -bench=Fleet -benchtime=1x -timeout 60m ./provision/fleetsim/

clean:
	rm -rf bin
