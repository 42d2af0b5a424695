#!/usr/bin/env bash
# crm2fa login benchmark: wall time of one login, one process per login (as
# under sshd), through real libpam (pamtester + pam_wrapper), for
#   baseline  pam_matrix (password) + pam_permit
#   crm2fa    pam_matrix + pam_crm2fa.so (release build), TOTP code
#   GA        pam_matrix + pam_google_authenticator.so, TOTP code
# Goal: crm2fa no slower than google-authenticator.
#
# Usage: bash benches/bench.sh        (or: make bench)
# Env:   BENCH_N=200       timed rounds (one login of each kind per round)
#        BENCH_WARMUP=10   untimed rounds first
#        BENCH_DIR=...     scratch directory (default: <target>/bench-sandbox)
#        BENCH_KEEP=1      keep the scratch directory afterwards
#        CARGO_TARGET_DIR  honoured, like cargo does
# Not part of `make test`. Needs root (pam_google_authenticator checks that its
# secret files are owned by the user it runs as; we use user=root).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# cargo resolves a relative CARGO_TARGET_DIR against the current directory.
TARGET=$(realpath -m "${CARGO_TARGET_DIR:-$ROOT/target}")
[ -z "${CARGO_TARGET_DIR:-}" ] || export CARGO_TARGET_DIR="$TARGET"
cd "$ROOT"

GA_MODULE=/lib/x86_64-linux-gnu/security/pam_google_authenticator.so
MATRIX=/usr/lib/x86_64-linux-gnu/pam_wrapper/pam_matrix.so

say() { printf 'bench: %s\n' "$*"; }
die() { printf 'bench: error: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "run as root (pam_google_authenticator and the crm2fa store need it)"

# Dependencies: the usual set, plus google-authenticator-libpam to compare with.
if [ ! -e "$GA_MODULE" ] || ! command -v google-authenticator >/dev/null \
   || ! command -v pamtester >/dev/null || [ ! -e "$MATRIX" ]; then
  say "installing missing packages (libpam-google-authenticator, pamtester, libpam-wrapper ...)"
  bash scripts/install-deps.sh libpam-google-authenticator
fi
[ -e "$GA_MODULE" ] || die "$GA_MODULE missing after install (apt-get install -y libpam-google-authenticator)"
command -v python3 >/dev/null || die "python3 is needed for the timing driver"

say "building release (cargo build --release --workspace)"
cargo build --release --workspace --quiet

MODULE="$TARGET/release/libpam_crm2fa.so"
ADMIN="$TARGET/release/crm2fa-admin"
[ -f "$MODULE" ] || die "no $MODULE after the build"
[ -x "$ADMIN" ] || die "no $ADMIN after the build"

BENCH_DIR=$(realpath -m "${BENCH_DIR:-$TARGET/bench-sandbox}")
rm -rf "$BENCH_DIR"
mkdir -p "$BENCH_DIR"
chmod 700 "$BENCH_DIR"
if [ "${BENCH_KEEP:-0}" != 1 ]; then
  trap 'rm -rf "$BENCH_DIR"' EXIT
fi

export BENCH_DIR MODULE ADMIN GA_MODULE MATRIX
export BENCH_N="${BENCH_N:-200}" BENCH_WARMUP="${BENCH_WARMUP:-10}"

python3 - <<'PY'
import base64, hashlib, hmac, json, math, os, statistics, struct, subprocess, sys, time

D = os.environ["BENCH_DIR"]
MODULE, ADMIN = os.environ["MODULE"], os.environ["ADMIN"]
GA_MODULE, MATRIX = os.environ["GA_MODULE"], os.environ["MATRIX"]
N, WARMUP = int(os.environ["BENCH_N"]), int(os.environ["BENCH_WARMUP"])
if N < 1 or WARMUP < 0:
    sys.exit("bench: BENCH_N must be >= 1 and BENCH_WARMUP >= 0")
PASSWORD = "pw"

def log(msg):
    print(f"bench: {msg}", flush=True)

def run(argv, **kw):
    r = subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL, **kw)
    if r.returncode != 0:
        sys.exit(f"bench: command failed ({r.returncode}): {' '.join(argv)}\n{r.stdout}{r.stderr}")
    return r.stdout

