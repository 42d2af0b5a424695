#!/usr/bin/env bash
# Installs the Debian packages that building, testing, the demo and the
# benchmark need. Safe to run again: it only installs what is missing.
#   install-deps.sh [PACKAGE ...]         all of them (make test, make bench)
#   install-deps.sh --demo [PACKAGE ...]  building and make demo only: no
#                                         server (sshd, PostgreSQL) is installed
set -euo pipefail

demo=(
  build-essential pkg-config
  libpam0g-dev        # PAM headers (the module links against libpam)
  pamtester           # drives a PAM service from tests and the demo
  libpam-wrapper      # sandboxed PAM services (pam_wrapper, pam_matrix)
  libnss-wrapper      # test users and groups without touching /etc
  oathtool            # reference TOTP implementation for tests and the demo
  expect              # scripted terminal sessions in tests and the demo
  python3             # demo and benchmark helpers
)
if [ "${1:-}" = --demo ]; then
  shift
  pkgs=("${demo[@]}" "$@")
else
pkgs=(
  "${demo[@]}"
  sqlite3             # store inspection in tests
  libpam-google-authenticator  # its tool writes the files the import tests read
  man-db groff-base   # man -l renders the man pages in a test
  openssh-server openssh-client  # a real sshd login in a test
  zbar-tools          # decodes the QR code an SSH client shows
  faketime            # a clock stepped backwards, in a fault test
  python3-aiosmtpd    # the SMTP server codes are sent to in tests (tests/fixtures/smtp_sink.py)
  postgresql postgresql-client  # throwaway PostgreSQL servers for the PostgreSQL store's tests (tests/src/pg.rs)
  openssl             # the certificates of the test server that speaks TLS
  lintian             # checks the .deb (make deb, and a packaging test)
  rpm                 # rpmbuild for the .rpm (make rpm, and the packaging tests)
  "$@"
)
fi

missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -ne 0 ]; then
  echo "install-deps: missing packages: ${missing[*]}" >&2
  echo "install-deps: run as root (or: sudo apt-get install -y ${missing[*]})" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update
apt-get install -y --no-install-recommends "${missing[@]}"
