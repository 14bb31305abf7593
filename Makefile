# Tandem build, test and demo entry points. Every target does its own set-up.
SHELL := /bin/bash
ARCH := $(shell uname -m)
BPF_CLANG ?= $(firstword $(wildcard /usr/bin/clang-14 /usr/bin/clang) clang)
BPF_CFLAGS := -O2 -g -Wall -Werror -target bpf -mcpu=v3 -I bpf/include -I/usr/include/$(ARCH)-linux-gnu
BPF_OBJS := bpf/obj/tandem_lb.o bpf/obj/testbed_xdp_pass.o bpf/obj/bench_arrivals.o
SWIFT ?= swift
SWIFT_FLAGS ?=

.PHONY: all deps bpf build test unit-test privileged-test demo bench bench-datapath bench-cost bench-replication bench-failover bench-ecmp release package package-test clean

all: build

deps:
	@bash scripts/deps.sh

bpf: $(BPF_OBJS)

BPF_HEADERS := $(wildcard bpf/include/*.h bpf/lib/*.h)

bpf/obj/%.o: bpf/%.c $(BPF_HEADERS)
	@mkdir -p bpf/obj
	$(BPF_CLANG) $(BPF_CFLAGS) -c $< -o $@

build: bpf
	$(SWIFT) build $(SWIFT_FLAGS)

test: deps build
	bash scripts/test.sh

demo: deps build
	bash testbed/demo.sh

# dist/tandem_<version>_<arch>.deb: the release tandem with the static Swift standard library,
# the BPF object, the systemd unit, the example config (scripts/package.sh, packaging/).
# Release build in .build-package (static and dynamic builds must not share a build directory);
# the man page comes from the debug build's --help texts.
package: deps build
	@bash scripts/package.sh

# Builds, installs, runs (in a test-bed namespace), removes and purges the package (root).
package-test: deps build
	bash scripts/package-test.sh

# Benchmarks measure release builds.
release: bpf
	$(SWIFT) build -c release --product tandem
	$(SWIFT) build -c release --product tandem-echo
	$(SWIFT) build -c release --product tandem-syncbench
	$(SWIFT) build -c release --product tandem-ctbench
	$(SWIFT) build -c release --product fake-oci

bench: bench-datapath bench-cost bench-replication bench-failover bench-ecmp

bench-datapath: deps build release
	bash bench/datapath.sh

# CPU per datagram, per request and per new connection at fixed rates (bench/cost.sh; the paced
# generator bench/pacer/pacer.c is compiled by the script).
bench-cost: deps build release
	bash bench/cost.sh

bench-replication: deps build release
	bash bench/replication.sh

# Failover: Tandem vs keepalived (time to move the VIP), then 10 reboots of the MASTER with 200 TCP
# + 50 UDP long-lived flows on each provider (l2, oci through the fake OCI).
bench-failover: deps build release
	bash bench/failover-compare.sh --rounds 5
	TANDEM_BIN=$(CURDIR)/.build/release bash testbed/failover.sh --rounds 10 --cloud l2 > bench/results/failover-l2-latest.json
	TANDEM_BIN=$(CURDIR)/.build/release bash testbed/failover.sh --rounds 10 --cloud oci > bench/results/failover-oci-latest.json

# ECMP: three Tandem nodes against three nftables nodes (conntrack, no state sync) behind the same
# BGP router, the same flows and phases (testbed/ecmp.sh --system tandem, then nftables).
bench-ecmp: deps build release
	TANDEM_BIN=$(CURDIR)/.build/release bash bench/ecmp.sh

clean:
	rm -rf bpf/obj .build dist