def totp(secret_b32, t, digits=6, period=30):
    s = secret_b32.strip().replace(" ", "").upper()
    key = base64.b32decode(s + "=" * (-len(s) % 8))
    mac = hmac.new(key, struct.pack(">Q", int(t // period)), hashlib.sha1).digest()
    off = mac[-1] & 0x0F
    return "%0*d" % (digits, (struct.unpack(">I", mac[off:off + 4])[0] & 0x7FFFFFFF) % 10 ** digits)

# Cross-check the driver's TOTP against oathtool once.
probe, now = "JBSWY3DPEHPK3PXP", time.time()
ref = run(["oathtool", "--totp", "-b", "-N", "@%d" % int(now), probe]).strip()
if ref != totp(probe, now):
    sys.exit(f"bench: driver TOTP disagrees with oathtool ({totp(probe, now)} vs {ref})")

users = [f"b{i:05d}" for i in range(WARMUP + N)]

# --- crm2fa: config, store, one enrolled (active) user per login -----------
cfg = os.path.join(D, "crm2fa.toml")
with open(os.open(cfg, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as f:
    f.write('[store]\npath = "crm2fa.db"\nkey_file = "secret.key"\n\n'
            '[policy]\nenforce = "opt-in"\n')
admin = [ADMIN, "--config", cfg]
run(admin + ["init"])

log(f"enrolling {len(users)} users in crm2fa and google-authenticator (not timed) ...")
t0 = time.time()
crm_secret, ga_secret = {}, {}
ga_dir = os.path.join(D, "ga")
os.mkdir(ga_dir, 0o700)
for i, u in enumerate(users):
    j = json.loads(run(admin + ["--json", "enroll", u, "--no-qr"]))
    crm_secret[u] = j["secret"]
    # Confirm with the previous step's code (inside the default skew of 1), so
    # that the step the timed login uses is still unused.
    run(admin + ["confirm", u, totp(j["secret"], time.time() - 30)])
    # google-authenticator: the file its own setup tool writes, with the
    # options it recommends: TOTP, disallow reuse, rate limit 3/30s, window 3.
    gf = os.path.join(ga_dir, u)
    run(["google-authenticator", "-t", "-d", "-f", "-r", "3", "-R", "30", "-w", "3",
         "-Q", "NONE", "-q", "-s", gf])
    with open(gf) as f:
        ga_secret[u] = f.readline().strip()
    if (i + 1) % 50 == 0:
        log(f"  {i + 1}/{len(users)}")
log(f"enrolled in {time.time() - t0:.1f}s")

# --- PAM services (pam_wrapper) ---------------------------------------------
svc = os.path.join(D, "pam.d")
os.mkdir(svc)
passdb = os.path.join(D, "passdb")
services = {
    "baseline": "auth required pam_permit.so\n",
    "crm2fa": f"auth required {MODULE} config={cfg} qr=none\n",
    "ga": f"auth required {GA_MODULE} secret={ga_dir}/${{USER}} user=root\n",
}
for name, line in services.items():
    with open(os.path.join(svc, "bench-" + name), "w") as f:
        f.write(f"auth requisite {MATRIX} passdb={passdb}\n{line}account required pam_permit.so\n")
with open(os.path.join(svc, "other"), "w") as f:  # silences pam_wrapper's "no default config other"
    f.write("auth required pam_deny.so\naccount required pam_deny.so\n")
with open(passdb, "w") as f:
    for u in users:
        for name in services:
            f.write(f"{u}:{PASSWORD}:bench-{name}\n")

env = dict(os.environ, LD_PRELOAD="libpam_wrapper.so", PAM_WRAPPER="1", PAM_WRAPPER_SERVICE_DIR=svc)

def login(kind, user):
    if kind == "baseline":
        stdin = PASSWORD + "\n"
    else:
        secret = crm_secret[user] if kind == "crm2fa" else ga_secret[user]
        stdin = f"{PASSWORD}\n{totp(secret, time.time())}\n"
    argv = ["pamtester", "bench-" + kind, user, "authenticate"]
    t = time.perf_counter()
    r = subprocess.run(argv, input=stdin, capture_output=True, text=True, env=env)
    dt = time.perf_counter() - t
    if r.returncode != 0:
        sys.exit(f"bench: {kind} login of {user} failed (exit {r.returncode}):\n{r.stdout}{r.stderr}")
    return dt

kinds = ["crm2fa", "ga", "baseline"]
times = {k: [] for k in kinds}
log(f"{WARMUP} warm-up rounds, then {N} timed rounds (crm2fa, GA, baseline in rotation) ...")
for r, user in enumerate(users):
    order = kinds[r % 3:] + kinds[:r % 3]
    for k in order:
        dt = login(k, user)
        if r >= WARMUP:
            times[k].append(dt)

def p95(xs):
    s = sorted(xs)
    return s[max(0, math.ceil(0.95 * len(s)) - 1)]

ms = lambda x: x * 1000.0
med = {k: statistics.median(v) for k, v in times.items()}
p = {k: p95(v) for k, v in times.items()}
size = lambda path: os.path.getsize(path) / 1e6
label = {
    "baseline": "baseline: pam_matrix + pam_permit",
    "crm2fa": "crm2fa: pam_matrix + pam_crm2fa",
    "ga": "GA: pam_matrix + pam_google_authenticator",
}
print()
print(f"Per-login wall time, {N} logins each (one pamtester process per login, pam_wrapper)")
print(f"{'':44}{'median ms':>10}{'p95 ms':>10}")
for k in ["baseline", "crm2fa", "ga"]:
    print(f"{label[k]:44}{ms(med[k]):10.2f}{ms(p[k]):10.2f}")
print(f"{'ratio crm2fa / GA':44}{med['crm2fa'] / med['ga']:9.2f}x{p['crm2fa'] / p['ga']:9.2f}x")
print(f"{'ratio crm2fa / baseline':44}{med['crm2fa'] / med['baseline']:9.2f}x{p['crm2fa'] / p['baseline']:9.2f}x")
print(f"{'second factor alone (median - baseline)':44}"
      f"  crm2fa {ms(med['crm2fa'] - med['baseline']):.2f} ms, GA {ms(med['ga'] - med['baseline']):.2f} ms")
print(f"module sizes: pam_crm2fa.so {size(MODULE):.2f} MB, pam_google_authenticator.so {size(GA_MODULE):.2f} MB")
db = os.path.join(D, "crm2fa.db")
store = ", ".join(f"{os.path.basename(f)} {size(f):.2f} MB" for f in (db, db + "-wal") if os.path.exists(f))
print(f"crm2fa store after {len(users)} enrolments and {len(users)} logins: {store}")
print()
print("Fairness: every login is a fresh pamtester process with the same password step;")
print("each login uses its own user and a fresh current-step code, so both modules check")
print("a code they have not seen and record it (crm2fa: its SQLite store; GA: rewrites the")
print("user's secret file, DISALLOW_REUSE + RATE_LIMIT as its setup tool recommends);")
print("both stores sit on the same filesystem; the order rotates every round.")
print()
# 95% bootstrap interval of the median ratio, to tell a real gap from noise.
import random
rng = random.Random(1)
boot = sorted(
    statistics.median(rng.choices(times["crm2fa"], k=N)) / statistics.median(rng.choices(times["ga"], k=N))
    for _ in range(1000))
lo, hi = boot[25], boot[974]
ratio = med["crm2fa"] / med["ga"]
if ratio <= 1.0:
    verdict = "MET"
elif lo <= 1.0:
    verdict = "NOT MET, within noise"
else:
    verdict = "NOT MET"
print("Goal: crm2fa no slower than google-authenticator (median crm2fa <= median GA)")
print(f"      {verdict}: crm2fa/GA = {ratio:.3f} (95% interval {lo:.3f}..{hi:.3f}),"
      f" {ms(med['crm2fa']):.2f} ms vs {ms(med['ga']):.2f} ms")
PY
