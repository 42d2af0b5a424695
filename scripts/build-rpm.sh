#!/usr/bin/env bash
# make rpm: stage `make install-files` with the RPM layout (module in
# /usr/lib64/security), and build the package with rpmbuild from
# packaging/rpm/crm2fa.spec.in. Env: PROFILE (release), TARGET_DIR,
# PKG_DIR (where the package and its work files go; TARGET_DIR).
# Prints the path of the .rpm.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
PROFILE=${PROFILE:-release}
TARGET_DIR=$(realpath -m "${TARGET_DIR:-${CARGO_TARGET_DIR:-target}}")
VERSION=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n1)
ARCH=$(uname -m)
PKG_DIR=$(realpath -m "${PKG_DIR:-$TARGET_DIR}")
WORK=$PKG_DIR/rpm
STAGE=$WORK/stage

rm -rf "$WORK"
mkdir -p "$STAGE" "$WORK/top"
make -s install-files PREFIX=/usr DESTDIR="$STAGE" PROFILE="$PROFILE" \
  TARGET_DIR="$TARGET_DIR" DOCS="$WORK/docs" \
  PAMDIR=/usr/lib64/security ZSHDIR=/usr/share/zsh/site-functions >/dev/null
# The pam-auth-update profile is Debian's; RPM systems use authselect.
rm -rf "$STAGE/usr/share/pam-configs"
strip --strip-unneeded --remove-section=.comment --remove-section=.note \
  "$STAGE"/usr/lib64/security/pam_crm2fa.so "$STAGE"/usr/sbin/crm2fa-admin
gzip -9n "$STAGE"/usr/share/man/man*/*
install -D -m 0644 packaging/deb/copyright "$STAGE/usr/share/licenses/crm2fa/LICENSE"

sed -e "s|@VERSION@|$VERSION|" -e "s|@ARCH@|$ARCH|" -e "s|@STAGE@|$STAGE|" \
  packaging/rpm/crm2fa.spec.in >"$WORK/crm2fa.spec"
# The files are staged ready (stripped, man pages compressed): no brp scripts.
rpmbuild -bb --quiet --define "_topdir $WORK/top" --define "_build_id_links none" \
  --define "__os_install_post %{nil}" \
  "$WORK/crm2fa.spec" >/dev/null
RPM=$PKG_DIR/crm2fa-$VERSION-1.$ARCH.rpm
mv "$WORK/top/RPMS/$ARCH/crm2fa-$VERSION-1.$ARCH.rpm" "$RPM"
echo "$RPM"
