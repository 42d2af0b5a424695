//! What one backup-code attempt costs, against one argon2 evaluation: with 10
//! codes left and with 1, for a right and a wrong code. Prints a table.
//! Run with `cargo bench -p crm2fa-common --bench backup_codes` (or `make bench`).
use std::time::{Duration, Instant};

use crm2fa_common::audit::{AuditCtx, Fact, Logger};
use crm2fa_common::codes::{self, Code};
use crm2fa_common::config::{Config, LockoutConfig};
use crm2fa_common::crypto::HostKey;
use crm2fa_common::model::{Candidate, CodeKind, Origin, TotpMatch, Verdict};
use crm2fa_common::ops::Ops;
use crm2fa_common::store::{self, Store};

const NOW: i64 = 1_800_000_000;

fn median_p95(mut v: Vec<Duration>) -> (f64, f64) {
    v.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    (
        ms(v[v.len() / 2]),
        ms(v[(v.len() * 95 / 100).min(v.len() - 1)]),
    )
}

/// One attempt as the login makes it: normalise, one argon2, one transaction.
fn attempt(store: &mut dyn Store, salt: &[u8], typed: &str) -> Verdict {
    let code = Code::normalize(typed);
    let candidate = Candidate::code(CodeKind::Backup, code.hash(salt));
    let lockout = LockoutConfig {
        max_failures: u32::MAX,
        lock_seconds: 1,
        max_lock_seconds: 1,
    };
    store
        .redeem(
            "bench",
            &candidate,
            NOW,
            &lockout,
            &AuditCtx::default(),
            None,
        )
        .expect("store")
}

fn main() {
    let n: usize = std::env::var("BENCH_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30);
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("crm2fa.toml");
    let cfg = Config::parse("[store]\npath = \"db\"\nkey_file = \"key\"\n", &path).expect("config");
    let key = HostKey::create(&cfg.store.key_file).expect("key");
    let mut store = store::create(&cfg.store, None).expect("store");
    let mut log = Logger::new("crm2fa-bench", false);
    let mut ops = Ops {
        cfg: &cfg,
        store: store.as_mut(),
        log: &mut log,
        ctx: AuditCtx::default(),
    };
    ops.begin_enrollment(&key, "bench", NOW, Origin::Admin, None)
        .expect("enrol");
    let totp = TotpMatch {
        step: crm2fa_common::totp::step_at(&cfg.totp, NOW),
        sealed_secret: store
            .user("bench")
            .expect("user")
            .expect("row")
            .secret
            .expect("secret"),
    };
    let audit = AuditCtx::default().entry(NOW, "bench", &Fact::Confirmed);
    store.confirm("bench", &totp, NOW, &audit).expect("confirm");
    let salt = store.user("bench").expect("user").expect("row").code_salt;

    let mut rows: Vec<(String, (f64, f64))> = vec![];
    let mut argon = vec![];
    for _ in 0..n {
        let c = Code::generate(codes::BACKUP_LEN);
        let t = Instant::now();
        std::hint::black_box(c.hash(&salt));
        argon.push(t.elapsed());
    }
    let argon = median_p95(argon);
    rows.push(("one argon2id evaluation".into(), argon));

    for left in [10u32, 1] {
        for right in [true, false] {
            let mut times = vec![];
            for _ in 0..n {
                // A fresh set with `left` codes (not timed).
                let mut ops = Ops {
                    cfg: &cfg,
                    store: store.as_mut(),
                    log: &mut log,
                    ctx: AuditCtx::default(),
                };
                let set = ops
                    .regenerate_backup_codes("bench", NOW)
                    .expect("regenerate");
                for c in set.iter().skip(left as usize) {
                    let v = attempt(store.as_mut(), &salt, c.as_str());
                    assert!(matches!(v, Verdict::Accepted { .. }));
                }
                let typed = if right {
                    set[0].display()
                } else {
                    Code::generate(codes::BACKUP_LEN).display()
                };
                let t = Instant::now();
                let v = attempt(store.as_mut(), &salt, &typed);
                times.push(t.elapsed());
                assert_eq!(matches!(v, Verdict::Accepted { .. }), right);
            }
            rows.push((
                format!(
                    "attempt, {left:>2} code{} left, {} code",
                    if left == 1 { " " } else { "s" },
                    if right { "right" } else { "wrong" }
                ),
                median_p95(times),
            ));
        }
    }

    println!("backup-code verification ({n} runs each)");
    println!(
        "{:<38} {:>10} {:>10} {:>12}",
        "case", "median ms", "p95 ms", "x argon2"
    );
    for (name, (med, p95)) in rows {
        println!("{name:<38} {med:>10.2} {p95:>10.2} {:>12.2}", med / argon.0);
    }
}
