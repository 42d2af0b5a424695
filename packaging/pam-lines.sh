# The check both packages run before the module goes (pasted into the
# .deb's prerm and the .rpm's preun scriptlet when they are built): a PAM
# line whose module cannot be loaded fails every login through its file
# ("Module is unknown"), so while a file in /etc/pam.d still names
# pam_crm2fa the removal is refused and the module stays. No percent sign
# in here: the .rpm's spec would read it as a macro.

# crm2fa_refuse_removal_while_named [DIR]: 0 when no file in DIR (default
# /etc/pam.d) loads pam_crm2fa; otherwise says which files do and what to
# do, on stderr, and returns 1. Comments and the copies nothing loads
# (editor, dpkg, rpm and pam-auth-update backups) do not count.
crm2fa_refuse_removal_while_named() {
    crm2fa_named=
    for crm2fa_file in "${1:-/etc/pam.d}"/*; do
        case $crm2fa_file in
            *~ | *.dpkg-* | *.ucf-* | *.rpmnew | *.rpmsave | *.rpmorig | *.pam-old | *.pam-new) continue ;;
        esac
        [ -f "$crm2fa_file" ] || continue
        if grep -q '^[^#]*pam_crm2fa' "$crm2fa_file"; then
            crm2fa_named="$crm2fa_named${crm2fa_named:+
}  $crm2fa_file"
        fi
    done
    [ -n "$crm2fa_named" ] || return 0
    {
        echo "crm2fa: not removed: these PAM files still load pam_crm2fa.so, and"
        echo "without the module every login through them would fail:"
        echo "$crm2fa_named"
        echo "Take the pam_crm2fa.so line out of each, then remove crm2fa again."
        if command -v authselect >/dev/null 2>&1; then
            crm2fa_current=$(authselect current 2>/dev/null | grep crm2fa) || true
            if [ -n "$crm2fa_current" ]; then
                echo "authselect current uses crm2fa:"
                echo "$crm2fa_current" | sed 's/^/  /'
                echo "Select a profile without crm2fa first, with the features you use: the"
                echo "one it is based on, e.g."
                echo "  authselect select local --force with-silent-lastlog"
            fi
        fi
    } >&2
    return 1
}
