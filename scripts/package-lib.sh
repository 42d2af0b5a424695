# Shared by build-deb.sh and build-rpm.sh (sourced): where things are, and
# the staging of what `make install-files` installs, ready for a package.
# Env: PROFILE (release), TARGET_DIR (target or CARGO_TARGET_DIR),
#      PKG_DIR (where the package and its work files go; TARGET_DIR).
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
PROFILE=${PROFILE:-release}
TARGET_DIR=$(realpath -m "${TARGET_DIR:-${CARGO_TARGET_DIR:-target}}")
PKG_DIR=$(realpath -m "${PKG_DIR:-$TARGET_DIR}")
VERSION=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n1)

# stage DIR [MAKE-VARIABLE=VALUE ...]: install into DIR as under /usr, with
# the objects stripped and the man pages compressed, as packages want them.
stage() {
  local dir=$1
  shift
  rm -rf "$dir"
  mkdir -p "$dir"
  make -s install-files PREFIX=/usr DESTDIR="$dir" PROFILE="$PROFILE" \
    TARGET_DIR="$TARGET_DIR" DOCS="$(dirname "$dir")/docs" "$@" >/dev/null
  find "$dir" \( -name pam_crm2fa.so -o -name libcrm2fa_pg.so \
    -o \( -name crm2fa-admin -o -name crm2fa-send -o -name crm2fad \) -type f -perm -u+x \) -print0 \
    | xargs -0 strip --strip-unneeded --remove-section=.comment --remove-section=.note
  gzip -9n "$dir"/usr/share/man/man*/*
}

# with_pam_lines FILE: FILE with its @PAM_LINES@ line replaced by
# packaging/pam-lines.sh, the check both packages run before the module
# goes.
with_pam_lines() {
  sed -e '/^@PAM_LINES@$/ {' -e 'r packaging/pam-lines.sh' -e 'd' -e '}' "$1"
}
