#!/usr/bin/env bash
# crm2fa login benchmark, one process per login (as under sshd), through real
# libpam (pamtester + pam_wrapper), for these PAM stacks:
#   baseline  pam_matrix (password) + pam_permit
#   crm2fa    pam_matrix + pam_crm2fa.so (release build), TOTP code, run by
#             crm2fad as the packages install it (the store kept open)
#   crm2fa-alone  the same module with socket=none: the login in the module
#             alone, which opens the store afresh (a host without crm2fad)
#   GA        pam_matrix + pam_google_authenticator.so, TOTP code, with reuse
#             protection and rate limit (DISALLOW_REUSE, RATE_LIMIT 3 30)
#   GA-fast   the same module without reuse protection nor rate limit: its
#             fastest mode, which writes nothing at a login
#   pam_oath  pam_matrix + pam_oath.so (liboath), TOTP code, one users.oath
#             file for all users, as its documentation sets it up
# Three tables:
#   1. per-login wall time (median, p95), logins one at a time, kinds rotated;
#      goal: crm2fa (which refuses a replay durably) no slower than GA-fast.
#   2. throughput: logins per second with 1, 2 and 8 concurrent clients
#      (distinct users, each login its own pamtester process with a fresh
#      valid code), and how many FAILED (a valid code refused); goal: crm2fa
#      none failed and at least the best peer's logins/s.
#   3. counts of one login of each kind, not timed: instructions (valgrind
#      --tool=callgrind) and system calls (strace -f -c), fsyncs among them.
# Only tables are printed: nothing here asserts a timing.
#
# Usage: bash benches/bench.sh        (or: make bench)
# Env:   BENCH_N=200           timed rounds (one login of each kind per round)
#        BENCH_WARMUP=10       untimed rounds first
#        BENCH_TPUT=120        logins per throughput cell (kind x clients);
#                              0 skips the throughput table
#        BENCH_TPUT_ROUNDS=3   each cell runs in this many parts, every kind's
#                              part of a round after another's, so a spell of
#                              load on the machine falls on every kind alike
#        BENCH_CLIENTS="1 2 8" client counts of the throughput table
#        BENCH_PROFILE=1       also count one login of each kind: instructions
#                              (valgrind) and system calls (strace); 0 skips
#        BENCH_DIR=...         scratch directory (default: <target>/bench-sandbox)
#        BENCH_KEEP=1          keep the scratch directory afterwards
#        BENCH_SAMPLES=FILE    also write every login's wall time (s) there, as
#                              JSON: per_login[kind], throughput["kind clients"]
#        BENCH_NSS=files       how the logins find the bench's accounts: files
#                              (default) = glibc's own /etc/passwd lookup, in a
#                              private mount namespace where /etc/passwd and
#                              /etc/group are the bench's (the host's files are
#                              not touched); wrapper = nss_wrapper. files needs
#                              `unshare --mount`; without it, wrapper is used.
#        CARGO_TARGET_DIR      honoured, like cargo does
# Not part of `make test`. Needs root (pam_google_authenticator checks that its
# secret files are owned by the user it runs as; we use user=root).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# cargo resolves a relative CARGO_TARGET_DIR against the current directory.
TARGET=$(realpath -m "${CARGO_TARGET_DIR:-$ROOT/target}")
[ -z "${CARGO_TARGET_DIR:-}" ] || export CARGO_TARGET_DIR="$TARGET"
cd "$ROOT"

GA_MODULE=/lib/x86_64-linux-gnu/security/pam_google_authenticator.so
OATH_MODULE=/lib/x86_64-linux-gnu/security/pam_oath.so
MATRIX=/usr/lib/x86_64-linux-gnu/pam_wrapper/pam_matrix.so

