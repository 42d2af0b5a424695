#!/usr/bin/env bash
# make rpm: stage `make install-files` with the RPM layout (module in
# /usr/lib64/security), and build the package with rpmbuild from
# packaging/rpm/crm2fa.spec.in. Env: see package-lib.sh.
# Prints the path of the .rpm.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/package-lib.sh"
ARCH=$(uname -m)
WORK=$PKG_DIR/rpm
STAGE=$WORK/stage

rm -rf "$WORK"
mkdir -p "$WORK/top"
stage "$STAGE" PAMDIR=/usr/lib64/security ZSHDIR=/usr/share/zsh/site-functions
# The pam-auth-update profile is Debian's; RPM systems use authselect.
rm -rf "$STAGE/usr/share/pam-configs"
install -D -m 0644 packaging/deb/copyright "$STAGE/usr/share/licenses/crm2fa/LICENSE"

with_pam_lines packaging/rpm/crm2fa.spec.in \
  | sed -e "s|@VERSION@|$VERSION|" -e "s|@ARCH@|$ARCH|" -e "s|@STAGE@|$STAGE|" >"$WORK/crm2fa.spec"
# The files are staged ready (stripped, man pages compressed): no brp scripts.
rpmbuild -bb --quiet --define "_topdir $WORK/top" --define "_build_id_links none" \
  --define "__os_install_post %{nil}" \
  "$WORK/crm2fa.spec" >/dev/null
RPM=$PKG_DIR/crm2fa-$VERSION-1.$ARCH.rpm
mv "$WORK/top/RPMS/$ARCH/crm2fa-$VERSION-1.$ARCH.rpm" "$RPM"
echo "$RPM"
