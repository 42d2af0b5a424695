#!/usr/bin/env bash
# make deb: stage `make install-files` into a directory, add the Debian
# metadata of packaging/deb, and build the package with dpkg-deb.
# Env: PROFILE (release), TARGET_DIR (target or CARGO_TARGET_DIR),
#      PKG_DIR (where the package and its work files go; TARGET_DIR).
# Prints the path of the .deb.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
PROFILE=${PROFILE:-release}
TARGET_DIR=$(realpath -m "${TARGET_DIR:-${CARGO_TARGET_DIR:-target}}")
VERSION=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n1)
ARCH=$(dpkg --print-architecture)
PKG_DIR=$(realpath -m "${PKG_DIR:-$TARGET_DIR}")
WORK=$PKG_DIR/deb
STAGE=$WORK/crm2fa_${VERSION}_${ARCH}
DEB=$PKG_DIR/crm2fa_${VERSION}_${ARCH}.deb

rm -rf "$STAGE"
mkdir -p "$STAGE"
make -s install-files PREFIX=/usr DESTDIR="$STAGE" PROFILE="$PROFILE" \
  TARGET_DIR="$TARGET_DIR" DOCS="$WORK/docs" >/dev/null

# Debian wants stripped objects, compressed man pages and a doc directory.
strip --strip-unneeded --remove-section=.comment --remove-section=.note \
  "$STAGE"/usr/lib/*/security/pam_crm2fa.so "$STAGE"/usr/sbin/crm2fa-admin
gzip -9n "$STAGE"/usr/share/man/man*/*
DOC=$STAGE/usr/share/doc/crm2fa
install -d -m 0755 "$DOC"
install -m 0644 packaging/deb/copyright "$DOC/copyright"
sed -e "s/@VERSION@/$VERSION/" -e "s/@DATE@/$(date -R)/" packaging/deb/changelog.in \
  | gzip -9n >"$DOC/changelog.gz"
chmod 0644 "$DOC/changelog.gz"

install -D -m 0644 packaging/deb/lintian-overrides "$STAGE/usr/share/lintian/overrides/crm2fa"

install -d -m 0755 "$STAGE/DEBIAN"
SIZE=$(du -sk --exclude=DEBIAN "$STAGE" | cut -f1)
sed -e "s/@VERSION@/$VERSION/" -e "s/@ARCH@/$ARCH/" -e "s/@SIZE@/$SIZE/" \
  packaging/deb/control.in >"$STAGE/DEBIAN/control"
echo /etc/crm2fa/crm2fa.toml >"$STAGE/DEBIAN/conffiles"
for s in postinst prerm postrm; do
  install -m 0755 "packaging/deb/$s" "$STAGE/DEBIAN/$s"
done
(cd "$STAGE" && find . -path ./DEBIAN -prune -o -type f -printf '%P\0' | sort -z \
  | xargs -0 md5sum) >"$STAGE/DEBIAN/md5sums"
chmod 0644 "$STAGE"/DEBIAN/{control,conffiles,md5sums}

# A test build (not release) is compressed lightly: same files, quicker.
level=6
[ "$PROFILE" = release ] || level=1
dpkg-deb --root-owner-group -Zxz -z"$level" --build "$STAGE" "$DEB" >/dev/null
echo "$DEB"