say() { printf 'bench: %s\n' "$*"; }
die() { printf 'bench: error: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "run as root (pam_google_authenticator and the crm2fa store need it)"

# Dependencies: the usual set, plus the modules to compare with
# (libpam-google-authenticator, libpam-oath).
if [ ! -e "$GA_MODULE" ] || [ ! -e "$OATH_MODULE" ] || ! command -v google-authenticator >/dev/null \
   || ! command -v pamtester >/dev/null || ! command -v oathtool >/dev/null || [ ! -e "$MATRIX" ]; then
  say "installing missing packages (libpam-google-authenticator, libpam-oath, pamtester, libpam-wrapper ...)"
  bash scripts/install-deps.sh libpam-google-authenticator libpam-oath
fi
if [ "${BENCH_PROFILE:-1}" = 1 ] && { ! command -v strace >/dev/null || ! command -v valgrind >/dev/null; }; then
  say "installing strace and valgrind for the counts (BENCH_PROFILE=0 skips them)"
  bash scripts/install-deps.sh strace valgrind
fi
BENCH_PG="${BENCH_PG:-1}"
# The PostgreSQL server for crm2fa_pg: the highest version Debian installed
# under /usr/lib/postgresql, run as the postgres user through setpriv.
pg_bin() {
  local d best=""
  for d in /usr/lib/postgresql/*/bin; do
    [ -x "$d/initdb" ] && [ -x "$d/pg_ctl" ] && [ -x "$d/psql" ] || continue
    if [ -z "$best" ] || [ "$(basename "$(dirname "$d")")" -gt "$(basename "$(dirname "$best")")" ] 2>/dev/null; then
      best=$d
    fi
  done
  printf '%s' "$best"
}
if [ "$BENCH_PG" = 1 ] && { [ -z "$(pg_bin)" ] || ! id -u postgres >/dev/null 2>&1 || [ ! -x /usr/bin/setpriv ]; }; then
  say "installing postgresql for the crm2fa_pg kind (BENCH_PG=0 skips it)"
  bash scripts/install-deps.sh postgresql postgresql-client
fi
if [ "$BENCH_PG" = 1 ]; then
  PG_BIN=$(pg_bin)
  [ -n "$PG_BIN" ] || die "no /usr/lib/postgresql/<version>/bin/initdb after install (apt-get install -y postgresql)"
  id -u postgres >/dev/null 2>&1 || die "no system user postgres (the postgresql package creates it)"
  [ -x /usr/bin/setpriv ] || die "/usr/bin/setpriv (util-linux) is missing"
fi
as_pg() {
  (cd / && /usr/bin/setpriv --reuid=postgres --regid=postgres --init-groups -- \
    env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LC_ALL=C "$@")
}
# SQL from stdin as the superuser over the server's unix socket, on database $1;
# the rows unaligned, one a line.
pg_sql() {
  env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LC_ALL=C PGCONNECT_TIMEOUT=10 \
    "$PG_BIN/psql" -X -q -w -A -t -v ON_ERROR_STOP=1 -h "$PG_SOCK" -p "$PG_PORT" -U postgres -d "$1" -f -
}
[ -e "$GA_MODULE" ] || die "$GA_MODULE missing after install (apt-get install -y libpam-google-authenticator)"
[ -e "$OATH_MODULE" ] || die "$OATH_MODULE missing after install (apt-get install -y libpam-oath)"
command -v python3 >/dev/null || die "python3 is needed for the timing driver"

say "building release (cargo build --release --workspace)"
cargo build --release --workspace --quiet

MODULE="$TARGET/release/libpam_crm2fa.so"
ADMIN="$TARGET/release/crm2fa-admin"
DAEMON="$TARGET/release/crm2fad"
[ -f "$MODULE" ] || die "no $MODULE after the build"
[ -x "$ADMIN" ] || die "no $ADMIN after the build"
[ -x "$DAEMON" ] || die "no $DAEMON after the build"

BENCH_DIR=$(realpath -m "${BENCH_DIR:-$TARGET/bench-sandbox}")
rm -rf "$BENCH_DIR"
mkdir -p "$BENCH_DIR"
chmod 700 "$BENCH_DIR"

# Everything the run started is stopped and removed when it ends, however it
# ends: the PostgreSQL server (if any) and, unless BENCH_KEEP=1, the scratch
# directory.
PG_DIR=""
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  if [ -n "$PG_DIR" ]; then
    if [ -f "$PG_DIR/data/postmaster.pid" ]; then
      as_pg "$PG_BIN/pg_ctl" -D "$PG_DIR/data" -m fast -w -t 30 stop >/dev/null 2>&1 \
        || as_pg "$PG_BIN/pg_ctl" -D "$PG_DIR/data" -m immediate -w -t 10 stop >/dev/null 2>&1 \
        || say "could not stop the PostgreSQL server of $PG_DIR"
    fi
    rm -rf "$PG_DIR"
  fi
  [ "${BENCH_KEEP:-0}" = 1 ] || rm -rf "$BENCH_DIR"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- a throwaway PostgreSQL server for the crm2fa_pg kind ---------------------
# Debian's postgresql, as the tests run it (tests/src/pg.rs): a cluster made by
# initdb as the postgres user in its own directory under /tmp, SCRAM-SHA-256
# over TCP on a free 127.0.0.1 port, trust on a unix socket in that directory
# (root and postgres only) to create the roles. Server settings are
# PostgreSQL's defaults: fsync and synchronous_commit stay on, as SQLite
# commits with synchronous=FULL.
PG_URL="" PG_ADMIN_URL="" PG_LOCAL_URL="" PG_LOCAL_ADMIN_URL="" PG_LOCAL_DB=""
if [ "$BENCH_PG" = 1 ]; then
  PG_OWNER=crm2fa_bench_owner PG_HOST_ROLE=crm2fa_bench_host PG_DB=crm2fa_bench
  PG_PORT="" PG_SOCK=""
  PG_DIR=$(mktemp -d /tmp/crm2fa-bench-pg-XXXXXX)
  mkdir "$PG_DIR/s"
  chown -R postgres: "$PG_DIR"
  say "PostgreSQL $(basename "$(dirname "$PG_BIN")"): initdb in $PG_DIR"
  as_pg "$PG_BIN/initdb" -D "$PG_DIR/data" -U postgres --auth-local=trust \
    --auth-host=scram-sha-256 --no-locale --encoding=UTF8 >"$PG_DIR/initdb.log" 2>&1 \
    || { cat "$PG_DIR/initdb.log" >&2; die "initdb failed"; }
  for _ in 1 2 3 4 5 6 7 8 9 10; do
    port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    if as_pg "$PG_BIN/pg_ctl" -D "$PG_DIR/data" -o "-p $port -h 127.0.0.1 -k $PG_DIR/s" \
         -l "$PG_DIR/server.log" -w -t 60 start >/dev/null 2>&1; then
      PG_PORT=$port
      break
    fi
    grep -q -e "could not bind" -e "already in use" "$PG_DIR/server.log" \
      || { tail -n 20 "$PG_DIR/server.log" >&2; die "pg_ctl start failed"; }
  done
  [ -n "$PG_PORT" ] || die "PostgreSQL found no free port in 10 attempts"
  PG_SOCK="$PG_DIR/s"
  # Two roles, as README.md "A PostgreSQL store for a fleet" sets them up: the
  # database's owner (runs `init`) and the hosts' role, which may only read
  # and write rows (its GRANTs come after `init`, in the driver below).
  PG_OWNER_PW=$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')
  PG_HOST_PW=$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')
  pg_sql postgres <<SQL
CREATE ROLE $PG_OWNER LOGIN PASSWORD '$PG_OWNER_PW';
CREATE ROLE $PG_HOST_ROLE LOGIN PASSWORD '$PG_HOST_PW';
ALTER ROLE $PG_HOST_ROLE SET statement_timeout = '5s';
SQL
  # A database the owner role owns, its schema closed to everyone else.
  owned_db() {
    pg_sql postgres <<<"CREATE DATABASE $1 OWNER $PG_OWNER;"
    pg_sql "$1" <<SQL
ALTER SCHEMA public OWNER TO $PG_OWNER;
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
REVOKE TEMPORARY ON DATABASE $1 FROM PUBLIC;
SQL
  }
  owned_db "$PG_DB"
  # The roles' passwords, one a line, 0600 root, as password_file wants.
  (umask 077
   printf '%s\n' "$PG_OWNER_PW" >"$BENCH_DIR/pg-owner.password"
   printf '%s\n' "$PG_HOST_PW" >"$BENCH_DIR/pg-host.password")
  PG_ADMIN_URL="postgres://$PG_OWNER@127.0.0.1:$PG_PORT/$PG_DB?sslmode=disable"
  PG_URL="postgres://$PG_HOST_ROLE@127.0.0.1:$PG_PORT/$PG_DB?sslmode=disable"
  # crm2fa_pg_local: a database of its own (its users log in with their own
  # codes), the same roles, reached by the server's Unix-domain socket, as a
  # host that runs the server itself reaches it. Local logins are trusted
  # there (this throwaway cluster's pg_hba.conf); crm2fad keeps its session
  # open, so how the role logs in is not part of a login's time.
  PG_LOCAL_DB="${PG_DB}_local"
  owned_db "$PG_LOCAL_DB"
  PG_SOCK_URL=$(python3 -c 'import sys, urllib.parse; print(urllib.parse.quote(sys.argv[1], safe=""))' "$PG_SOCK")
  PG_LOCAL_ADMIN_URL="postgres://$PG_OWNER@$PG_SOCK_URL:$PG_PORT/$PG_LOCAL_DB"
  PG_LOCAL_URL="postgres://$PG_HOST_ROLE@$PG_SOCK_URL:$PG_PORT/$PG_LOCAL_DB"
  say "PostgreSQL listens on 127.0.0.1:$PG_PORT (fsync=$(pg_sql postgres <<<'SHOW fsync;'), synchronous_commit=$(pg_sql postgres <<<'SHOW synchronous_commit;'))"
fi

export BENCH_DIR MODULE ADMIN DAEMON GA_MODULE OATH_MODULE MATRIX
export BENCH_N="${BENCH_N:-200}" BENCH_WARMUP="${BENCH_WARMUP:-10}"
export BENCH_TPUT="${BENCH_TPUT:-120}" BENCH_CLIENTS="${BENCH_CLIENTS:-1 2 8}"
export BENCH_PROFILE="${BENCH_PROFILE:-1}" BENCH_CONTACTS="${BENCH_CONTACTS:-1}"
export BENCH_PG PG_URL PG_ADMIN_URL PG_LOCAL_URL PG_LOCAL_ADMIN_URL PG_LOCAL_DB
# The accounts. On a host, a login finds its user through glibc's NSS (the
# files module reading /etc/passwd, or sssd). files: the driver runs in a
# mount namespace of its own, where it binds the bench's passwd and group
# files over /etc/passwd and /etc/group (private: nothing outside sees them,
# and they are gone when the driver ends). nss_wrapper, the fallback, costs
# far more than glibc per lookup (it parses the whole file at every process
# and calls getenv at each line: about 2 M instructions here for 600 users),
# which only the modules that look the user up (crm2fa, GA) pay.
BENCH_NSS="${BENCH_NSS:-files}"
NS=()
case "$BENCH_NSS" in
  files)
    if unshare --mount --propagation private true 2>/dev/null; then
      NS=(unshare --mount --propagation private --)
    else
      say "no private mount namespace here (unshare --mount): the accounts come from nss_wrapper"
      BENCH_NSS=wrapper
    fi ;;
  wrapper) ;;
  *) die "BENCH_NSS must be files or wrapper" ;;
esac
export BENCH_NSS
if [ "$BENCH_PG" = 1 ]; then
  PG_CLIENT_LIB="$TARGET/release/libcrm2fa_pg.so"
  [ -f "$PG_CLIENT_LIB" ] || die "no $PG_CLIENT_LIB after the build"
  export PG_BIN PG_SOCK PG_PORT PG_DB PG_OWNER PG_HOST_ROLE PG_DIR PG_CLIENT_LIB
fi

"${NS[@]}" python3 - <<'PY'
import base64, collections, concurrent.futures, hashlib, hmac, json, math, os, random
import statistics, struct, subprocess, sys, threading, time

D = os.environ["BENCH_DIR"]
MODULE, ADMIN, DAEMON = os.environ["MODULE"], os.environ["ADMIN"], os.environ["DAEMON"]
CONTACTS = os.environ.get("BENCH_CONTACTS", "1") == "1"
GA_MODULE, OATH_MODULE, MATRIX = os.environ["GA_MODULE"], os.environ["OATH_MODULE"], os.environ["MATRIX"]
try:
    N, WARMUP, TPUT = int(os.environ["BENCH_N"]), int(os.environ["BENCH_WARMUP"]), int(os.environ["BENCH_TPUT"])
    CLIENTS = [int(c) for c in os.environ["BENCH_CLIENTS"].split()]
    ROUNDS = int(os.environ.get("BENCH_TPUT_ROUNDS", "3"))
except ValueError as e:
    sys.exit(f"bench: BENCH_N, BENCH_WARMUP, BENCH_TPUT, BENCH_TPUT_ROUNDS and BENCH_CLIENTS must be integers ({e})")
if N < 1 or WARMUP < 0 or TPUT < 0 or not CLIENTS or min(CLIENTS) < 1 or ROUNDS < 1:
    sys.exit("bench: BENCH_N and BENCH_TPUT_ROUNDS must be >= 1, BENCH_WARMUP and BENCH_TPUT >= 0,"
             " BENCH_CLIENTS >= 1 each")
PROFILE = os.environ["BENCH_PROFILE"] == "1"
NSS = os.environ["BENCH_NSS"]  # files | wrapper: see the shell above
# crm2fa_pg: crm2fa with a PostgreSQL store on the local throwaway server.
PG = os.environ.get("BENCH_PG", "1") == "1"
PASSWORD = "pw"
# A pamtester that has not finished by then counts as failed (and is killed):
# far above crm2fa's 10 s busy timeout.
LOGIN_TIMEOUT = 60

def log(msg):
    print(f"bench: {msg}", flush=True)

def run(argv, **kw):
    r = subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL, **kw)
    if r.returncode != 0:
        sys.exit(f"bench: command failed ({r.returncode}): {' '.join(argv)}\n{r.stdout}{r.stderr}")
    return r.stdout

def b32key(secret_b32):
    s = secret_b32.strip().replace(" ", "").upper()
    return base64.b32decode(s + "=" * (-len(s) % 8))

def totp(secret_b32, t, digits=6, period=30):
    mac = hmac.new(b32key(secret_b32), struct.pack(">Q", int(t // period)), hashlib.sha1).digest()
    off = mac[-1] & 0x0F
    return "%0*d" % (digits, (struct.unpack(">I", mac[off:off + 4])[0] & 0x7FFFFFFF) % 10 ** digits)

# Cross-check the driver's TOTP against oathtool once.
probe, now = "JBSWY3DPEHPK3PXP", time.time()
ref = run(["oathtool", "--totp", "-b", "-N", "@%d" % int(now), probe]).strip()
if ref != totp(probe, now):
    sys.exit(f"bench: driver TOTP disagrees with oathtool ({totp(probe, now)} vs {ref})")

# Every login has its own user (all the modules but GA-fast refuse a second
# login in the same time step): the per-login rounds, then a pool for the
# throughput cells, one user per login.
users = [f"b{i:05d}" for i in range(WARMUP + N)]
tput_users = [f"t{i:05d}" for i in range(TPUT * len(CLIENTS))]
# One user per counting tool (strace, callgrind), when counting.
count_users = [f"c{i:05d}" for i in range(2 if PROFILE else 0)]
everyone = users + tput_users + count_users

# --- crm2fa: config, store, one enrolled (active) user per login -----------
def write_config(path, store):
    with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as f:
        f.write(store + '\n[policy]\nenforce = "opt-in"\n')
        # BENCH_CONTACTS=1 (the default): codes by email are configured and every
        # user has an address, as on a host that offers them; the TOTP login then
        # also looks for an outstanding emailed code and offers "email".
        if CONTACTS:
            f.write('\n[email]\nsmtp_host = "127.0.0.1"\n')

cfg = os.path.join(D, "crm2fa.toml")
write_config(cfg, '[store]\npath = "crm2fa.db"\nkey_file = "secret.key"\n')
# crm2fa-alone: its own store (a code may be used once), the same settings.
cfg_alone = os.path.join(D, "crm2fa-alone.toml")
write_config(cfg_alone, '[store]\npath = "crm2fa-alone.db"\nkey_file = "secret.key"\n')
# crm2fa_pg: the same config but for [store], a PostgreSQL database on the
# local server, reached over TCP with SCRAM as a fleet's hosts reach theirs.
# The hosts' config uses a role with row rights only; `init` runs with the
# database owner's (pg-admin.toml). Both share the key file init makes.
if PG:
    def pg_store(url, password_file):
        return (f'[store]\nurl = "{url}"\npassword_file = "{password_file}"\n'
                f'key_file = "pg-secret.key"\nclient_library = "{os.environ["PG_CLIENT_LIB"]}"\n'
                'connect_timeout = "3s"\n')
    cfg_pg = os.path.join(D, "crm2fa-pg.toml")
    cfg_pg_admin = os.path.join(D, "pg-admin.toml")
    write_config(cfg_pg, pg_store(os.environ["PG_URL"], "pg-host.password"))
    write_config(cfg_pg_admin, pg_store(os.environ["PG_ADMIN_URL"], "pg-owner.password"))
    cfg_pg_local = os.path.join(D, "crm2fa-pg-local.toml")
    cfg_pg_local_admin = os.path.join(D, "pg-local-admin.toml")
    write_config(cfg_pg_local, pg_store(os.environ["PG_LOCAL_URL"], "pg-host.password"))
    write_config(cfg_pg_local_admin, pg_store(os.environ["PG_LOCAL_ADMIN_URL"], "pg-owner.password"))
# The accounts: crm2fa looks the user up in NSS (getpwnam), so every user is
# known to NSS, for every stack alike: the host's accounts and the bench's.
passwd_file, group_file = os.path.join(D, "passwd"), os.path.join(D, "group")
with open("/etc/passwd") as f:
    passwd = f.read()
with open("/etc/group") as f:
    group = f.read()
with open(passwd_file, "w") as f:
    f.write(passwd if passwd.endswith("\n") or not passwd else passwd + "\n")
    for i, u in enumerate(everyone):
        f.write(f"{u}:x:{20000 + i}:{20000 + i}:{u}:{D}:/bin/sh\n")
with open(group_file, "w") as f:
    f.write(group if group.endswith("\n") or not group else group + "\n")
    for i, u in enumerate(everyone):
        f.write(f"{u}:x:{20000 + i}:\n")
# The logins get a small environment, as a PAM process under sshd has (the
# wrappers read theirs with getenv, nss_wrapper at every passwd line).
login_env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C.UTF-8"}
if NSS == "files":
    # This process's own mount namespace (the shell started it in one):
    # glibc reads these two files as /etc/passwd and /etc/group.
    for mine, etc in [(passwd_file, "/etc/passwd"), (group_file, "/etc/group")]:
        os.chmod(mine, 0o644)
        run(["mount", "--bind", mine, etc])
    if subprocess.run(["getent", "passwd", everyone[-1]], capture_output=True).returncode != 0:
        sys.exit("bench: the bench's accounts are not found through /etc/passwd after binding it")
    nss_env, preload = dict(os.environ), "libpam_wrapper.so"
else:
    login_env.update(NSS_WRAPPER_PASSWD=passwd_file, NSS_WRAPPER_GROUP=group_file)
    nss_env = dict(os.environ, LD_PRELOAD="libnss_wrapper.so",
                   NSS_WRAPPER_PASSWD=passwd_file, NSS_WRAPPER_GROUP=group_file)
    preload = "libpam_wrapper.so libnss_wrapper.so"

# Syslog, as a host has one (journald, rsyslog). Without any, glibc's
# syslog() (GA, pam_oath) writes each line to /dev/console instead
# (LOG_CONS), about 1 ms a line on a virtual machine's serial console,
# while crm2fa drops its lines: no host logs in like that. So where the
# host has no /dev/log, the driver's mount namespace gets a /dev of its
# own (the host's entries bound into a tmpfs) with a socket at /dev/log
# that a process of the bench reads and discards, as cheap a syslog as
# there is. Nothing outside the namespace sees it.
import atexit
SYSLOG = "the host's /dev/log"
if not os.path.exists("/dev/log"):
    if NSS == "files":
        host_dev = os.path.join(D, "host-dev")
        os.mkdir(host_dev)
        run(["mount", "--rbind", "/dev", host_dev])
        # One shell does it all: between the tmpfs and the binds there is
        # no /dev/null to start a program with.
        subprocess.run(["sh", "-ec", """
            mount -t tmpfs -o mode=755 bench-dev /dev
            for src in "$1"/* "$1"/.[!.]*; do
              [ -e "$src" ] || [ -L "$src" ] || continue
              dst=/dev/${src##*/}
              if [ -L "$src" ]; then ln -s "$(readlink "$src")" "$dst"
              elif [ -d "$src" ]; then mkdir "$dst"; mount --rbind "$src" "$dst"
              else : > "$dst"; mount --bind "$src" "$dst"
              fi
            done""", "sh", host_dev], check=True)
        sink = subprocess.Popen([sys.executable, "-c", (
            "import os, socket, sys\n"
            "s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)\n"
            "s.bind('/dev/log')\n"
            "os.chmod('/dev/log', 0o666)\n"
            "s.settimeout(1)\n"
            # Gone with the driver, however it ends.
            "while os.getppid() == int(sys.argv[1]):\n"
            "    try:\n"
            "        s.recv(65536)\n"
            "    except socket.timeout:\n"
            "        pass\n"), str(os.getpid())], stdin=subprocess.DEVNULL)
        atexit.register(sink.kill)
        for _ in range(500):
            if os.path.exists("/dev/log") or sink.poll() is not None:
                break
            time.sleep(0.01)
        if not os.path.exists("/dev/log"):
            sys.exit("bench: the syslog sink at /dev/log did not start")
        SYSLOG = ("a sink at /dev/log in the bench's mount namespace that discards the lines"
                  " (the host has no syslog)")
    else:
        SYSLOG = ("none (no /dev/log, no mount namespace): GA and pam_oath write each line"
                  " to /dev/console, crm2fa drops them; GA's and pam_oath's times are not a host's")

admin = [ADMIN, "--config", cfg]
run(admin + ["init"], env=nss_env)
admin_alone = [ADMIN, "--config", cfg_alone]
run(admin_alone + ["init"], env=nss_env)

# crm2fad, as the packages start it, in this namespace (it looks the bench's
# accounts up like the logins do), on a socket of the scratch directory;
# stopped when the driver ends, however it ends.
SOCKET = os.path.join(D, "run", "crm2fad.sock")
os.mkdir(os.path.dirname(SOCKET), 0o755)
daemon = subprocess.Popen([DAEMON, "--socket", SOCKET], env=nss_env, stdin=subprocess.DEVNULL,
                          stdout=subprocess.DEVNULL, stderr=open(os.path.join(D, "crm2fad.log"), "w"))
atexit.register(daemon.kill)
for _ in range(500):
    if os.path.exists(SOCKET) or daemon.poll() is not None:
        break
    time.sleep(0.01)
if not os.path.exists(SOCKET):
    sys.exit("bench: crm2fad does not listen (see crm2fad.log in BENCH_DIR, with BENCH_KEEP=1)")

def pg_sql(db, sql):
    """SQL as the server's superuser over its unix socket."""
    return run([os.path.join(os.environ["PG_BIN"], "psql"), "-X", "-q", "-w", "-A", "-t",
                "-v", "ON_ERROR_STOP=1", "-h", os.environ["PG_SOCK"], "-p", os.environ["PG_PORT"],
                "-U", "postgres", "-d", db, "-c", sql],
               env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C", "PGCONNECT_TIMEOUT": "10"})

def pg_setup(host_cfg, admin_cfg, db):
    """`init` as the owner, the hosts' role's rights, and doctor's word that the
    host config reaches the store: the crm2fa-admin command for that config."""
    run([ADMIN, "--config", admin_cfg, "init"], env=nss_env)
    # The hosts' role: rows only, as README.md "A PostgreSQL store for a fleet"
    # grants them, on the tables init just made.
    r, o = os.environ["PG_HOST_ROLE"], os.environ["PG_OWNER"]
    pg_sql(db, f"GRANT CONNECT ON DATABASE {db} TO {r};"
               f" GRANT USAGE ON SCHEMA public TO {r};"
               f" GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {r};"
               f" GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO {r};"
               f" ALTER DEFAULT PRIVILEGES FOR ROLE {o} IN SCHEMA public"
               f" GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO {r};"
               f" ALTER DEFAULT PRIVILEGES FOR ROLE {o} IN SCHEMA public GRANT USAGE ON SEQUENCES TO {r};")
    # doctor checks that the hosts' role reaches the store with every row right a
    # login needs (its other checks, e.g. the sending program, are not ours here).
    adm = [ADMIN, "--config", host_cfg]
    r = subprocess.run(adm + ["doctor"], capture_output=True, text=True,
                       stdin=subprocess.DEVNULL, env=nss_env)
    if not any(l.split()[:2] == ["ok", "store"] for l in r.stdout.splitlines()):
        sys.exit(f"bench: crm2fa-admin doctor does not find the PostgreSQL store usable:\n{r.stdout}{r.stderr}")
    return adm

if PG:
    admin_pg = pg_setup(cfg_pg, cfg_pg_admin, os.environ["PG_DB"])
    admin_pg_local = pg_setup(cfg_pg_local, cfg_pg_local_admin, os.environ["PG_LOCAL_DB"])

ga_dir = {"ga": os.path.join(D, "ga"), "ga_fast": os.path.join(D, "ga-fast")}
# google-authenticator: the file its own setup tool writes. GA: the options it
# recommends (TOTP, disallow reuse, rate limit 3/30s, window 3 = +-1 step, as
# crm2fa's default skew). GA-fast: the same without reuse protection nor rate
# limit, so a login only reads its file.
ga_opts = {"ga": ["-d", "-r", "3", "-R", "30"], "ga_fast": ["-D", "-u"]}
for d in ga_dir.values():
    os.mkdir(d, 0o700)
oath_file = os.path.join(D, "users.oath")

def enroll_crm2fa(adm, u):
    j = json.loads(run(adm + ["--json", "enroll", u, "--no-qr"], env=nss_env))
    # Confirm with the previous step's code (inside the default skew of 1), so
    # that the step the timed login uses is still unused. A step that ends
    # between the code and its check makes it two steps old: try again.
    for tries in range(3):
        argv = adm + ["confirm", u, totp(j["secret"], time.time() - 30)]
        r = subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL, env=nss_env)
        if r.returncode == 0:
            break
    else:
        sys.exit(f"bench: command failed ({r.returncode}): {' '.join(argv)}\n{r.stdout}{r.stderr}")
    if CONTACTS:
        run(adm + ["set-contact", u, "--email", f"{u}@example.com"], env=nss_env)
    return j["secret"]

def enroll(u):
    out = {"crm2fa": enroll_crm2fa(admin, u), "crm2fa_alone": enroll_crm2fa(admin_alone, u)}
    # crm2fa_pg: the same steps in the PostgreSQL store (its own secret).
    if PG:
        out["crm2fa_pg"] = enroll_crm2fa(admin_pg, u)
        out["crm2fa_pg_local"] = enroll_crm2fa(admin_pg_local, u)
    for kind, d in ga_dir.items():
        gf = os.path.join(d, u)
        run(["google-authenticator", "-t", "-f", "-w", "3", "-Q", "NONE", "-q", "-s", gf]
            + ga_opts[kind])
        with open(gf) as f:
            out[kind] = f.readline().strip()
    # pam_oath: its own (not the other modules') random secret.
    out["oath"] = base64.b32encode(os.urandom(20)).decode()
    return u, out

log(f"enrolling {len(everyone)} users in crm2fa,{' crm2fa_pg,' if PG else ''} GA, GA-fast and pam_oath"
    " (not timed) ...")
t0 = time.time()
secret = collections.defaultdict(dict)  # kind -> user -> base32 secret
# crm2fa-admin hashes each user's backup codes (argon2) at enroll: use every core.
with concurrent.futures.ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as ex:
    for i, (u, out) in enumerate(ex.map(enroll, everyone)):
        for kind, s in out.items():
            secret[kind][u] = s
        if (i + 1) % 100 == 0:
            log(f"  {i + 1}/{len(everyone)}")
# One users.oath for everyone, as pam_oath's README sets it up (/etc/users.oath):
# TOTP, 30 s steps, 6 digits, no password; secrets in hex.
with open(os.open(oath_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as f:
    for u in everyone:
        f.write(f"HOTP/T30/6\t{u}\t-\t{b32key(secret['oath'][u]).hex()}\n")
log(f"enrolled in {time.time() - t0:.1f}s")

for kind, d in ga_dir.items():
    with open(os.path.join(d, everyone[0])) as f:
        opts = [l.split()[1] for l in f if l.startswith('" ')]
    log(f"{kind} file options: {' '.join(opts)}")

# --- PAM services (pam_wrapper) ---------------------------------------------
svc = os.path.join(D, "pam.d")
os.mkdir(svc)
passdb = os.path.join(D, "passdb")
services = {
    "baseline": "auth required pam_permit.so\n",
    "crm2fa": f"auth required {MODULE} config={cfg} qr=none socket={SOCKET}\n",
    "crm2fa_alone": f"auth required {MODULE} config={cfg_alone} qr=none socket=none\n",
    **({"crm2fa_pg": f"auth required {MODULE} config={cfg_pg} qr=none socket={SOCKET}\n",
        "crm2fa_pg_local": f"auth required {MODULE} config={cfg_pg_local} qr=none socket={SOCKET}\n"}
       if PG else {}),
    "ga": f"auth required {GA_MODULE} secret={ga_dir['ga']}/${{USER}} user=root\n",
    "ga_fast": f"auth required {GA_MODULE} secret={ga_dir['ga_fast']}/${{USER}} user=root\n",
    # window=1: +-1 step, as the others.
    "oath": f"auth required {OATH_MODULE} usersfile={oath_file} window=1\n",
}
for name, line in services.items():
    with open(os.path.join(svc, "bench-" + name), "w") as f:
        f.write(f"auth requisite {MATRIX} passdb={passdb}\n{line}account required pam_permit.so\n")
with open(os.path.join(svc, "other"), "w") as f:  # silences pam_wrapper's "no default config other"
    f.write("auth required pam_deny.so\naccount required pam_deny.so\n")
with open(passdb, "w") as f:
    for u in everyone:
        for name in services:
            f.write(f"{u}:{PASSWORD}:bench-{name}\n")

env = dict(login_env, LD_PRELOAD=preload, PAM_WRAPPER="1",
           PAM_WRAPPER_SERVICE_DIR=svc)

# pam_wrapper (1.1.x) gives each process its own copy of the services in the
# first free /tmp/pam.[0-9a-z], found by lstat then mkdir: two processes that
# start together can pick the same one, and then one exits in pam_wrapper's
# set-up ("Failed to create pam_wrapper config dir") or its pam_start fails
# ("Initialization failure") because the other removed the directory. Either
# way no module ran and nothing was asked: that is the sandbox, not a module
# refusing a code, so the login is run again (its code still unused) and the
# restart counted apart.
HARNESS_RETRIES = 5

def attempt(kind, user, wrap=None):
    """One login in its own pamtester process, run again while the sandbox
    fails before the first prompt: (accepted, seconds, message, restarts).
    `wrap`: a tool (strace, valgrind) to run pamtester under; the tool itself
    runs without the wrappers preloaded, `env` puts them back for pamtester."""
    restarts = 0
    t = time.perf_counter()
    while True:
        if kind == "baseline":
            stdin = PASSWORD + "\n"
        else:
            stdin = f"{PASSWORD}\n{totp(secret[kind][user], time.time())}\n"
        argv = ["pamtester", "bench-" + kind, user, "authenticate"]
        run_env = env
        if wrap:
            argv = wrap + ["env", "LD_PRELOAD=" + env["LD_PRELOAD"]] + argv
            run_env = {k: v for k, v in env.items() if k != "LD_PRELOAD"}
        # No timeout for subprocess itself: with one, Popen.wait polls for
        # the exit, sleeping 1, 2, 4 ... ms between tries, and a login whose
        # process is not reaped at the first try is timed a millisecond or
        # more too long. A timer kills a login that hangs instead.
        p = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, env=run_env)
        hung = threading.Event()
        def kill(p=p):
            hung.set()
            p.kill()
        killer = threading.Timer(LOGIN_TIMEOUT * (10 if wrap else 1), kill)
        killer.start()
        try:
            stdout, stderr = p.communicate(stdin)
        finally:
            killer.cancel()
        if hung.is_set():
            ok, msg, asked = False, f"no answer in {LOGIN_TIMEOUT} s (killed)", True
        else:
            out = (stdout + stderr).strip()
            ok, msg, asked = p.returncode == 0, f"exit {p.returncode}: {out}", "Password:" in out
        if ok or asked or restarts == HARNESS_RETRIES:
            return ok, time.perf_counter() - t, msg, restarts
        restarts += 1

KINDS = (["crm2fa", "crm2fa_alone"] + (["crm2fa_pg", "crm2fa_pg_local"] if PG else [])
         + ["ga", "ga_fast", "oath", "baseline"])
label = {
    "baseline": "baseline: pam_matrix + pam_permit",
    "crm2fa": "crm2fa: + pam_crm2fa, run by crm2fad",
    "crm2fa_alone": "crm2fa-alone: + pam_crm2fa, socket=none",
    "crm2fa_pg": "crm2fa_pg: + pam_crm2fa, crm2fad, PostgreSQL",
    "crm2fa_pg_local": "crm2fa_pg_local: the same, by its socket",
    "ga": "GA: + google-authenticator (reuse prot.)",
    "ga_fast": "GA-fast: + google-authenticator (no reuse prot.)",
    "oath": "pam_oath: + pam_oath (one users.oath)",
}
W = 50

# --- 1. per-login wall time, one login at a time -----------------------------
times = {k: [] for k in KINDS}
log(f"per login: {WARMUP} warm-up rounds, then {N} timed rounds ({', '.join(KINDS)} in rotation) ...")
for r, user in enumerate(users):
    for k in KINDS[r % len(KINDS):] + KINDS[:r % len(KINDS)]:
        ok, dt, msg, _ = attempt(k, user)
        if not ok:
            sys.exit(f"bench: {k} login of {user} failed, logins one at a time ({msg})")
        if r >= WARMUP:
            times[k].append(dt)

# --- 2. throughput: concurrent clients ---------------------------------------
TPUT_KINDS = KINDS
tput = {}  # (kind, clients) -> dict(rate, failed, n, p95, first failure)
tput_times = {}  # "kind clients" -> every login's wall time, s

def cell(kind, clients, pool):
    """`clients` threads, each running one pamtester at a time, take the users
    of `pool` in turn until none is left; every login is timed from the first
    start to the last end."""
    todo = collections.deque(pool)
    lock = threading.Lock()
    results = []
    start = threading.Barrier(clients + 1)
    def client():
        start.wait()
        while True:
            with lock:
                if not todo:
                    return
                u = todo.popleft()
            res = attempt(kind, u)
            with lock:
                results.append(res)
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    failed = [m for ok, _, m, _ in results if not ok]
    return {
        "wall": wall, "n": len(results), "failed": len(failed),
        "times": [dt for _, dt, _, _ in results], "why": failed[0] if failed else None,
        "restarts": sum(n for _, _, _, n in results),
    }

def merged(parts):
    """One cell out of its rounds: every login of them over their summed wall time."""
    wall, n = sum(p["wall"] for p in parts), sum(p["n"] for p in parts)
    return {
        "rate": n / wall, "n": n, "failed": sum(p["failed"] for p in parts),
        "p95": p95([dt for p in parts for dt in p["times"]]),
        "why": next((p["why"] for p in parts if p["why"]), None),
        "restarts": sum(p["restarts"] for p in parts),
    }

def p95(xs):
    s = sorted(xs)
    return s[max(0, math.ceil(0.95 * len(s)) - 1)]

if TPUT > 0:
    log(f"throughput: {TPUT} logins per cell in {ROUNDS} rounds, {' / '.join(map(str, CLIENTS))}"
        f" concurrent clients, {', '.join(TPUT_KINDS)} (order rotated each round) ...")
    for ci, clients in enumerate(CLIENTS):
        pool = tput_users[ci * TPUT:(ci + 1) * TPUT]
        parts = {k: [] for k in TPUT_KINDS}
        for r in range(ROUNDS):
            chunk = pool[r::ROUNDS]
            if not chunk:
                continue
            first = (ci + r) % len(TPUT_KINDS)
            for k in TPUT_KINDS[first:] + TPUT_KINDS[:first]:
                parts[k].append(cell(k, clients, chunk))
        for k in TPUT_KINDS:
            tput[(k, clients)] = merged(parts[k])
            tput_times[f"{k} {clients}"] = [dt for part in parts[k] for dt in part["times"]]

# Every login's wall time, for a closer look than the tables' (BENCH_SAMPLES).
if os.environ.get("BENCH_SAMPLES"):
    with open(os.environ["BENCH_SAMPLES"], "w") as f:
        json.dump({"per_login": times, "throughput": tput_times}, f)

# --- 3. counts of one login: instructions and system calls -------------------
# Not timed, so the machine's other load does not move them.
counts = {}  # kind -> {"Ir": instructions, "sys": {name: calls}}
if PROFILE:
    import shutil
    have_strace, have_valgrind = shutil.which("strace"), shutil.which("valgrind")
    log(f"counts: one login of each kind under"
        f"{' strace -f -c' if have_strace else ''}{' and' if have_strace and have_valgrind else ''}"
        f"{' valgrind --tool=callgrind' if have_valgrind else ''}"
        f"{'' if have_strace or have_valgrind else ' nothing (install strace and valgrind)'} ...")
    cdir = os.path.join(D, "counts")
    os.mkdir(cdir)
    wal = os.path.join(D, "crm2fa-alone.db-wal")
    counts["wal_kb"] = os.path.getsize(wal) / 1024 if os.path.exists(wal) else 0
    for k in KINDS:
        counts[k] = {}
        if have_strace:
            out = os.path.join(cdir, f"strace.{k}")
            ok, _, msg, _ = attempt(k, count_users[0], ["strace", "-f", "-c", "-o", out])
            if not ok:
                sys.exit(f"bench: {k} login under strace failed ({msg})")
            calls = {}
            with open(out) as f:
                for line in f:
                    p = line.split()
                    # % time, seconds, usecs/call, calls, [errors], syscall
                    if len(p) >= 5 and p[-1] not in ("total", "syscall") and p[3].isdigit():
                        calls[p[-1]] = int(p[3])
            counts[k]["sys"] = calls
        if have_valgrind:
            out = os.path.join(cdir, f"callgrind.{k}")
            ok, _, msg, _ = attempt(k, count_users[1], [
                "valgrind", "--tool=callgrind", "--trace-children=yes",
                f"--callgrind-out-file={out}"])
            if not ok:
                sys.exit(f"bench: {k} login under valgrind failed ({msg})")
            with open(out) as f:
                summary = [l for l in f if l.startswith(("summary:", "totals:"))]
            counts[k]["Ir"] = int(summary[0].split()[1]) if summary else None

# --- report -------------------------------------------------------------------
ms = lambda x: x * 1000.0
med = {k: statistics.median(v) for k, v in times.items()}
p = {k: p95(v) for k, v in times.items()}
size = lambda path: os.path.getsize(path) / 1e6
print()
print(f"1. Per-login wall time, {N} logins each, one at a time (one pamtester process per login, pam_wrapper)")
print(f"{'':{W}}{'median ms':>10}{'p95 ms':>10}")
REPORT = ["baseline"] + [k for k in KINDS if k != "baseline"]
for k in REPORT:
    print(f"{label[k]:{W}}{ms(med[k]):10.2f}{ms(p[k]):10.2f}")
for a, b in [("crm2fa", "ga_fast"), ("crm2fa", "ga"), ("crm2fa", "oath"), ("crm2fa", "baseline"),
             ("crm2fa", "crm2fa_alone"), ("crm2fa_alone", "oath")] \
        + ([("crm2fa_pg", "crm2fa"), ("crm2fa_pg_local", "crm2fa")] if PG else []):
    name = f"ratio {a} / {dict(ga='GA', ga_fast='GA-fast', oath='pam_oath', crm2fa_alone='crm2fa-alone').get(b, b)}"
    print(f"{name:{W}}{med[a] / med[b]:9.2f}x{p[a] / p[b]:9.2f}x")
print("second factor alone (median - baseline): "
      + ", ".join(f"{dict(ga='GA', ga_fast='GA-fast', oath='pam_oath', crm2fa_alone='crm2fa-alone').get(k, k)} {ms(med[k] - med['baseline']):.2f} ms"
                  for k in REPORT[1:]))
oath_lib = os.path.realpath("/lib/x86_64-linux-gnu/liboath.so.0")
print(f"module sizes: pam_crm2fa.so {size(MODULE):.2f} MB, pam_google_authenticator.so {size(GA_MODULE):.2f} MB,"
      f" pam_oath.so {size(OATH_MODULE):.2f} MB (+ liboath {size(oath_lib):.2f} MB)"
      if os.path.exists(oath_lib) else
      f"module sizes: pam_crm2fa.so {size(MODULE):.2f} MB, pam_google_authenticator.so {size(GA_MODULE):.2f} MB,"
      f" pam_oath.so {size(OATH_MODULE):.2f} MB")
# The module must not link a mail, HTTP or TLS client: crm2fa-send does that.
with open(MODULE, "rb") as f:
    linked = [n for n in (b"lettre", b"ureq", b"rustls") if n in f.read()]
print("pam_crm2fa.so links no SMTP/HTTP/TLS client" if not linked
      else f"pam_crm2fa.so links {b', '.join(linked).decode()}: it should not")
print("accounts (NSS): " + ("glibc's files module, the bench's /etc/passwd in a private mount namespace"
                            if NSS == "files" else "nss_wrapper (BENCH_NSS=wrapper)"))
print(f"syslog: {SYSLOG}")
print(f"crm2fa users have an email address and [email] is configured: {'yes' if CONTACTS else 'no'}"
      " (BENCH_CONTACTS)")
def sqlite_store(name):
    db = os.path.join(D, name)
    return ", ".join(f"{os.path.basename(f)} {size(f):.2f} MB" for f in (db, db + "-wal") if os.path.exists(f))
print(f"stores after {len(everyone)} enrolments and all logins: crm2fa {sqlite_store('crm2fa.db')};"
      f" crm2fa-alone {sqlite_store('crm2fa-alone.db')}; users.oath {size(oath_file):.2f} MB"
      + (f"; crm2fa_pg database {int(pg_sql(os.environ['PG_DB'], 'SELECT pg_database_size(current_database());')) / 1e6:.2f} MB"
         if PG else ""))
if PG:
    print("crm2fa_pg: PostgreSQL " + pg_sql("postgres", "SHOW server_version;").strip()
          + " on 127.0.0.1, sessions (TCP, SCRAM-SHA-256, no TLS) kept open by crm2fad, as the host role"
          + " (crm2fa_pg_local: a database of its own, by the server's Unix-domain socket);"
          + " fsync " + pg_sql("postgres", "SHOW fsync;").strip()
          + ", synchronous_commit " + pg_sql("postgres", "SHOW synchronous_commit;").strip())
print()
# 95% bootstrap interval of the median ratio, to tell a real gap from noise.
def verdict(a, b, goal):
    rng = random.Random(1)
    boot = sorted(
        statistics.median(rng.choices(times[a], k=N)) / statistics.median(rng.choices(times[b], k=N))
        for _ in range(1000))
    lo, hi = boot[25], boot[974]
    ratio = med[a] / med[b]
    v = "MET" if ratio <= 1.0 else "NOT MET, within noise" if lo <= 1.0 else "NOT MET"
    print(goal)
    print(f"      {v}: {ratio:.3f} (95% interval {lo:.3f}..{hi:.3f}),"
          f" {ms(med[a]):.2f} ms vs {ms(med[b]):.2f} ms")
verdict("crm2fa", "ga_fast",
        "Goal: crm2fa no slower than GA-fast, google-authenticator without reuse protection (median)")
verdict("crm2fa", "ga", "      (and than GA with reuse protection, as its setup tool recommends)")

# crm2fa_pg: what the second factor (median - baseline) costs with the
# PostgreSQL store, against the same with SQLite; the interval by the same
# bootstrap, resampling the three kinds' times.
PG_GOAL = 1.5
def pg_verdict(kind, how, goal=True):
    rng = random.Random(1)
    def second(k, xs):
        return statistics.median(xs[k]) - statistics.median(xs["baseline"])
    boot = []
    for _ in range(1000):
        xs = {k: rng.choices(times[k], k=N) for k in (kind, "crm2fa", "baseline")}
        if second("crm2fa", xs) > 0:
            boot.append(second(kind, xs) / second("crm2fa", xs))
    boot.sort()
    sf_pg, sf = med[kind] - med["baseline"], med["crm2fa"] - med["baseline"]
    ratio = sf_pg / sf if sf > 0 else math.inf
    lo = boot[int(0.025 * len(boot))] if boot else math.nan
    hi = boot[min(len(boot) - 1, int(0.975 * len(boot)))] if boot else math.nan
    v = ("MET" if ratio <= PG_GOAL else
         "NOT MET, within noise" if lo <= PG_GOAL else "NOT MET") if goal else "for scale"
    print(f"      {how}: {v}: {ratio:.2f}x (95% interval {lo:.2f}..{hi:.2f}),"
          f" {kind} {ms(sf_pg):.2f} ms vs crm2fa {ms(sf):.2f} ms")
    return sf_pg

if PG:
    print(f"Goal: the second factor (median - baseline) with a local PostgreSQL store at most {PG_GOAL}x"
          " what it costs with SQLite")
    pg_verdict("crm2fa_pg_local", "the server on this host, reached by its socket (crm2fa_pg_local)")
    print("      not the goal's setup, for a fleet's view: the same server over TCP, as a fleet's")
    print("      hosts reach theirs (loopback TCP adds its own cost to each round trip):")
    sf_pg = pg_verdict("crm2fa_pg", "over TCP to 127.0.0.1 (crm2fa_pg)", goal=False)
    # For scale, not the goal: SQLite in the module alone, where every login
    # opens the store (as crm2fa's SQLite logins all did before crm2fad).
    sf_alone = med["crm2fa_alone"] - med["baseline"]
    if sf_alone > 0:
        print(f"      (for scale: crm2fa_pg {sf_pg / sf_alone:.2f}x the SQLite second factor in the module"
              f" alone, crm2fa-alone {ms(sf_alone):.2f} ms)")

if tput:
    print()
    print(f"2. Throughput: logins per second with concurrent clients, {TPUT} logins per cell in {ROUNDS} rounds")
    print("   (the kinds take turns within each round), each login its own pamtester process with a")
    print("   fresh valid code for its own user; failed = a valid code refused")
    short = {"baseline": "baseline", "crm2fa": "crm2fa", "crm2fa_alone": "crm2fa-alone",
             "crm2fa_pg": "crm2fa_pg", "crm2fa_pg_local": "pg_local", "ga": "GA",
             "ga_fast": "GA-fast", "oath": "pam_oath"}
    print("   and the p95 of one login's wall time under that load")
    print(f"{'':10}" + "".join(f"{str(c) + ' client' + ('s' if c > 1 else ''):>27}" for c in CLIENTS))
    print(f"{'':10}" + "".join(f"{'login/s':>9}{'failed':>9}{'p95 ms':>9}" for _ in CLIENTS))
    for k in [k for k in REPORT if k in TPUT_KINDS]:
        row = "".join(f"{tput[(k, c)]['rate']:9.1f}"
                      f"{str(tput[(k, c)]['failed']) + '/' + str(tput[(k, c)]['n']):>9}"
                      f"{ms(tput[(k, c)]['p95']):9.1f}" for c in CLIENTS)
        print(f"{short[k]:10}{row}")
    restarts = sum(c["restarts"] for c in tput.values())
    if restarts:
        print(f"  (pam_wrapper failed to start {restarts} pamtester process(es) in all: run again, not counted as failed)")
    for k in TPUT_KINDS:
        why = next((tput[(k, c)]["why"] for c in CLIENTS if tput[(k, c)]["why"]), None)
        if why:
            print(f"  first {k} failure: {why.splitlines()[-1] if why.splitlines() else why}")
    print()
    peers = ["ga", "ga_fast", "oath"]
    crm_failed = sum(tput[("crm2fa", c)]["failed"] for c in CLIENTS)
    print("Goal: crm2fa none failed, and its logins/s at least the best peer's (GA, GA-fast, pam_oath),")
    print("      counting accepted logins only (a refused valid code serves no one)")
    print(f"      failed: {'MET' if crm_failed == 0 else 'NOT MET'} ({crm_failed} failed)")
    good = lambda k, c: tput[(k, c)]["rate"] * (tput[(k, c)]["n"] - tput[(k, c)]["failed"]) / tput[(k, c)]["n"]
    # 95% bootstrap interval of the ratio: each cell's logins resampled, its
    # logins/s scaled by their mean wall time against the resample's.
    def tput_interval(a, b, c):
        rng = random.Random(1)
        def rate(k):
            xs = tput_times[f"{k} {c}"]
            return good(k, c) * statistics.fmean(xs) / statistics.fmean(rng.choices(xs, k=len(xs)))
        boot = sorted(rate(a) / rate(b) for _ in range(1000))
        return boot[25], boot[974]
    for c in CLIENTS:
        best = max(peers, key=lambda k: good(k, c))
        mine, theirs = good("crm2fa", c), good(best, c)
        lo, hi = tput_interval("crm2fa", best, c)
        v = "MET" if mine >= theirs else "NOT MET, within noise" if hi >= 1.0 else "NOT MET"
        print(f"      {c} client{'s' if c > 1 else ''}: {v}:"
              f" crm2fa {mine:.1f}/s vs {label[best].split(':')[0]} {theirs:.1f}/s ({mine / theirs:.2f}x,"
              f" 95% interval {lo:.2f}..{hi:.2f}); crm2fa-alone {good('crm2fa_alone', c) / theirs:.2f}x")
    if PG:
        conc = [c for c in CLIENTS if c > 1]
        print("Goal: crm2fa_pg_local and crm2fa_pg none failed under concurrency")
        for k in ("crm2fa_pg_local", "crm2fa_pg"):
            failed_all = sum(tput[(k, c)]["failed"] for c in CLIENTS)
            failed_conc = sum(tput[(k, c)]["failed"] for c in conc)
            print(f"      {'MET' if failed_conc == 0 else 'NOT MET'}: {k} failed: {failed_conc}"
                  f" ({', '.join(f'{c} clients' for c in conc) or 'no concurrent cell'};"
                  f" {failed_all} at every client count)")
        for k in ("crm2fa_pg_local", "crm2fa_pg"):
            print(f"      {k} / crm2fa logins/s: " + ", ".join(
                f"{c} client{'s' if c > 1 else ''} {good(k, c) / good('crm2fa', c):.2f}x" for c in CLIENTS))

if counts:
    print()
    print("3. Counts of one login of each kind (under strace -f -c and valgrind --tool=callgrind;")
    print("   not timed, so the machine's load does not move them; pamtester and env included)")
    cols = [("Ir", "instr."), ("total", "syscalls"), ("fsync", "fsync"), ("pread64", "pread"),
            ("pwrite64", "pwrite"), ("fcntl", "fcntl"), ("openat", "openat"), ("stat", "stat*"),
            ("connect", "connect")]
    def val(k, c):
        calls = counts[k].get("sys")
        if c == "Ir":
            ir = counts[k].get("Ir")
            return f"{ir / 1e6:.2f}M" if ir else "-"
        if calls is None:
            return "-"
        if c == "total":
            return str(sum(calls.values()))
        if c == "fsync":
            return str(calls.get("fsync", 0) + calls.get("fdatasync", 0))
        if c == "stat":
            return str(sum(n for name, n in calls.items() if "stat" in name))
        return str(calls.get(c, 0))
    print(f"{'':{W}}" + "".join(f"{h:>9}" for _, h in cols))
    for k in REPORT:
        print(f"{label[k]:{W}}" + "".join(f"{val(k, c):>9}" for c, _ in cols))
    if all(counts[k].get("Ir") for k in KINDS):
        base = counts["baseline"]["Ir"]
        print("instructions beyond the baseline: " + ", ".join(
            f"{dict(ga='GA', ga_fast='GA-fast', oath='pam_oath', crm2fa_alone='crm2fa-alone').get(k, k)} {(counts[k]['Ir'] - base) / 1e6:.2f}M"
            for k in REPORT[1:]))
    print("(crm2fa and crm2fa_pg: the PAM process's counts only; crm2fad does the store's work, and its fsync,")
    print(" elsewhere. crm2fa-alone: the whole login in the PAM process, whose store's WAL was"
          f" {counts.get('wal_kb', 0):.0f} kB at the counted login,")
    print(" read back whole, as every login that opens the store alone does;")
    print(f" GA and crm2fa look the user up in NSS: "
          + (f"glibc's files module, /etc/passwd of {len(everyone)} bench users and the host's)"
             if NSS == "files" else
             f"nss_wrapper (BENCH_NSS=wrapper), reading a passwd of {len(everyone)} users line by line)"))

print()
print("Fairness: every login is a fresh pamtester process with the same password step;")
print("each login uses its own user and a fresh current-step code, so every module checks")
print("a code it has not seen; crm2fa records it in its SQLite store (crm2fad commits it, durably,")
print("before the module hears the outcome), GA rewrites the user's")
print("file (DISALLOW_REUSE + RATE_LIMIT), pam_oath rewrites its one users.oath, GA-fast")
print("writes nothing. All stores sit on the same filesystem; the order rotates. Wall-clock")
print("numbers move with the machine's other load: compare rows of one run, not runs.")
if PG:
    print("crm2fa_pg is the same module, crm2fad and config but for [store]: crm2fad keeps sessions")
    print("(TCP, SCRAM) with the local PostgreSQL server open; default durability; it commits there.")
PY
