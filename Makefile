# jetplug — the two commands: `make demo` and `make test`. Helpers below.
SHELL := /bin/bash
export PATH := $(CURDIR)/.local/venv/bin:$(PATH)
export CARGO_TERM_COLOR ?= never

PLUGIN_DIR := target/plugins/wasm32-wasip2/release
PLUGINS := $(notdir $(patsubst %/Cargo.toml,%,$(wildcard plugins/*/Cargo.toml)))
# Python (plugins/*-py/app.py) and JavaScript (plugins/*-js/plugin.js) plugins.
GUEST_DIR := target/plugins/guest
PY_PLUGINS := $(patsubst plugins/%/app.py,$(GUEST_DIR)/%.wasm,$(wildcard plugins/*-py/app.py))
JS_PLUGINS := $(patsubst plugins/%/plugin.js,$(GUEST_DIR)/%.wasm,$(wildcard plugins/*-js/plugin.js))
# The JS benchmark plugin on the other engine too (QuickJS, componentize-qjs).
JS_PLUGINS += $(GUEST_DIR)/bench-js-quickjs.wasm

.PHONY: demo demo-cluster demo-offline test bench setup plugins rust-plugins build lint fmt clean image

## demo: the AIVO topology end to end (local nats-server + PostgreSQL, sample traffic, summary).
demo: setup plugins build
	scripts/demo.sh

## demo-cluster: the AIVO topology on a local 3-node cluster with two hosts; a node killed mid-run.
demo-cluster: setup plugins build
	scripts/demo-cluster.sh

## demo-offline: a plugin over sample events, no servers.
demo-offline: plugins build
	./target/debug/jetplug run-plugin $(PLUGIN_DIR)/test_noop.wasm --input examples/offline/events.jsonl

## test: install what is missing, build every plugin, run the whole test suite.
test: setup plugins
	cargo test

## bench: `jetplug-bench` (release build, the bench crate) against its own nats-server, cluster and PostgreSQL.
bench: setup plugins
	cargo build --release -p jetplug -p jetplug-bench -p jetplug-tests --bins
	scripts/bench.sh $(BENCH_ARGS)

## image: the container image (release build, FROM scratch, no registry needed) with podman or docker.
image: setup rust-plugins
	cargo build --release -p jetplug
	scripts/image.sh $(IMAGE_ARGS)

## setup: wasm32-wasip2 target, nats-server, PostgreSQL (idempotent).
setup:
	@scripts/setup.sh

## plugins: every plugin in plugins/: Rust crates for wasm32-wasip2, Python and JS examples.
plugins: rust-plugins $(PY_PLUGINS) $(JS_PLUGINS)

rust-plugins:
	cargo build --release --target wasm32-wasip2 --target-dir target/plugins $(addprefix -p ,$(PLUGINS))

$(GUEST_DIR)/%-py.wasm: plugins/%-py/app.py plugins/%-py/plugin.wit sdk/python/jetplug.py wit/world.wit scripts/build-guest.sh
	scripts/build-guest.sh python plugins/$*-py $@

$(GUEST_DIR)/%-js-quickjs.wasm: plugins/%-js/plugin.js plugins/%-js/plugin.wit sdk/js/jetplug.js sdk/js/build.mjs wit/world.wit scripts/build-guest.sh
	scripts/build-guest.sh js-quickjs plugins/$*-js $@

$(GUEST_DIR)/%-js.wasm: plugins/%-js/plugin.js plugins/%-js/plugin.wit sdk/js/jetplug.js sdk/js/build.mjs wit/world.wit scripts/build-guest.sh
	scripts/build-guest.sh js plugins/$*-js $@

## build: the jetplug binary (dev profile; dependencies are optimized), built
## the way `cargo test` builds it (with the test targets), so that `make test`
## and `make demo` share one build instead of compiling wasmtime twice.
build:
	cargo test --no-run --quiet

## lint: formatting and clippy, as CI expects them.
lint:
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings

fmt:
	cargo fmt --all

clean:
	cargo clean
