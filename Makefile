# crm2fa — build, test, demo and package.
# `make demo` and `make test` install the Debian packages they need (as root).

CARGO ?= cargo
SHELL := /bin/bash

.PHONY: all deps build release test lint deps-check deny demo bench clean

all: build

deps:
	bash scripts/install-deps.sh

build: deps
	$(CARGO) build --workspace

release: deps
	$(CARGO) build --workspace --release

lint:
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

# The licence, ban and source rules of deny.toml, checked in seconds.
deps-check:
	python3 scripts/check-deps.py

# The same rules with cargo-deny itself (built on first use: several minutes),
# plus the RustSec advisories where GitHub is reachable.
deny:
	command -v cargo-deny >/dev/null || $(CARGO) install cargo-deny --locked
	$(CARGO) deny check

# Every test: unit tests, and end-to-end logins through real libpam
# (pam_wrapper + pam_matrix + pamtester), which use the built module and CLI.
test: deps lint deps-check
	$(CARGO) build --workspace
	@mkdir -p target
	set -o pipefail; $(CARGO) test --workspace 2>&1 | tee target/test.log
	@awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($$i ~ /^passed/) p += $$(i-1); if ($$i ~ /^failed/) f += $$(i-1) } } \
	     END { printf "tests: %d passed, %d failed\n", p, f; exit (p == 0 || f > 0) }' target/test.log

demo: build
	bash scripts/demo.sh

# Benchmarks print tables; they are never part of `make test`.
bench: deps
	$(CARGO) bench -p crm2fa-common --bench backup_codes
	bash benches/bench.sh

clean:
	$(CARGO) clean
	rm -rf demo-sandbox
