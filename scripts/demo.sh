#!/usr/bin/env bash
# crm2fa demo: a real login (password, then a TOTP code) through real libpam,
# sandboxed with pam_wrapper in ./demo-sandbox. Nothing outside the sandbox is
# touched (no /etc/pam.d change, no system user).
#
#   bash scripts/demo.sh            (or: make demo)
#
# On a terminal you scan the QR code with your authenticator app and type the
# password and the code yourself. Without a terminal (CI, `make demo </dev/null`)
# the script types them for you, computing the code with oathtool.
# Uses the debug build in ${CARGO_TARGET_DIR:-target}/debug (DEMO_BUILD=0: do
# not build first); DEMO_SANDBOX names another sandbox directory.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# cargo resolves a relative CARGO_TARGET_DIR against the current directory.
TARGET=$(realpath -m "${CARGO_TARGET_DIR:-$ROOT/target}")
[ -z "${CARGO_TARGET_DIR:-}" ] || export CARGO_TARGET_DIR="$TARGET"
cd "$ROOT"

ADMIN="$TARGET/debug/crm2fa-admin"
MODULE="$TARGET/debug/libpam_crm2fa.so"
MATRIX=$(ls /usr/lib/*/pam_wrapper/pam_matrix.so 2>/dev/null | head -n 1)
SANDBOX=$(realpath -m "${DEMO_SANDBOX:-$ROOT/demo-sandbox}")
CFG="$SANDBOX/crm2fa.toml"
SERVICE=crm2fa-demo
USER_NAME=demo
PASSWORD=demo

if [ -t 0 ] && [ -t 1 ]; then INTERACTIVE=1; else INTERACTIVE=0; fi
if [ -t 1 ]; then B=$'\e[1m' G=$'\e[32m' R=$'\e[31m' N=$'\e[0m'; else B='' G='' R='' N=''; fi

step() { printf '\n%s==> %s%s\n' "$B" "$*" "$N"; }
die() { printf '%sdemo: %s%s\n' "$R" "$*" "$N" >&2; exit 1; }

# --- prerequisites ------------------------------------------------------------
missing=()
for cmd in pamtester oathtool expect python3; do
  command -v "$cmd" >/dev/null || missing+=("$cmd")
done
[ -e "$MATRIX" ] || missing+=(libpam-wrapper)
# (not `ldconfig -p | grep -q`: under pipefail, grep quitting early fails the pipe)
grep -q libnss_wrapper.so <(ldconfig -p) || missing+=(libnss-wrapper)
[ ${#missing[@]} -eq 0 ] || die "missing: ${missing[*]} (run: bash scripts/install-deps.sh, or make demo)"
[ "$(id -u)" -eq 0 ] || die "run as root: the config and store must be owned by root"
if [ "${DEMO_BUILD:-1}" = 1 ] && command -v cargo >/dev/null; then
  cargo build --workspace --quiet || die "cargo build --workspace failed"
fi
[ -x "$ADMIN" ] || die "no $ADMIN (cargo build --workspace)"
[ -f "$MODULE" ] || die "no $MODULE (cargo build --workspace)"
# The demo user is an account in nss_wrapper's files (crm2fa looks every
# user up through NSS), so nothing is added to /etc/passwd.
export NSS_WRAPPER_PASSWD="$SANDBOX/passwd" NSS_WRAPPER_GROUP="$SANDBOX/group"
admin() { LD_PRELOAD=libnss_wrapper.so "$ADMIN" --config "$CFG" "$@"; }
# Half-block QR (compact, solid, scans best) on a UTF-8 locale; `##` cells
# otherwise (bigger, any locale). Override with DEMO_QR=unicode|ascii.
if [ -z "${DEMO_QR:-}" ]; then
  case "$(locale charmap 2>/dev/null)" in UTF-8 | utf8) DEMO_QR=unicode ;; *) DEMO_QR=ascii ;; esac
fi

# --- sandbox ------------------------------------------------------------------
printf '%scrm2fa demo%s: a real PAM login (password + authenticator code), sandboxed in demo-sandbox/\n' "$B" "$N"
rm -rf "$SANDBOX"
mkdir -p "$SANDBOX/pam.d"
chmod 700 "$SANDBOX"
(
  umask 077
  cat >"$CFG" <<EOF
# crm2fa demo config (paths are relative to this file)
[store]
path = "crm2fa.db"
key_file = "secret.key"

[totp]
issuer = "crm2fa-demo"

[policy]
enforce = "opt-in"
EOF
  # pam_matrix's password database: user:password:service
  echo "$USER_NAME:$PASSWORD:$SERVICE" >"$SANDBOX/passdb"
)
{ cat /etc/passwd; echo "$USER_NAME:x:20000:20000:crm2fa demo:$SANDBOX:/bin/sh"; } >"$NSS_WRAPPER_PASSWD"
{ cat /etc/group; echo "$USER_NAME:x:20000:"; } >"$NSS_WRAPPER_GROUP"
cat >"$SANDBOX/pam.d/$SERVICE" <<EOF
auth     requisite  $MATRIX passdb=$SANDBOX/passdb
auth     required   $MODULE config=$CFG qr=$DEMO_QR
account  required   pam_permit.so
EOF
# Any other service is denied (and pam_wrapper stops warning about "other").
printf 'auth required pam_deny.so\naccount required pam_deny.so\n' >"$SANDBOX/pam.d/other"
admin init >/dev/null || die "crm2fa-admin init failed"

pam() { LD_PRELOAD="libpam_wrapper.so libnss_wrapper.so" PAM_WRAPPER=1 PAM_WRAPPER_SERVICE_DIR="$SANDBOX/pam.d" "$@"; }
LOGIN_CMD="LD_PRELOAD='libpam_wrapper.so libnss_wrapper.so' PAM_WRAPPER=1 PAM_WRAPPER_SERVICE_DIR=$SANDBOX/pam.d NSS_WRAPPER_PASSWD=$SANDBOX/passwd NSS_WRAPPER_GROUP=$SANDBOX/group pamtester $SERVICE $USER_NAME authenticate"

echo "PAM service '$SERVICE': pam_matrix checks the password, then pam_crm2fa asks for the code."
echo "User '$USER_NAME', password '$PASSWORD'."

# --- enrol ----------------------------------------------------------------------
if [ "$INTERACTIVE" = 1 ]; then
  step "1/2 Enrol '$USER_NAME': scan the QR code with your phone, then type the code it shows"
  echo "(No phone at hand? In another terminal: oathtool --totp -b <the manual key below>)"
  if ! admin enroll "$USER_NAME" --qr "$DEMO_QR"; then
    echo "Enrolment not confirmed: it stays pending, and the first login with a valid code activates it."
  fi

  step "2/2 Log in as '$USER_NAME' (a real PAM login through pamtester)"
  echo "Type the password '$PASSWORD', then a code from your app. Each code works only once:"
  echo "if you just used it to confirm, wait for the next one."
  set +e
  pam pamtester "$SERVICE" "$USER_NAME" authenticate
  rc=$?
  set -e
else
  step "1/2 Enrol '$USER_NAME' (no terminal: the enrolment stays pending until the first login)"
  out=$(admin enroll "$USER_NAME" --qr "$DEMO_QR" </dev/null 2>&1) || { printf '%s\n' "$out"; die "crm2fa-admin enroll failed"; }
  printf '%s\n' "$out"
  # One enrolment: the code below comes from the very secret shown above (the
  # otpauth URI), so what you see is what is used.
  uri=$(printf '%s\n' "$out" | grep -o 'otpauth://totp/[^[:space:]]*' | head -n1 || true)
  [ -n "$uri" ] || die "no otpauth:// URI in the enroll output"
  secret=$(python3 -c 'import sys, urllib.parse as u; print(u.parse_qs(u.urlsplit(sys.argv[1]).query)["secret"][0])' "$uri") \
    || die "no secret in $uri"

  step "2/2 Log in as '$USER_NAME' (a real PAM login through pamtester)"
  code=$(oathtool --totp -b "$secret")
  echo "typing: $PASSWORD / $code   (code from: oathtool --totp -b $secret)"
  echo
  set +e
  DEMO_SERVICE=$SERVICE DEMO_USER=$USER_NAME DEMO_PASSWORD=$PASSWORD DEMO_CODE=$code \
    PAM_WRAPPER_SERVICE_DIR="$SANDBOX/pam.d" \
    expect -c '
    log_user 1
    set timeout 30
    set env(LD_PRELOAD) "libpam_wrapper.so libnss_wrapper.so"
    set env(PAM_WRAPPER) 1
    spawn -noecho pamtester $env(DEMO_SERVICE) $env(DEMO_USER) authenticate
    set code_sent 0
    expect {
      -ex "Password: " { send_user "$env(DEMO_PASSWORD)"; send "$env(DEMO_PASSWORD)\r"; exp_continue }
      -ex "Verification code: " {
        # Type the code once; answer any further prompt with an empty line (the
        # login then fails, as it should).
        if {$code_sent} { send "\r" } else { send_user "$env(DEMO_CODE)"; send "$env(DEMO_CODE)\r"; set code_sent 1 }
        exp_continue
      }
      -re {Press Enter[^\r\n]*: $} { send "\r"; exp_continue }
      timeout { send_user "\ndemo: no answer from pamtester within 30s\n"; exit 124 }
      eof
    }
    lassign [wait] pid spawn_id os_error value
    exit $value
  ' | tr -d '\r'
  rc=${PIPESTATUS[0]}
  set -e
fi

# --- result ---------------------------------------------------------------------
echo
if [ "$rc" -eq 0 ]; then
  printf '%sLogin succeeded%s: password and code accepted by pam_crm2fa.\n' "$G" "$N"
else
  printf '%sLogin failed%s (pamtester exit %s).\n' "$R" "$N" "$rc"
fi
echo
state=$(admin --json status "$USER_NAME" 2>/dev/null | python3 -c '
import json, sys
v = json.load(sys.stdin)
print("%s is %s, %s backup codes left%s" % (v["user"], v["state"], v["backup_codes_left"], ", locked" if v["locked"] else ""))' 2>/dev/null || echo "?")
echo "Status:   $state"
echo "          (LD_PRELOAD=libnss_wrapper.so NSS_WRAPPER_PASSWD=$SANDBOX/passwd NSS_WRAPPER_GROUP=$SANDBOX/group $ADMIN --config $CFG status $USER_NAME)"
echo "Sandbox:  $SANDBOX (config, key, store, PAM service, passdb)"
echo "Again:    $LOGIN_CMD"
echo "Audit:    $ADMIN --config $CFG audit"
echo "Clean up: rm -rf $SANDBOX   (make clean also does it)"
exit "$rc"
