# microcluster-rs. The two commands a new user needs: `make run` and `make test`.
# Each target is a one-liner over cargo; `deps` installs the Debian packages they need.

CARGO ?= cargo
BUILD_PACKAGES := libdqlite-dev libuv1-dev libsqlite3-dev liblz4-dev pkg-config gcc curl
BENCH_PACKAGES := go-dqlite

.PHONY: all deps deps-bench build run test test-faults fuzz lint fmt bench bench-engine bench-cluster clean

all: build

# Installs missing Debian packages (as root), or says what to install.
deps:
	@sh .ci/apt-install $(BUILD_PACKAGES)

deps-bench:
	@sh .ci/apt-install $(BUILD_PACKAGES) $(BENCH_PACKAGES)

build: deps
	$(CARGO) build --workspace --release

# A ready 3-member cluster on 127.0.0.1:9001-9003 (state in ./run/); Ctrl-C stops it.
run: deps
	$(CARGO) build --release -p microd -p microctl -p microcluster-tests && ./target/release/cluster-demo

# The end-to-end tests run the built microd/microctl binaries, so build them first.
test: deps lint
	$(CARGO) build --workspace && $(CARGO) test --workspace --all-targets && $(CARGO) test --workspace --doc

# The full fault suite (20 leader kills, a 10 s freeze, partitions, full disks); `make test`
# runs a quick version of each fault.
test-faults: deps
	$(CARGO) build --workspace && MICROCLUSTER_FAULTS=full $(CARGO) test -p microcluster-tests --test faults --test partition -- --nocapture

# Every fuzz target for FUZZ_SECONDS (default 60) each; crashes land in fuzz/regressions/.
fuzz: deps
	@sh .ci/apt-install g++
	sh fuzz/run.sh

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	RUSTDOCFLAGS="-D warnings" $(CARGO) doc --no-deps --workspace --quiet

fmt:
	$(CARGO) fmt --all

# Side-by-side with Debian's go-dqlite tools; numbers are printed, never asserted.
bench: bench-engine bench-cluster

bench-engine: deps-bench
	$(CARGO) bench -p dqlite --bench engine -- $(BENCH_ARGS)

bench-cluster: deps-bench
	$(CARGO) build --release -p microd -p microctl -p microcluster-tests && $(CARGO) build --release -p microcluster --example kv && ./target/release/bench $(BENCH_ARGS)

clean:
	$(CARGO) clean
