# microcluster-rs. The two commands a new user needs: `make run` and `make test`.
# Each target is a one-liner over cargo; `deps` installs the Debian packages they need.

CARGO ?= cargo
BUILD_PACKAGES := libdqlite-dev libuv1-dev libsqlite3-dev liblz4-dev pkg-config gcc curl
BENCH_PACKAGES := go-dqlite etcd-server etcd-client
# tests/tests/suite/clocks.rs runs a member 2 days ahead under libfaketime's preload library.
TEST_PACKAGES := libfaketime

.PHONY: all deps deps-test deps-bench build run test crates test-faults test-debian13 deb test-deb bench-debian13 fuzz lint fmt bench bench-engine bench-cluster clean install install-files uninstall

all: build

# Installs missing Debian packages (as root), or says what to install.
deps:
	@sh .ci/apt-install $(BUILD_PACKAGES)

deps-test:
	@sh .ci/apt-install $(BUILD_PACKAGES) $(TEST_PACKAGES)

deps-bench:
	@sh .ci/apt-install $(BUILD_PACKAGES) $(BENCH_PACKAGES)

build: deps
	$(CARGO) build --workspace --release

# A ready 3-member cluster on 127.0.0.1:9001-9003 (state in ./run/); Ctrl-C stops it.
run: deps
	$(CARGO) build --release -p microd -p microctl -p microcluster-tests && ./target/release/cluster-demo

# The end-to-end tests run the built microd/microctl binaries (and the library guide's kv
# example), so build them first.
test: deps-test lint crates
	$(CARGO) build --workspace --bins --examples && $(CARGO) test --workspace --all-targets && $(CARGO) test --workspace --doc

# The full fault suite (20 leader kills, a 10 s freeze, partitions, full disks, 40 power cuts);
# `make test` runs a quick version of each fault.
test-faults: deps
	$(CARGO) build --workspace && MICROCLUSTER_FAULTS=full $(CARGO) test -p microcluster-tests --test suite -- --nocapture faults:: frozen_leader:: interrupted_joins:: invariants:: partition:: power_loss::

# Debian 13's libdqlite 1.18, in a Debian 13 root that .ci/debian13 makes with debootstrap the
# first time (as root) and reuses: the engine tests and the main end-to-end suites.
DEBIAN13_TESTS := tutorial:: membership:: health:: writes:: bad_input:: faults:: guide:: recover:: doctor:: joins:: frozen_leader:: backup:: power_loss:: --skip interrupted_joins::
test-debian13:
	sh .ci/debian13 run sh -c 'cargo build --workspace && cargo build -p microcluster --example kv && cargo test -p dqlite-sys -p dqlite && cargo test -p microcluster --lib && cargo test -p microcluster-tests --test suite -- $(DEBIAN13_TESTS)'

# microd's Debian package for the Debian release this runs on (packaging/deb/build), from the
# release binaries: $(DEB_DIR)/microd_VERSION-1+debN_ARCH.deb.
DEB_DIR = $(or $(CARGO_TARGET_DIR),target)/deb
deb: deps
	@sh .ci/apt-install dpkg-dev
	$(CARGO) build --release -p microd -p microctl
	sh packaging/deb/build $(RELEASE) $(DEB_DIR)

# This machine's package and one built in the Debian 13 root, each installed into a clean root of
# its release, started, run through the tutorial and purged (packaging/deb/test).
test-deb: deb
	sh packaging/deb/test $(DEB_DIR)/microd_*.deb
	sh .ci/debian13 run make deb
	sh packaging/deb/test target/debian13/deb/microd_*.deb

# Every fuzz target for FUZZ_SECONDS (default 60) each; crashes land in fuzz/regressions/.
fuzz: deps
	@sh .ci/apt-install g++
	sh fuzz/run.sh

# What the Rust crate registry and docs.rs do with the published crates: each packaged and
# built from its package alone (the workspace's own crates as they would be published), and
# their documentation built with DOCS_RS set and no libdqlite to be found.
PUBLISHED := -p dqlite-sys -p dqlite -p microcluster -p microd -p microctl
# cargo takes a packaged crate for a registry's, which never changes under a name and version: it
# reuses one it unpacked before (in $CARGO_HOME/registry/src/-HASH/) and one it built before (its
# fingerprint in the target directory) even when the sources changed since. Both are removed
# first, so that each run builds what it just packaged.
OWN_CRATES := dqlite-sys dqlite microcluster microd microctl
crates:
	rm -rf "$${CARGO_HOME:-$$HOME/.cargo}"/registry/src/-*/ $(foreach c,$(OWN_CRATES),$(or $(CARGO_TARGET_DIR),target)/debug/.fingerprint/$(c)-*)
	$(CARGO) package $(PUBLISHED) --allow-dirty --quiet
	DOCS_RS=1 PKG_CONFIG_LIBDIR=/nonexistent RUSTDOCFLAGS="-D warnings" $(CARGO) doc --no-deps -p dqlite-sys -p dqlite -p microcluster --all-features --target-dir target/docs-rs --quiet

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	$(CARGO) clippy -p microcluster --no-default-features -- -D warnings
	RUSTDOCFLAGS="-D warnings" $(CARGO) doc --no-deps --workspace --quiet

