#!/usr/bin/env bash
# make deb: stage `make install-files` into a directory, add the Debian
# metadata of packaging/deb, and build the package with dpkg-deb.
# Env: see package-lib.sh.
# Prints the path of the .deb.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/package-lib.sh"
ARCH=$(dpkg --print-architecture)
WORK=$PKG_DIR/deb
STAGE=$WORK/crm2fa_${VERSION}_${ARCH}
DEB=$PKG_DIR/crm2fa_${VERSION}_${ARCH}.deb

stage "$STAGE"
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
for s in postinst postrm; do
  install -m 0755 "packaging/deb/$s" "$STAGE/DEBIAN/$s"
done
with_pam_lines packaging/deb/prerm.in >"$STAGE/DEBIAN/prerm"
chmod 0755 "$STAGE/DEBIAN/prerm"
(cd "$STAGE" && find . -path ./DEBIAN -prune -o -type f -printf '%P\0' | sort -z \
  | xargs -0 md5sum) >"$STAGE/DEBIAN/md5sums"
chmod 0644 "$STAGE"/DEBIAN/{control,conffiles,md5sums}

# A test build (not release) is compressed lightly: same files, quicker.
level=6
[ "$PROFILE" = release ] || level=1
dpkg-deb --root-owner-group -Zxz -z"$level" --build "$STAGE" "$DEB" >/dev/null
echo "$DEB"
