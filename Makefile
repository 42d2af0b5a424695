# crm2fa — build, test, demo and package.
# `make demo` and `make test` install the Debian packages they need (as root).

CARGO ?= cargo
SHELL := /bin/bash

.PHONY: all deps deps-demo build release test lint deps-check deny demo bench clean docs install install-files uninstall deb rpm fuzz

all: build

deps:
	bash scripts/install-deps.sh

# What building and the demo need, and no more (no sshd, no PostgreSQL).
deps-demo:
	bash scripts/install-deps.sh --demo

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

demo: deps-demo
	$(CARGO) build --workspace
	bash scripts/demo.sh

# ---- install on a host without packages --------------------------------------
# make install [PREFIX=/usr] [DESTDIR=...]; the packages are built from it.
# PREFIX moves everything but the PAM module and profile (PAMDIR,
# PAMCONFIGSDIR), the configuration and the store.
PREFIX ?= /usr
DESTDIR ?=
SYSCONFDIR ?= /etc
LOCALSTATEDIR ?= /var
PROFILE ?= release
TARGET_DIR ?= $(or $(CARGO_TARGET_DIR),target)
MULTIARCH := $(shell dpkg-architecture -qDEB_HOST_MULTIARCH 2>/dev/null)
# Debian keeps PAM modules in the multiarch directory, RPM systems in lib64.
# Not under PREFIX: libpam loads modules from here only, and pam-auth-update
# reads profiles from /usr/share/pam-configs only (one under /usr/local
# would be a module no login finds and a profile that enables nothing).
PAMDIR ?= $(if $(MULTIARCH),/usr/lib/$(MULTIARCH)/security,/usr/lib64/security)
PAMCONFIGSDIR ?= /usr/share/pam-configs
SBINDIR ?= $(PREFIX)/sbin
# The sending program (SMTP, HTTP): run by the module, not by people.
LIBEXECDIR ?= $(PREFIX)/libexec
# The PostgreSQL client ([store] client_library): a plugin the module
# dlopens, not a library on the linker's path.
PGLIBDIR ?= $(PREFIX)/lib/crm2fa
# systemd's units: crm2fad.service.
UNITDIR ?= $(PREFIX)/lib/systemd/system
DATADIR ?= $(PREFIX)/share
MANDIR ?= $(DATADIR)/man
ZSHDIR ?= $(if $(MULTIARCH),$(DATADIR)/zsh/vendor-completions,$(DATADIR)/zsh/site-functions)
BIN := $(TARGET_DIR)/$(PROFILE)
DOCS ?= $(TARGET_DIR)/docs

# Man pages and completions, made from the CLI's definitions at build time.
docs:
	$(BIN)/crm2fa-docs $(DOCS)

install: release
	$(MAKE) install-files PROFILE=release

