# containerd-shim-wasmtime-v1: build, test and demo. `make help` lists the targets.
SHELL := /bin/bash
CARGO ?= cargo
PREFIX ?= /usr/local
IMAGES := target/images
WASM_OCI := target/debug/wasm-oci
WASM_CC ?= clang --target=wasm32-wasi -O2
SHIM := containerd-shim-wasmtime-v1
# Every debug build selects the same packages and targets, so cargo unifies the
# same features each time and never compiles wasmtime twice.
CARGO_BUILD := $(CARGO) build --workspace --all-targets
# The demo builds only what it runs: the shim, the demo runner and wasm-oci, in
# one build. Cargo resolves the same features for wasmtime and everything under
# it as for CARGO_BUILD (`cargo build --unit-graph` shows it), so a later
# `make build` or `make test` reuses that wasmtime; it recompiles only toml's
# four small crates, shim-task and the shim binary (node-installer's toml_edit
# turns on their default features).
DEMO_BUILD := $(CARGO) build -p containerd-shim-wasmtime -p shim-tests -p wasm-image-builder \
	--bin $(SHIM) --bin demo --bin wasm-oci
# Debian packages the demo needs: containerd 1.6 (with runc) under tini, as
# the harness runs it (test/src/lib.rs); clang + wasi-libc for hello.wasm; gcc,
# libseccomp (libcontainer) and protoc (containerd's and the CRI's gRPC
# definitions) for the Rust build; procps's kill.
DEMO_DEPS := containerd runc tini clang lld wasi-libc libclang-rt-dev-wasm32 gcc libc6-dev libseccomp-dev protobuf-compiler procps
# ... and the tests too: CNI plugins and iproute2 for the CRI node, curl,
# docker-registry for the registry suite, the dynamic busybox critest's
# stand-in images are built from (test/src/critest.rs).
DEPS := $(DEMO_DEPS) iproute2 containernetworking-plugins curl docker-registry busybox

# The compatibility matrix: besides the machine's containerd (1.6, Debian 12),
# the e2e suites run against these, Debian trixie's (1.7) and sid's (2.1)
# packages unpacked into $(DEBS) by test/fetch-debs.sh (docs/compatibility.md).
DEBS := target/debs
CONTAINERD_MATRIX := 1.7 2.1

.PHONY: help demo demo-deps check test deps unit-test e2e-test e2e-matrix manifest-test \
	build release install images installer-debs installer-image bench bench-deps soak fuzz \
	fmt lint clean conformance vm-deps test-v2 test-v2-full

help:
	@echo "make demo             run a wasm program through a private containerd with this shim (root;"
	@echo "                      installs and builds only what it uses)"
	@echo "make demo-deps        the Debian packages the demo needs, if missing (root)"
	@echo "make check            fmt, clippy, and the tests that need neither root nor containerd"
	@echo "make test             unit tests, fuzzing, end-to-end tests against real containerd 1.6, 1.7, 2.1 (root)"
	@echo "make deps             everything make test needs, if missing (root): packages, kubernetes-validate,"
	@echo "                      nightly + cargo-fuzz, containerd 1.7/2.1 and oras unpacked into $(DEBS)"
	@echo "make unit-test        every crate's unit tests, the root-only ones included"
	@echo "make e2e-test         the end-to-end suites against the machine's containerd (root)"
	@echo "make e2e-matrix       the shim-tests suites against containerd $(CONTAINERD_MATRIX) from $(DEBS) (root)"
	@echo "make manifest-test    deploy/'s manifests against the Kubernetes schemas"
	@echo "make test-v2          the e2e suites in a cgroup v2 + systemd guest (QEMU): CI's subset (root)"
	@echo "make test-v2-full     every v2 suite on containerd 1.6 and 2.1, cgroupfs and systemd drivers (root)"
	@echo "make vm-deps          QEMU, and the cgroup v2 + systemd guest's kernel and initramfs in $(VM) (root)"
	@echo "make conformance      critest (Kubernetes' CRI suite), every spec, runc then wasmtime; no regression (root)"
	@echo "make build            every debug target"
	@echo "make release          the shim, release build"
	@echo "make install          the release shim to $(PREFIX)/bin"
	@echo "make images           the demo and test images into $(IMAGES)"
	@echo "make installer-debs   containerd 1.7/2.1 and oras unpacked into $(DEBS)"
	@echo "make installer-image  the node installer's OCI image, static binaries (docs/installation.md)"
	@echo "make bench            start latency and memory vs runc, one run (report in target/bench/)"
	@echo "make bench-deps       make deps, plus wrk and componentize-py"
	@echo "make soak             churn: SOAK_COUNT (5000) containers, SOAK_PODS (1000) pods, then a leak count (root)"
	@echo "make fuzz             every fuzz target for FUZZ_SECONDS (30) each, nightly + cargo-fuzz (docs/reliability.md)"
	@echo "make fmt | lint       cargo fmt; fmt --check and clippy -D warnings"
	@echo "make clean            remove $(IMAGES)"