fmt:
	$(CARGO) fmt --all

# Side-by-side with Debian's go-dqlite tools and etcd (docs/performance.md); numbers are printed, never asserted.
bench: bench-engine bench-cluster

bench-engine: deps-bench
	$(CARGO) bench -p dqlite --bench engine -- $(BENCH_ARGS)

bench-cluster: deps-bench
	$(CARGO) build --release -p microd -p microctl -p microcluster-tests && $(CARGO) build --release -p microcluster --example kv && ./target/release/bench $(BENCH_ARGS)

# `make bench` in the Debian 13 root: libdqlite 1.18 beside go-dqlite 2.0.0's tools and etcd 3.5.
bench-debian13:
	DEBIAN13_PACKAGES="$(BENCH_PACKAGES)" sh .ci/debian13 run sh -c 'cargo bench -p dqlite --bench engine -- $(BENCH_ARGS) && cargo build --release -p microd -p microctl -p microcluster-tests && cargo build --release -p microcluster --example kv && ./target/debian13/release/bench $(BENCH_ARGS)'

clean:
	$(CARGO) clean

# `make install [PREFIX=/usr/local] [DESTDIR=]`: binaries, man pages and completions under PREFIX;
# the systemd unit and the config (an existing one is kept) under /etc. systemd is reloaded
# only when it runs and nothing is staged in DESTDIR. `make uninstall` keeps config and state.
PREFIX ?= /usr/local
RELEASE ?= $(or $(CARGO_TARGET_DIR),target)/release
BIN_DIR = $(DESTDIR)$(PREFIX)/bin
SHARE_DIR = $(DESTDIR)$(PREFIX)/share
UNIT_DIR = $(DESTDIR)/etc/systemd/system
SYSUSERS_DIR = $(DESTDIR)/usr/lib/sysusers.d
CONFIG_DIR = $(DESTDIR)/etc/microd
SYSTEMD_RUNNING = [ -z "$(DESTDIR)" ] && [ -d /run/systemd/system ]

install: deps
	$(CARGO) build --release -p microd -p microctl
	@$(MAKE) --no-print-directory install-files

# What `install` puts in place, from the binaries in RELEASE (tests/tests/suite/install.rs stages it
# with the debug build).
install-files:
	install -d $(BIN_DIR) $(SHARE_DIR)/man/man1 $(UNIT_DIR) $(CONFIG_DIR) $(SHARE_DIR)/bash-completion/completions $(SHARE_DIR)/zsh/site-functions $(SHARE_DIR)/fish/vendor_completions.d
	install -m 0755 $(RELEASE)/microd $(RELEASE)/microctl $(BIN_DIR)/
	sed 's|/usr/local/bin/|$(PREFIX)/bin/|' systemd/microd.service > $(UNIT_DIR)/microd.service && chmod 0644 $(UNIT_DIR)/microd.service
	[ -e $(CONFIG_DIR)/microd.toml ] || install -m 0644 config/microd.toml $(CONFIG_DIR)/microd.toml
	install -D -m 0644 systemd/microd.sysusers $(SYSUSERS_DIR)/microd.conf
	if [ -z "$(DESTDIR)" ] && command -v systemd-sysusers >/dev/null; then systemd-sysusers $(SYSUSERS_DIR)/microd.conf; fi
	$(RELEASE)/microd --generate-manpage $(SHARE_DIR)/man/man1
	$(RELEASE)/microctl manpages $(SHARE_DIR)/man/man1
	$(RELEASE)/microctl completion bash > $(SHARE_DIR)/bash-completion/completions/microctl
	$(RELEASE)/microctl completion zsh > $(SHARE_DIR)/zsh/site-functions/_microctl
	$(RELEASE)/microctl completion fish > $(SHARE_DIR)/fish/vendor_completions.d/microctl.fish
	if $(SYSTEMD_RUNNING); then systemctl daemon-reload; fi

uninstall:
	if $(SYSTEMD_RUNNING); then systemctl disable --now microd.service || true; fi
	rm -f $(BIN_DIR)/microd $(BIN_DIR)/microctl $(UNIT_DIR)/microd.service $(SYSUSERS_DIR)/microd.conf $(SHARE_DIR)/man/man1/microd.1 $(SHARE_DIR)/man/man1/microctl.1 $(SHARE_DIR)/man/man1/microctl-*.1
	rm -f $(SHARE_DIR)/bash-completion/completions/microctl $(SHARE_DIR)/zsh/site-functions/_microctl $(SHARE_DIR)/fish/vendor_completions.d/microctl.fish
	if $(SYSTEMD_RUNNING); then systemctl daemon-reload; fi
	@echo "kept $(CONFIG_DIR)/microd.toml and /var/lib/microd: remove them by hand if they are no longer wanted"