# Copy what is built (no build): the module, the CLI, the login service and
# its systemd unit, the sending program, the PostgreSQL client the module
# loads for [store] url, man pages,
# completions, the pam-auth-update profile, the tmpfiles entry,
# /var/lib/crm2fa (0700), and the default configuration (0600) unless one is
# there already; its [delivery] program and [store] client_library name
# where the sending program and the client went.
install-files: docs
	install -D -m 0644 $(BIN)/libpam_crm2fa.so $(DESTDIR)$(PAMDIR)/pam_crm2fa.so
	install -D -m 0755 $(BIN)/crm2fa-admin $(DESTDIR)$(SBINDIR)/crm2fa-admin
	install -D -m 0755 $(BIN)/crm2fad $(DESTDIR)$(SBINDIR)/crm2fad
	install -d -m 0755 $(DESTDIR)$(UNITDIR)
	sed -e 's|^ExecStart=/usr/sbin/crm2fad$$|ExecStart=$(SBINDIR)/crm2fad|' \
	  packaging/systemd/crm2fad.service >$(DESTDIR)$(UNITDIR)/crm2fad.service
	chmod 0644 $(DESTDIR)$(UNITDIR)/crm2fad.service
	install -D -m 0755 $(BIN)/crm2fa-send $(DESTDIR)$(LIBEXECDIR)/crm2fa/crm2fa-send
	install -d -m 0755 $(DESTDIR)$(PGLIBDIR)
	install -m 0644 $(BIN)/libcrm2fa_pg.so $(DESTDIR)$(PGLIBDIR)/libcrm2fa_pg.so
	install -d -m 0755 $(DESTDIR)$(MANDIR)/man5 $(DESTDIR)$(MANDIR)/man8
	install -m 0644 packaging/man/crm2fa.toml.5 $(DESTDIR)$(MANDIR)/man5/
	install -m 0644 packaging/man/pam_crm2fa.8 packaging/man/crm2fad.8 $(DOCS)/man8/*.8 $(DESTDIR)$(MANDIR)/man8/
	install -D -m 0644 $(DOCS)/completions/crm2fa-admin.bash $(DESTDIR)$(DATADIR)/bash-completion/completions/crm2fa-admin
	install -D -m 0644 $(DOCS)/completions/_crm2fa-admin $(DESTDIR)$(ZSHDIR)/_crm2fa-admin
	install -D -m 0644 $(DOCS)/completions/crm2fa-admin.fish $(DESTDIR)$(DATADIR)/fish/vendor_completions.d/crm2fa-admin.fish
	install -D -m 0644 packaging/pam-configs/crm2fa $(DESTDIR)$(PAMCONFIGSDIR)/crm2fa
	install -D -m 0644 packaging/tmpfiles/crm2fa.conf $(DESTDIR)$(PREFIX)/lib/tmpfiles.d/crm2fa.conf
	install -d -m 0700 $(DESTDIR)$(LOCALSTATEDIR)/lib/crm2fa
	install -d -m 0755 $(DESTDIR)$(SYSCONFDIR)/crm2fa
	[ -e $(DESTDIR)$(SYSCONFDIR)/crm2fa/crm2fa.toml ] || { \
	  (umask 077 && sed -e 's|^program = "/usr/libexec/crm2fa/crm2fa-send"|program = "$(LIBEXECDIR)/crm2fa/crm2fa-send"|' \
	    -e 's|^client_library = "/usr/lib/crm2fa/libcrm2fa_pg.so"|client_library = "$(PGLIBDIR)/libcrm2fa_pg.so"|' \
	    packaging/crm2fa.toml >$(DESTDIR)$(SYSCONFDIR)/crm2fa/crm2fa.toml.new) && \
	  chmod 0600 $(DESTDIR)$(SYSCONFDIR)/crm2fa/crm2fa.toml.new && \
	  mv $(DESTDIR)$(SYSCONFDIR)/crm2fa/crm2fa.toml.new $(DESTDIR)$(SYSCONFDIR)/crm2fa/crm2fa.toml; }

# Packages, into the target directory (built from install-files).
deb: release
	PROFILE=release bash scripts/build-deb.sh

rpm: release
	PROFILE=release bash scripts/build-rpm.sh

# Remove what install put there, but never the configuration, the host key
# or the store: they hold the users' secrets.
uninstall:
	@. packaging/pam-lines.sh && crm2fa_refuse_removal_while_named "$(DESTDIR)/etc/pam.d"
	rm -f $(DESTDIR)$(PAMDIR)/pam_crm2fa.so $(DESTDIR)$(SBINDIR)/crm2fa-admin
	rm -f $(DESTDIR)$(SBINDIR)/crm2fad $(DESTDIR)$(UNITDIR)/crm2fad.service
	rm -f $(DESTDIR)$(LIBEXECDIR)/crm2fa/crm2fa-send
	rmdir $(DESTDIR)$(LIBEXECDIR)/crm2fa 2>/dev/null || true
	rm -f $(DESTDIR)$(PGLIBDIR)/libcrm2fa_pg.so
	rmdir $(DESTDIR)$(PGLIBDIR) 2>/dev/null || true
	rm -f $(DESTDIR)$(MANDIR)/man5/crm2fa.toml.5 $(DESTDIR)$(MANDIR)/man8/pam_crm2fa.8 \
	      $(DESTDIR)$(MANDIR)/man8/crm2fad.8 \
	      $(DESTDIR)$(MANDIR)/man8/crm2fa-admin.8 $(DESTDIR)$(MANDIR)/man8/crm2fa-admin-*.8
	rm -f $(DESTDIR)$(DATADIR)/bash-completion/completions/crm2fa-admin \
	      $(DESTDIR)$(ZSHDIR)/_crm2fa-admin \
	      $(DESTDIR)$(DATADIR)/fish/vendor_completions.d/crm2fa-admin.fish
	rm -f $(DESTDIR)$(PAMCONFIGSDIR)/crm2fa $(DESTDIR)$(PREFIX)/lib/tmpfiles.d/crm2fa.conf
	@echo "uninstall: kept $(SYSCONFDIR)/crm2fa and $(LOCALSTATEDIR)/lib/crm2fa (configuration, key, store)"

# Benchmarks print tables; they are never part of `make test`.
bench: deps
	$(CARGO) bench -p crm2fa-common --bench backup_codes
	bash benches/bench.sh

clean:
	$(CARGO) clean
	rm -rf demo-sandbox

# Fuzz the parsers of what people and files hand the module (codes typed at
# the prompt, the configuration, the module's arguments): FUZZ_SECONDS for
# each target. Never part of `make test`. cargo-fuzz needs nightly options,
# which RUSTC_BOOTSTRAP=1 enables on the stable toolchain. Crashes are kept
# in fuzz/artifacts/TARGET/; replay one with
# `RUSTC_BOOTSTRAP=1 cargo fuzz run TARGET fuzz/artifacts/TARGET/crash-…`.
FUZZ_SECONDS ?= 30
FUZZ_TARGETS ?= code config module_args

fuzz:
	$(CARGO) fuzz --version >/dev/null 2>&1 || $(CARGO) install cargo-fuzz --locked
	mkdir -p fuzz/corpus/config && cp packaging/crm2fa.toml fuzz/corpus/config/shipped.toml
	set -e; for t in $(FUZZ_TARGETS); do \
	    echo "== fuzz $$t for $(FUZZ_SECONDS) s"; \
	    RUSTC_BOOTSTRAP=1 $(CARGO) fuzz run $$t -- -max_total_time=$(FUZZ_SECONDS); \
	done