# $(call apt-install,PACKAGES[,FLAGS]): installs those of PACKAGES that are
# missing (Debian/Ubuntu, as root), with apt-get's FLAGS.
define apt-install
@missing=""; for p in $(1); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
if [ -n "$$missing" ]; then \
	echo "installing:$$missing"; \
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(2) $$missing; \
fi
endef

# $(call package,NAME,FIELD): FIELD (version, manifest_path) of the package NAME
# in `cargo metadata`: the WIT files wasmtime ships and its CLI of the same
# version are those of the exact wasmtime this workspace builds on.
package = $(shell $(CARGO) metadata --format-version 1 --locked | python3 -c \
	'import json,sys; print(next(p["$(2)"] for p in json.load(sys.stdin)["packages"] if p["name"] == "$(1)"))')

build:
	$(CARGO_BUILD)

release:
	$(CARGO) build --release -p containerd-shim-wasmtime

install: release
	install -D -m 0755 target/release/$(SHIM) $(DESTDIR)$(PREFIX)/bin/$(SHIM)

# Installs what is missing (Debian/Ubuntu, as root).
demo-deps:
	$(call apt-install,$(DEMO_DEPS))

deps:
	$(call apt-install,$(DEPS))
	@command -v kubernetes-validate >/dev/null || python3 -m pip install --quiet kubernetes-validate
	@rustup run nightly rustc -V >/dev/null 2>&1 || rustup toolchain install nightly --profile minimal
	@command -v cargo-fuzz >/dev/null || $(CARGO) install --locked cargo-fuzz
	test/fetch-debs.sh $(DEBS)
	@$(MAKE) --no-print-directory vm-deps

# The cgroup v2 + systemd guest the v2 suites run in (test/vm/): QEMU (TCG),
# kmod (depmod, modprobe) and cpio here; the kernel and busybox-static are
# fetched with `apt-get download` and unpacked into $(VM), never installed.
VM := target/vm
VM_DEPS := qemu-system-x86 kmod cpio

vm-deps:
	$(call apt-install,$(VM_DEPS),--no-install-recommends)
	test/vm/build.sh $(VM)

# --- images: the demo and test programs, as OCI image tarballs -------------
$(WASM_OCI): $(wildcard crates/wasm-image-builder/src/*.rs)
	$(CARGO_BUILD)

$(IMAGES)/%.wasm: images/wasitest/%.c
	@mkdir -p $(IMAGES)
	$(WASM_CC) -o $@ $<

$(IMAGES)/hello.wasm: images/hello/hello.c
	@mkdir -p $(IMAGES)
	$(WASM_CC) -o $@ $<

$(IMAGES)/native-hello: images/native/hello.c
	@mkdir -p $(IMAGES)
	gcc -static -O2 -o $@ $<

# critest's web servers (nginx, httpd, hostnet-nginx) and its setuid
# nonewprivs program, built into busybox
# stand-in images at test time (test/src/critest.rs).
$(IMAGES)/webserver: images/critest/webserver.c
	@mkdir -p $(IMAGES)
	gcc -static -O2 -o $@ $<

$(IMAGES)/nonewprivs: images/critest/nonewprivs.c
	@mkdir -p $(IMAGES)
	gcc -static -O2 -o $@ $<

# The sandbox suite's attackers (test/tests/sandbox/): a wasm guest that tries
# every way out of its container, and a native sidecar that attacks its pod's
# wasm containers through /proc.
$(IMAGES)/escape.wasm: images/escape/escape.c
	@mkdir -p $(IMAGES)
	$(WASM_CC) -o $@ $<

$(IMAGES)/probe: images/native/probe.c
	@mkdir -p $(IMAGES)
	gcc -static -O2 -o $@ $<

$(IMAGES)/pause: images/pause/pause.c
	@mkdir -p $(IMAGES)
	gcc -static -O2 -o $@ $<

$(IMAGES)/pause.tar: $(IMAGES)/pause $(WASM_OCI)
	$(WASM_OCI) image --name localhost/wasmtime-shim/pause:latest --entrypoint /pause --file $<:/pause -o $@

$(IMAGES)/%.wasm: images/wat/%.wat $(WASM_OCI)
	@mkdir -p $(IMAGES)
	$(WASM_OCI) wat $< -o $@

$(IMAGES)/wasitest.component.wasm: $(IMAGES)/wasitest.wasm $(WASM_OCI)
	$(WASM_OCI) componentize $< -o $@

# A module cut short: the header is right, the body is not.
$(IMAGES)/corrupt.wasm: $(IMAGES)/wasitest.wasm
	head -c 64 $< > $@

TEST_WASM := wasitest.wasm wasitest.component.wasm trap.wasm exports.wasm unknown-import.wasm corrupt.wasm gc.wasm net.wasm escape.wasm

$(IMAGES)/wasm-test.tar: $(addprefix $(IMAGES)/,$(TEST_WASM)) $(IMAGES)/native-hello $(IMAGES)/probe images/wasitest/hello.txt images/wasitest/notwasm.txt $(WASM_OCI)
	$(WASM_OCI) image --name localhost/wasmtime-shim/wasm-test:latest \
		--entrypoint /wasitest.wasm --env PATH=/bin \
		$(foreach w,$(TEST_WASM),--file $(IMAGES)/$(w):/$(w)) \
		--file $(IMAGES)/wasitest.wasm:/bin/wasitest-on-path.wasm \
		--file $(IMAGES)/native-hello:/native-hello \
		--file $(IMAGES)/probe:/probe \
		--file images/wasitest/hello.txt:/data/hello.txt \
		--file images/wasitest/notwasm.txt:/notwasm.wasm \
		-o $@

$(IMAGES)/hello.tar: $(IMAGES)/hello.wasm $(WASM_OCI)
	$(WASM_OCI) image --name localhost/wasmtime-shim/hello:latest --entrypoint /hello.wasm \
		--file $<:/hello.wasm -o $@

# The HTTP guest calls wasi:http directly; its WIT is the one wasmtime-wasi-http ships.
WASI_HTTP_WIT = $(dir $(call package,wasmtime-wasi-http,manifest_path))wit

WASI_HTTP_VERSION = $(shell sed -n 's/^package wasi:http@\(.*\);/\1/p' $(WASI_HTTP_WIT)/deps/http.wit)

# A command calling wasi:sockets directly, against the WIT wasmtime-wasi ships
# (its world of imports; the command adapter exports wasi:cli/run).
WASI_WIT = $(dir $(call package,wasmtime-wasi,manifest_path))src/p2/wit

$(IMAGES)/net.core.wasm: images/net/net.c
	@mkdir -p $(IMAGES)
	$(WASM_CC) -o $@ $<

$(IMAGES)/net.wasm: $(IMAGES)/net.core.wasm $(WASM_OCI)
	$(WASM_OCI) componentize $< --wit $(WASI_WIT) \
		--world wasi:cli/imports@$$(sed -n 's/^package wasi:cli@\(.*\);/\1/p' $(WASI_WIT)/deps/cli.wit) \
		--adapter command -o $@

$(IMAGES)/hello-http.core.wasm: images/http/hello-http.c
	@mkdir -p $(IMAGES)
	$(WASM_CC) -mexec-model=reactor -o $@ $<

$(IMAGES)/hello-http.wasm: $(IMAGES)/hello-http.core.wasm $(WASM_OCI)
	$(WASM_OCI) componentize $< --wit $(WASI_HTTP_WIT) --world wasi:http/proxy --adapter proxy -o $@

$(IMAGES)/hello-http.tar: $(IMAGES)/hello-http.wasm $(WASM_OCI)
	$(WASM_OCI) image --name localhost/wasmtime-shim/hello-http:latest --entrypoint /hello-http.wasm \
		--file $<:/hello-http.wasm -o $@

# The benchmark's large component: CPython inside (~18 MB), by componentize-py.
$(IMAGES)/python-http.wasm: images/python-http/app.py
	@mkdir -p $(IMAGES)
	cd images/python-http && env -u PYTHONDONTWRITEBYTECODE componentize-py -d $(WASI_HTTP_WIT) \
		-w wasi:http/proxy@$(WASI_HTTP_VERSION) componentize app -o $(CURDIR)/$@

$(IMAGES)/python-http.tar: $(IMAGES)/python-http.wasm $(WASM_OCI)
	$(WASM_OCI) image --name localhost/wasmtime-shim/python-http:latest --entrypoint /python-http.wasm \
		--file $<:/python-http.wasm -o $@

# The same program as an image of platform wasi/wasm (what `docker buildx
# --platform wasi/wasm` publishes): containerd imports it only when asked for
# that platform (docs/compatibility.md).
$(IMAGES)/hello-wasi.tar: $(IMAGES)/hello.wasm $(WASM_OCI)
	$(WASM_OCI) image --platform wasi/wasm --name localhost/wasmtime-shim/hello-wasi:latest \
		--entrypoint /hello.wasm --file $<:/hello.wasm -o $@

$(IMAGES)/hello-artifact.tar: $(IMAGES)/hello.wasm $(WASM_OCI)
	$(WASM_OCI) artifact --name localhost/wasmtime-shim/hello-artifact:latest --wasm $< -o $@

images: $(IMAGES)/wasm-test.tar $(IMAGES)/hello.tar $(IMAGES)/hello-wasi.tar $(IMAGES)/hello-artifact.tar $(IMAGES)/pause.tar $(IMAGES)/hello-http.tar $(IMAGES)/webserver $(IMAGES)/nonewprivs

# --- the node installer (crates/node-installer, deploy/daemonset.yaml) -------
# Its tests start containerd 1.7 and 2.1 from Debian's packages, unpacked here.
installer-debs:
	test/fetch-debs.sh $(DEBS)

# The installer image: the installer and the shim, both static (the image has
# no libc), in their own target dir so they do not rebuild the debug tree.
INSTALLER_IMAGE ?= localhost/wasmtime-shim/installer:latest
STATIC_TARGET := x86_64-unknown-linux-gnu
STATIC_BIN := target/static/$(STATIC_TARGET)/release
INSTALLER_BINS := $(STATIC_BIN)/containerd-wasmtime-installer $(STATIC_BIN)/$(SHIM)

installer-image: $(WASM_OCI)
	RUSTFLAGS='-C target-feature=+crt-static' CARGO_TARGET_DIR=target/static \
		LIBSECCOMP_LINK_TYPE=static LIBSECCOMP_LIB_PATH=$(dir $(shell gcc -print-file-name=libseccomp.a)) \
		$(CARGO) build --release --target $(STATIC_TARGET) -p node-installer -p containerd-shim-wasmtime
	@for b in $(INSTALLER_BINS); do \
		if readelf -d $$b | grep -q NEEDED; then echo "$$b is not static:"; readelf -d $$b | grep NEEDED; exit 1; fi; \
	done; echo "static: $(notdir $(INSTALLER_BINS))"
	@mkdir -p $(IMAGES)
	$(WASM_OCI) image --name $(INSTALLER_IMAGE) --entrypoint /containerd-wasmtime-installer \
		--file $(STATIC_BIN)/containerd-wasmtime-installer:/containerd-wasmtime-installer \
		--file $(STATIC_BIN)/$(SHIM):/$(SHIM) -o $(IMAGES)/installer.tar
	@echo "$(IMAGES)/installer.tar: $(INSTALLER_IMAGE)"

# --- the README's commands ---------------------------------------------------
# The demo: its packages, DEMO_BUILD (also wasm-oci's recipe here, when hello.tar
# needs it first), hello.tar, and the runner, run as built (`cargo run -p
# shim-tests` would resolve other features and compile again).
demo: CARGO_BUILD = $(DEMO_BUILD)
demo: demo-deps $(IMAGES)/hello.tar
	$(DEMO_BUILD)
	target/debug/demo

# Everyday work, no root and no containerd: formatting, clippy, every crate's
# unit tests and the installer's fake-node tests (tests/flavours.rs). Unit
# tests that need root are #[ignore]d; unit-test (make test) runs them. Needs
# the demo's packages for the build (make demo-deps, once, as root).
check: lint
	$(CARGO) test --workspace --lib --bins --test flavours

# All select the whole workspace (as `build` does), so cargo resolves the same
# features for every run and compiles wasmtime once.
unit-test:
	$(CARGO) test --workspace --lib --bins -- --include-ignored

e2e-test: build images installer-debs
	@echo "== e2e tests against containerd $$(containerd --version | cut -d' ' -f3) (the machine's)"
	$(CARGO) test --workspace --test '*' --no-fail-fast -- --test-threads=4

# The shim-tests suites once per other containerd version; the harness runs the
# containerd, ctr and runc shim of CONTAINERD_DIR. Every version runs, then
# the target fails if any did.
e2e-matrix: build images installer-debs
	@failed=""; for v in $(CONTAINERD_MATRIX); do \
		dir=$(CURDIR)/$(DEBS)/containerd-$$v/usr/bin; \
		echo "== e2e tests against containerd $$($$dir/containerd --version | cut -d' ' -f3) ($$dir)"; \
		CONTAINERD_DIR=$$dir $(CARGO) test -p shim-tests --test '*' --no-fail-fast -- --test-threads=4 \
			|| failed="$$failed $$v"; \
	done; \
	if [ -n "$$failed" ]; then echo "== e2e tests FAILED against containerd:$$failed"; exit 1; fi; \
	echo "== e2e tests passed against containerd $(CONTAINERD_MATRIX)"

# The Kubernetes manifests, checked offline against the Kubernetes schemas.
MANIFESTS := $(shell find deploy -name '*.yaml' ! -name kustomization.yaml)
manifest-test:
	kubernetes-validate --strict $(MANIFESTS)

# The machine's containerd, then the matrix, even when the first fails: the
# output shows every version's results before make fails.
test: deps unit-test manifest-test fuzz
	@status=0; $(MAKE) --no-print-directory e2e-test || status=1; \
	$(MAKE) --no-print-directory e2e-matrix || status=1; exit $$status

# --- cgroup v2 + systemd: the e2e suites in the guest of test/vm/ ---------
# One guest per containerd version and cgroup driver (test/vm/matrix; the
# guest is emulated, ~10x slower than this machine; docs/compatibility.md
# has a run's numbers). test-v2 is what CI runs, chosen to fit its time:
# every pair, every v2 suite on 2.1 with the systemd driver (the default of
# current nodes), and on the other pairs the ctr and CRI suites (with exec
# and capabilities on 2.1 with cgroupfs). test-v2-full runs every suite on
# every pair.
V2_SUITES := leak_checks,ctr,cri,resize,exec,capabilities,churn
V2_CHURN := CHURN_COUNT=20 CHURN_PODS=10
V2_CI := 2.1:systemd machine:systemd:leak_checks,ctr,cri machine:cgroupfs:leak_checks,ctr,cri \
	2.1:cgroupfs:leak_checks,cri,resize,exec,capabilities
V2_FULL := machine:cgroupfs machine:systemd 2.1:cgroupfs 2.1:systemd

test-v2: build images installer-debs vm-deps
	$(V2_CHURN) test/vm/matrix --suites $(V2_SUITES) $(V2_CI)

test-v2-full: build images installer-debs vm-deps
	$(V2_CHURN) test/vm/matrix --suites $(V2_SUITES) $(V2_FULL)

# Numbers, not pass/fail, so not part of `make test`. The harness is a debug
# build; the shim it measures is the release build. The reference `wasmtime
# serve` is the CLI of the same wasmtime version (built once into target/tools).
WASMTIME_VERSION = $(call package,wasmtime,version)
WASMTIME_CLI ?= target/tools/bin/wasmtime

$(WASMTIME_CLI):
	$(CARGO) install --locked --root target/tools wasmtime-cli --version $(WASMTIME_VERSION)

bench-deps: deps
	$(call apt-install,wrk)
	@command -v componentize-py >/dev/null || python3 -m pip install --quiet componentize-py

bench: bench-deps build release images $(IMAGES)/python-http.tar $(WASMTIME_CLI)
	SHIM_DIR=$(CURDIR)/target/release BENCH_WASMTIME=$(abspath $(WASMTIME_CLI)) target/debug/bench

# --- soak: test/tests/churn.rs with large counts; its figures are printed ---
# (one shim per container, one long-lived pod shim, CRI pods; docs/reliability.md).
SOAK_COUNT ?= 5000
SOAK_PODS ?= 1000

soak: build images
	CHURN_COUNT=$(SOAK_COUNT) CHURN_PODS=$(SOAK_PODS) \
		$(CARGO) test -p shim-tests --test churn -- --test-threads=2 --nocapture

# --- fuzzing: fuzz/, a cargo-fuzz crate in a workspace of its own -----------
# Each target for FUZZ_SECONDS from the committed corpus (read only: new inputs
# go to a scratch directory, so the tree stays clean). Every target runs; then
# the target fails if any found a crash (the input is kept in
# fuzz/artifacts/<target>/, which git ignores).
FUZZ_TARGETS := entrypoint oci_spec manifest installer_toml network
FUZZ_SECONDS ?= 30
FUZZ_CARGO ?= cargo +nightly

fuzz:
	$(FUZZ_CARGO) fuzz build
	@scratch=$$(mktemp -d); trap 'rm -rf "$$scratch"' EXIT; failed=""; \
	for t in $(FUZZ_TARGETS); do \
		mkdir -p $$scratch/$$t; dict=""; [ -f fuzz/dict/$$t.dict ] && dict="-dict=fuzz/dict/$$t.dict"; \
		echo "== fuzz $$t for $(FUZZ_SECONDS)s"; \
		$(FUZZ_CARGO) fuzz run $$t $$scratch/$$t fuzz/corpus/$$t -- \
			-max_total_time=$(FUZZ_SECONDS) -print_final_stats=1 $$dict || failed="$$failed $$t"; \
	done; \
	if [ -n "$$failed" ]; then echo "== fuzz: crashes in:$$failed (fuzz/artifacts/)"; exit 1; fi; \
	echo "== fuzz: no crash in $(FUZZ_TARGETS)"

fmt:
	$(CARGO) fmt --all

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

clean:
	rm -rf $(IMAGES)

# Kubernetes' CRI conformance suite (critest, every spec) for handler runc and
# then wasmtime on one private containerd; fails unless every spec that passes
# for runc passes for wasmtime (test/tests/critest.rs). critest comes from
# CRITEST, ../shared/tools/cri-tools or PATH; the test says what is missing.
CONFORMANCE_TIMEOUT ?= 1500
conformance: build images
	CRITEST_FOCUS= CRITEST_TIMEOUT=$(CONFORMANCE_TIMEOUT) \
		$(CARGO) test -p shim-tests --test critest -- --nocapture
