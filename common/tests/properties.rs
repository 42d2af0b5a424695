//! Property tests of what the module parses from people and files: the
//! codes people type, the TOTP window, the configuration file and the
//! module's arguments. Each property holds for every input, hostile ones
//! included (NUL bytes, what invalid UTF-8 becomes, 10 kB strings, only
//! whitespace), and none of them may panic: the module runs this code
//! inside every login.
//!
//! Case counts stay modest so `cargo test` stays fast; raise them with
//! `PROPTEST_CASES=100000` for a longer hunt.

use std::collections::BTreeMap;
use std::path::Path;

use crm2fa_common::auth::{ModuleArgs, NonRoot};
use crm2fa_common::codes::{Code, BACKUP_LEN, RECOVERY_LEN};
use crm2fa_common::config::{Config, Enforce, FailMode, TotpConfig, Unenrolled, DEFAULT_PATH};
use crm2fa_common::crypto::Secret;
use crm2fa_common::qr::QrStyle;
use crm2fa_common::{totp, Error};
use proptest::prelude::*;

/// The code alphabet (Crockford's base32, lower case), as documented.
const ALPHABET: &str = "0123456789abcdefghjkmnpqrstvwxyz";

/// Whitespace a person, a client or a copy and paste may put in an answer.
const SPACES: &[&str] = &[
    " ", "\t", "\n", "\r\n", "\u{a0}", "\u{2003}", "\u{3000}", "\u{85}",
];

/// `n` cases (or `PROPTEST_CASES`); a failure prints its minimal input
/// rather than writing a regression file into the source tree.
fn cases(n: u32) -> ProptestConfig {
    ProptestConfig {
        failure_persistence: None,
        ..ProptestConfig::with_cases(n)
    }
}

// ---- strategies ------------------------------------------------------------

/// Strings a hostile or broken client may send.
fn hostile_string() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => any::<String>(),
        // What the module makes of invalid UTF-8: U+FFFD where bytes were.
        2 => prop::collection::vec(any::<u8>(), 0..64)
            .prop_map(|b| String::from_utf8_lossy(&b).into_owned()),
        2 => "[ \t\r\n\u{a0}\u{2003}\u{3000}\u{85}\u{2028}-]{0,32}",
        3 => "[0-9A-Za-z\u{0}\u{fffd} \t-]{0,24}",
        1 => (any::<char>(), 10_000usize..10_240).prop_map(|(c, n)| c.to_string().repeat(n)),
        1 => prop::collection::vec(any::<char>(), 10_000..10_100)
            .prop_map(|v| v.into_iter().collect::<String>()),
    ]
}

/// `s` with whitespace and dashes put between its characters, the way
/// people type and paste codes.
fn decorated(s: &str) -> impl Strategy<Value = String> {
    let chars: Vec<char> = s.chars().collect();
    let n = chars.len();
    prop::collection::vec(
        prop_oneof![
            3 => Just(""),
            1 => Just("-"),
            1 => Just("--"),
            2 => prop::sample::select(SPACES),
        ],
        n + 1,
    )
    .prop_map(move |seps| {
        let mut out = String::new();
        for (i, sep) in seps.iter().enumerate() {
            out.push_str(sep);
            if let Some(c) = chars.get(i) {
                out.push(*c);
            }
        }
        out
    })
}

/// Every `now` the clock might say, the absurd ones included.
fn any_now() -> impl Strategy<Value = i64> {
    prop_oneof![
        4 => 0i64..4_000_000_000,
        2 => any::<i64>(),
        1 => prop::sample::select(vec![
            i64::MIN,
            i64::MIN + 1,
            -1,
            0,
            1,
            29,
            30,
            i64::MAX - 10,
            i64::MAX - 1,
            i64::MAX,
            i64::MAX / 2,
            i64::MAX / 300,
        ]),
        1 => (i64::MAX - 1_000_000)..=i64::MAX,
    ]
}

fn totp_config() -> impl Strategy<Value = TotpConfig> {
    (
        prop::sample::select(vec![6u32, 8]),
        prop_oneof![Just(30u64), Just(1u64), Just(300u64), 1u64..=300],
        0u32..=10,
    )
        .prop_map(|(digits, period, skew)| TotpConfig {
            digits,
            period,
            skew,
            issuer: "crm2fa".into(),
        })
}

fn secret() -> impl Strategy<Value = Secret> {
    prop::collection::vec(any::<u8>(), 0..=64).prop_map(Secret::new)
}

/// What `matching_step` must answer, computed the slow, obvious way: the
/// first step of the window, none below 0, whose code is `typed` without
/// its whitespace and dashes.
fn window_oracle(cfg: &TotpConfig, secret: &Secret, typed: &str, now: i64) -> Option<i64> {
    let bare: String = typed
        .chars()
        .filter(|c| !c.is_whitespace() && *c != '-')
        .collect();
    let current = totp::step_at(cfg, now);
    let skew = i64::from(cfg.skew);
    (-skew..=skew)
        .filter_map(|d| current.checked_add(d))
        .filter(|s| *s >= 0)
        .find(|s| totp::code_at_step(cfg, secret, *s).as_str() == bare)
}

// ---- the code parser ---------------------------------------------------------

proptest! {
    #![proptest_config(cases(256))]

    #[test]
    fn normalize_never_panics_and_leaves_only_canonical_characters(s in hostile_string()) {
        let c = Code::normalize(&s);
        let n = c.as_str();
        prop_assert!(n.chars().count() <= s.chars().count());
        prop_assert!(!n.chars().any(|ch| ch.is_whitespace() || ch == '-'), "{n:?}");
        prop_assert!(!n.chars().any(|ch| ch.is_ascii_uppercase()), "{n:?}");
        prop_assert!(!n.contains(['o', 'i', 'l']), "look-alikes left in {n:?}");
        // Nothing but whitespace and dashes: nothing left (not a guess).
        let only_blank = s.chars().all(|ch| ch.is_whitespace() || ch == '-');
        prop_assert_eq!(n.is_empty(), only_blank);
    }

    #[test]
    fn normalize_is_idempotent(s in hostile_string()) {
        let once = Code::normalize(&s);
        let twice = Code::normalize(once.as_str());
        prop_assert_eq!(once.as_str(), twice.as_str());
    }

    #[test]
    fn a_generated_code_reads_back_from_its_display_form(len in 0usize..=40) {
        let c = Code::generate(len);
        prop_assert!(c.is_code_of_len(len));
        let shown = c.display();
        prop_assert_eq!(Code::normalize(&shown), c.clone());
        // Groups of four joined by dashes.
        for (i, group) in shown.split('-').enumerate() {
            let last = i == len.saturating_sub(1) / 4;
            prop_assert!(group.len() == 4 || (last && !group.is_empty()) || len == 0, "{:?}", shown.as_str());
        }
        // And it survives being typed in upper case with spaces.
        let typed = shown.to_ascii_uppercase().replace('-', " ");
        prop_assert_eq!(Code::normalize(&typed), c);
    }

    #[test]
    fn is_code_of_len_holds_exactly_for_the_alphabet_and_the_length(
        (s, len) in prop::sample::select(vec![0usize, 1, 6, BACKUP_LEN, RECOVERY_LEN, 13])
            .prop_flat_map(|len| {
                let near = len.saturating_sub(1)..=len + 1;
                let s = prop_oneof![
                    hostile_string(),
                    // Of about the length, with a `u` or a stray byte now and then.
                    prop::collection::vec(
                        prop_oneof![8 => "[0-9a-zA-Z]", 1 => "[uU]", 1 => "[\u{0}\u{fffd}é -]"],
                        near,
                    )
                    .prop_map(|v| v.concat()),
                ];
                (s, Just(len))
            }),
    ) {
        let c = Code::normalize(&s);
        let n = c.as_str();
        let expected = n.chars().count() == len && n.chars().all(|ch| ALPHABET.contains(ch));
        prop_assert_eq!(c.is_code_of_len(len), expected, "{:?} len {}", n, len);
    }

    #[test]
    fn codes_over_the_alphabet_and_its_look_alikes_are_codes(
        s in "[0-9a-hjkmnp-tv-zA-HJKMNP-TV-ZoOiIlL]{0,16}",
    ) {
        let len = s.chars().count();
        prop_assert!(Code::normalize(&s).is_code_of_len(len), "{s:?}");
        prop_assert!(!Code::normalize(&s).is_code_of_len(len + 1));
        // A `u` (left out so nothing reads as `v`) or any other stray
        // character spoils it.
        for stray in ["u", "U", "\0", "\u{fffd}", "!", "é", "\u{ff10}"] {
            let spoiled = format!("{s}{stray}");
            prop_assert!(!Code::normalize(&spoiled).is_code_of_len(len + 1), "{spoiled:?}");
        }
    }

    #[test]
    fn dashes_whitespace_and_case_do_not_change_a_code(
        (plain, typed) in "[0-9a-zA-Z]{1,16}".prop_flat_map(|s| {
            let flipped: String = s
                .chars()
                .map(|c| if c.is_ascii_lowercase() { c.to_ascii_uppercase() } else { c.to_ascii_lowercase() })
                .collect();
            (Just(s), decorated(&flipped))
        }),
    ) {
        let a = Code::normalize(&plain);
        let b = Code::normalize(&typed);
        prop_assert_eq!(a.as_str(), b.as_str(), "{:?} vs {:?}", plain, typed);
        for len in [BACKUP_LEN, RECOVERY_LEN, plain.len()] {
            prop_assert_eq!(a.is_code_of_len(len), b.is_code_of_len(len));
        }
    }
}

// ---- the TOTP window -----------------------------------------------------------

proptest! {
    #![proptest_config(cases(256))]

    #[test]
    fn matching_step_never_panics_and_never_leaves_the_window(
        cfg in totp_config(),
        secret in secret(),
        typed in prop_oneof![hostile_string(), "[0-9]{6}|[0-9]{8}|[0-9 \t-]{6,12}"],
        now in any_now(),
    ) {
        let got = totp::matching_step(&cfg, &secret, &typed, now);
        prop_assert_eq!(got, window_oracle(&cfg, &secret, &typed, now));
        if let Some(step) = got {
            let current = totp::step_at(&cfg, now);
            prop_assert!(step >= 0);
            prop_assert!(step.abs_diff(current) <= u64::from(cfg.skew));
        }
    }

    /// The code of a step `offset` steps from now, typed with spaces and
    /// dashes: found exactly when the step is in the window (or, rarely, when
    /// a step in the window happens to have the same code).
    #[test]
    fn matching_step_accepts_the_window_and_nothing_else(
        (cfg, offset) in totp_config().prop_flat_map(|c| {
            let reach = i64::from(c.skew) + 3;
            (Just(c), -reach..=reach)
        }),
        secret in secret(),
        now in any_now(),
        seps in prop::collection::vec(prop_oneof![Just(""), Just("-"), Just(" "), Just("\t")], 9),
    ) {
        let current = totp::step_at(&cfg, now);
        let Some(step) = current.checked_add(offset).filter(|s| *s >= 0) else {
            return Ok(());
        };
        let code = totp::code_at_step(&cfg, &secret, step);
        prop_assert_eq!(code.len(), cfg.digits as usize);
        let mut typed = String::new();
        for (i, c) in code.chars().enumerate() {
            typed.push_str(seps[i]);
            typed.push(c);
        }
        typed.push_str(seps[8]);
        let got = totp::matching_step(&cfg, &secret, &typed, now);
        prop_assert_eq!(got, window_oracle(&cfg, &secret, &typed, now));
        if offset.unsigned_abs() <= u64::from(cfg.skew) {
            // In the window: found, at this step or an earlier one with the
            // same code.
            prop_assert!(matches!(got, Some(s) if s <= step), "{got:?} for step {step}");
        }
        if let Some(s) = got {
            let at = totp::code_at_step(&cfg, &secret, s);
            prop_assert_eq!(at.as_str(), code.as_str());
        }
        // One more digit, one digit less, or a stray character: no match.
        for bad in [format!("{typed}0"), typed[..typed.len() - 1].to_string(), format!("{typed}\0"), format!("{typed}x")] {
            let bare: String = bad.chars().filter(|c| !c.is_whitespace() && *c != '-').collect();
            if bare.len() != cfg.digits as usize {
                prop_assert_eq!(totp::matching_step(&cfg, &secret, &bad, now), None, "{:?}", bad);
            }
        }
    }
}

// ---- the configuration file ------------------------------------------------------

const CONFIG_PATH: &str = "/etc/crm2fa/crm2fa.toml";

/// What a key holds.
#[derive(Debug, Clone, Copy)]
enum Kind {
    /// An integer, interesting around `lo..=hi`.
    Int(i64, i64),
    Str,
    Path,
    Enum(&'static [&'static str]),
    Duration,
    Strings,
    /// Unix groups: only "root", resolved through NSS.
    Groups,
    Headers,
}

const KEYS: &[(&str, &[(&str, Kind)])] = &[
    ("store", &[("path", Kind::Path), ("key_file", Kind::Path)]),
    (
        "totp",
        &[
            ("digits", Kind::Int(6, 8)),
            ("period", Kind::Int(1, 300)),
            ("skew", Kind::Int(0, 10)),
            ("issuer", Kind::Str),
        ],
    ),
    (
        "policy",
        &[
            ("enforce", Kind::Enum(&["all", "groups", "opt-in"])),
            ("enforce_groups", Kind::Groups),
            ("exempt_groups", Kind::Groups),
            ("unenrolled", Kind::Enum(&["deny", "allow", "enroll"])),
            ("protected_users", Kind::Strings),
            ("failmode", Kind::Enum(&["secure", "safe"])),
            ("prompts", Kind::Int(1, 10)),
        ],
    ),
    (
        "lockout",
        &[
            ("max_failures", Kind::Int(1, 1000)),
            ("lock_seconds", Kind::Int(1, 365 * 86400)),
            ("max_lock_seconds", Kind::Int(1, 365 * 86400)),
        ],
    ),
    ("remember", &[("days", Kind::Int(0, 365))]),
    ("backup_codes", &[("count", Kind::Int(1, 100))]),
    (
        "email",
        &[
            ("smtp_host", Kind::Str),
            ("smtp_port", Kind::Int(0, 65535)),
            ("tls", Kind::Enum(&["none", "starttls", "tls"])),
            ("from", Kind::Str),
            ("username", Kind::Str),
            ("password_file", Kind::Path),
            ("code_ttl", Kind::Duration),
            ("subject", Kind::Str),
            ("body", Kind::Str),
        ],
    ),
    (
        "sms",
        &[
            ("command", Kind::Strings),
            ("url", Kind::Str),
            ("method", Kind::Enum(&["POST", "PUT", "GET"])),
            ("headers", Kind::Headers),
            ("body_template", Kind::Str),
            ("credentials_file", Kind::Path),
            ("code_ttl", Kind::Duration),
        ],
    ),
    (
        "delivery",
        &[
            ("program", Kind::Path),
            ("timeout", Kind::Duration),
            ("max_sends", Kind::Int(1, 1000)),
            ("send_window", Kind::Duration),
        ],
    ),
];

/// TOML text of a value, as the `toml` crate writes it.
fn toml_text(v: toml::Value) -> String {
    v.to_string()
}

fn toml_str(s: &str) -> String {
    toml_text(toml::Value::String(s.to_string()))
}

fn toml_strings<'a>(items: impl IntoIterator<Item = &'a str>) -> String {
    toml_text(toml::Value::Array(
        items
            .into_iter()
            .map(|s| toml::Value::String(s.to_string()))
            .collect(),
    ))
}

/// A value written for a key: `canonical` when it is of the key's type and
/// written the way [`render`] writes it back.
#[derive(Debug, Clone)]
struct Written {
    text: String,
    canonical: bool,
}

fn canonical(text: String) -> Written {
    Written {
        text,
        canonical: true,
    }
}

fn other(text: String) -> Written {
    Written {
        text,
        canonical: false,
    }
}

/// A well-formed TOML value of any type. `with_strings = false` keeps
/// arrays of strings out (they would name groups to look up).
fn any_toml_value(with_strings: bool) -> BoxedStrategy<String> {
    let scalar = prop_oneof![
        any::<i64>().prop_map(|n| n.to_string()),
        any::<f64>().prop_map(|f| toml_text(toml::Value::Float(f))),
        any::<bool>().prop_map(|b| b.to_string()),
        Just("1979-05-27T07:32:00Z".to_string()),
        Just("0x10".to_string()),
        Just("inf".to_string()),
        Just("{}".to_string()),
        Just("[]".to_string()),
        Just("[1, 2.5, true]".to_string()),
        Just("{ a = 1 }".to_string()),
    ];
    if with_strings {
        prop_oneof![
            3 => scalar,
            2 => any::<String>().prop_map(|s| toml_str(&s)),
            1 => prop::collection::vec(any::<String>(), 0..3)
                .prop_map(|v| toml_strings(v.iter().map(String::as_str))),
        ]
        .boxed()
    } else {
        scalar.boxed()
    }
}

/// Text that is not a TOML value at all.
fn broken_value() -> impl Strategy<Value = String> {
    prop::sample::select(vec![
        "",
        "\"unterminated",
        "[",
        "[1,",
        "{ a = ",
        "'''",
        "= =",
        "12abc",
        "\"\\q\"",
        "\"\0\"",
        "-",
        "\"\"\"\nx = 1\n",
    ])
    .prop_map(String::from)
}

/// A value for a key of kind `kind`: with `valid`, of its type and in its
/// range (the checks between keys may still refuse it); otherwise mostly of
/// its type, in and around its range, sometimes of another type or broken.
fn value_for(kind: Kind, valid: bool) -> BoxedStrategy<Written> {
    let typed: BoxedStrategy<Written> = match kind {
        Kind::Int(lo, hi) if valid => (lo..=hi).prop_map(|n| canonical(n.to_string())).boxed(),
        Kind::Int(lo, hi) => prop_oneof![
            4 => lo.saturating_sub(2)..=hi.saturating_add(2),
            1 => prop::sample::select(vec![
                lo, hi, -1, 0, i64::from(u32::MAX), i64::from(u32::MAX) + 1, i64::MAX, i64::MIN,
            ]),
            1 => any::<i64>(),
        ]
        .prop_map(|n| canonical(n.to_string()))
        .boxed(),
        Kind::Str => prop_oneof![
            3 => "[a-z0-9.@<> {}/-]{1,20}",
            1 => any::<String>(),
        ]
        .prop_map(|s| canonical(toml_str(&s)))
        .boxed(),
        Kind::Path => prop_oneof![
            // Absolute paths read back as written.
            3 => "/[a-z0-9 ._/-]{0,30}".prop_map(|s| canonical(toml_str(&s))),
            // Relative ones are anchored to the config's directory.
            2 => "[a-z0-9 ._/-]{0,20}".prop_map(|s| other(toml_str(&s))),
            1 => any::<String>().prop_map(|s| other(toml_str(&s))),
        ]
        .boxed(),
        Kind::Enum(names) if valid => prop::sample::select(names)
            .prop_map(|s| canonical(toml_str(s)))
            .boxed(),
        Kind::Enum(names) => prop_oneof![
            4 => prop::sample::select(names).prop_map(|s| canonical(toml_str(s))),
            1 => "[a-zA-Z-]{0,10}".prop_map(|s| other(toml_str(&s))),
        ]
        .boxed(),
        Kind::Duration if valid => prop_oneof![
            // Seconds, the way a validated duration is written back.
            3 => (1u64..=10 * 365 * 86400).prop_map(|n| canonical(toml_str(&format!("{n}s")))),
            1 => prop::sample::select(vec!["10m", "48h", "2d", "1 day", " 5m ", "1h 30m"])
                .prop_map(|s| other(toml_str(s))),
        ]
        .boxed(),
        Kind::Duration => prop_oneof![
            3 => (0u64..=400_000_000).prop_map(|n| canonical(toml_str(&format!("{n}s")))),
            2 => prop::sample::select(vec![
                "10m", "48h", "2d", "1 day", "0s", "soon", "", " 5m ", "11y", "-5s",
                "9999999999999999999999h", "1ns", "999ms",
            ])
            .prop_map(|s| other(toml_str(s))),
            1 => any::<String>().prop_map(|s| other(toml_str(&s))),
        ]
        .boxed(),
        Kind::Strings => prop::collection::vec("[a-z0-9 /.-]{0,8}", 0..4)
            .prop_map(|v| canonical(toml_strings(v.iter().map(String::as_str))))
            .boxed(),
        Kind::Groups => prop::sample::select(vec![0usize, 1, 2])
            .prop_map(|n| canonical(toml_strings(std::iter::repeat_n("root", n))))
            .boxed(),
        Kind::Headers => prop::collection::btree_map("[A-Za-z-]{1,8}", "[ -~]{0,10}", 0..3)
            .prop_map(|m| canonical(headers_text(&m)))
            .boxed(),
    };
    if valid {
        return typed;
    }
    let with_strings = !matches!(kind, Kind::Groups);
    prop_oneof![
        6 => typed,
        1 => any_toml_value(with_strings).prop_map(other),
        1 => broken_value().prop_map(other),
    ]
    .boxed()
}

fn headers_text(m: &BTreeMap<String, String>) -> String {
    let table: toml::map::Map<String, toml::Value> = m
        .iter()
        .map(|(k, v)| (k.clone(), toml::Value::String(v.clone())))
        .collect();
    toml_text(toml::Value::Table(table))
}

/// A configuration file built from the known sections and keys: which
/// sections, which keys, in which order, with which values.
#[derive(Debug, Clone)]
struct Generated {
    sections: Vec<(&'static str, Vec<(&'static str, Written)>)>,
}

/// Half of them with every value of its key's type and in range.
fn generated_config() -> impl Strategy<Value = Generated> {
    any::<bool>().prop_flat_map(|valid| {
        let sections: Vec<_> = KEYS
            .iter()
            .map(|(section, keys)| {
                let keys: Vec<_> = keys
                    .iter()
                    .map(|(key, kind)| {
                        prop::option::weighted(0.5, value_for(*kind, valid))
                            .prop_map(move |v| (*key, v))
                    })
                    .collect();
                prop::option::weighted(0.6, (keys, any::<bool>())).prop_map(move |chosen| {
                    chosen.map(|(keys, reverse)| {
                        let mut kv: Vec<_> = keys
                            .into_iter()
                            .filter_map(|(k, v)| v.map(|v| (k, v)))
                            .collect();
                        if reverse {
                            kv.reverse();
                        }
                        (*section, kv)
                    })
                })
            })
            .collect();
        sections.prop_map(|s| Generated {
            sections: s.into_iter().flatten().collect(),
        })
    })
}

/// Where a key was written: its section, and the lines its value spans.
#[derive(Debug)]
struct Placed {
    section: &'static str,
    key: &'static str,
    first_line: usize,
    last_line: usize,
    written: Written,
}

impl Generated {
    fn text(&self) -> (String, Vec<Placed>) {
        let mut text = String::new();
        let mut placed = vec![];
        let mut line = 1;
        for (section, kv) in &self.sections {
            text.push_str(&format!("[{section}]\n"));
            line += 1;
            for (key, written) in kv {
                text.push_str(&format!("{key} = {}\n", written.text));
                let lines = 1 + written.text.matches('\n').count();
                placed.push(Placed {
                    section,
                    key,
                    first_line: line,
                    last_line: line + lines - 1,
                    written: written.clone(),
                });
                line += lines;
            }
        }
        (text, placed)
    }

    /// Every value is well-formed TOML: errors come from types and checks.
    fn well_formed(&self) -> bool {
        self.sections
            .iter()
            .flat_map(|(_, kv)| kv)
            .all(|(_, w)| toml::from_str::<toml::Value>(&format!("x = {}", w.text)).is_ok())
    }
}

fn enforce_name(e: Enforce) -> &'static str {
    match e {
        Enforce::All => "all",
        Enforce::Groups => "groups",
        Enforce::OptIn => "opt-in",
    }
}

fn unenrolled_name(u: Unenrolled) -> &'static str {
    match u {
        Unenrolled::Deny => "deny",
        Unenrolled::Allow => "allow",
        Unenrolled::Enroll => "enroll",
    }
}

fn failmode_name(f: FailMode) -> &'static str {
    match f {
        FailMode::Secure => "secure",
        FailMode::Safe => "safe",
    }
}

fn tls_name(t: crm2fa_common::config::Tls) -> &'static str {
    use crm2fa_common::config::Tls;
    match t {
        Tls::None => "none",
        Tls::Starttls => "starttls",
        Tls::Tls => "tls",
    }
}

fn path_text(p: &Path) -> String {
    toml_str(&p.to_string_lossy())
}

fn opt_path_text(p: Option<&std::path::PathBuf>) -> String {
    p.map(|p| path_text(p)).unwrap_or_else(|| toml_str(""))
}

/// The value `cfg` holds for `[section] key`, written as TOML; `None` for
/// an optional section the configuration does not have.
fn value_of(cfg: &Config, section: &str, key: &str) -> Option<String> {
    let names =
        |g: &[crm2fa_common::config::GroupRef]| toml_strings(g.iter().map(|g| g.name.as_str()));
    let v = match (section, key) {
        ("store", "path") => path_text(&cfg.store.path),
        ("store", "key_file") => path_text(&cfg.store.key_file),
        ("totp", "digits") => cfg.totp.digits.to_string(),
        ("totp", "period") => cfg.totp.period.to_string(),
        ("totp", "skew") => cfg.totp.skew.to_string(),
        ("totp", "issuer") => toml_str(&cfg.totp.issuer),
        ("policy", "enforce") => toml_str(enforce_name(cfg.policy.enforce)),
        ("policy", "enforce_groups") => names(&cfg.policy.enforce_groups),
        ("policy", "exempt_groups") => names(&cfg.policy.exempt_groups),
        ("policy", "unenrolled") => toml_str(unenrolled_name(cfg.policy.unenrolled)),
        ("policy", "protected_users") => {
            toml_strings(cfg.policy.protected_users.iter().map(String::as_str))
        }
        ("policy", "failmode") => toml_str(failmode_name(cfg.policy.failmode)),
        ("policy", "prompts") => cfg.policy.prompts.to_string(),
        ("lockout", "max_failures") => cfg.lockout.max_failures.to_string(),
        ("lockout", "lock_seconds") => cfg.lockout.lock_seconds.to_string(),
        ("lockout", "max_lock_seconds") => cfg.lockout.max_lock_seconds.to_string(),
        ("remember", "days") => cfg.remember_days.to_string(),
        ("backup_codes", "count") => cfg.backup_code_count.to_string(),
        ("email", k) => {
            let e = cfg.email.as_ref()?;
            match k {
                "smtp_host" => toml_str(&e.smtp_host),
                "smtp_port" => e.smtp_port.to_string(),
                "tls" => toml_str(tls_name(e.tls)),
                "from" => toml_str(&e.from),
                "username" => toml_str(&e.username),
                "password_file" => opt_path_text(e.password_file.as_ref()),
                "code_ttl" => toml_str(&format!("{}s", e.code_ttl)),
                "subject" => toml_str(&e.subject),
                "body" => toml_str(&e.body),
                _ => unreachable!("unknown key [email] {k}"),
            }
        }
        ("sms", k) => {
            let s = cfg.sms.as_ref()?;
            match k {
                "command" => toml_strings(s.command.iter().map(String::as_str)),
                "url" => toml_str(&s.url),
                "method" => toml_str(&s.method),
                "headers" => headers_text(&s.headers),
                "body_template" => toml_str(&s.body_template),
                "credentials_file" => opt_path_text(s.credentials_file.as_ref()),
                "code_ttl" => toml_str(&format!("{}s", s.code_ttl)),
                _ => unreachable!("unknown key [sms] {k}"),
            }
        }
        ("delivery", "program") => toml_str(&cfg.delivery.program.display().to_string()),
        ("delivery", "timeout") => toml_str(&format!("{}s", cfg.delivery.timeout)),
        ("delivery", "max_sends") => cfg.delivery.max_sends.to_string(),
        ("delivery", "send_window") => toml_str(&format!("{}s", cfg.delivery.send_window)),
        (s, k) => unreachable!("unknown key [{s}] {k}"),
    };
    Some(v)
}

/// `cfg` written back as a configuration file, every key spelled out.
fn render(cfg: &Config) -> String {
    let mut text = String::new();
    for (section, keys) in KEYS {
        let values: Vec<_> = keys
            .iter()
            .filter_map(|(key, _)| value_of(cfg, section, key).map(|v| (key, v)))
            .collect();
        if values.is_empty() {
            continue;
        }
        text.push_str(&format!("[{section}]\n"));
        for (key, v) in values {
            text.push_str(&format!("{key} = {v}\n"));
        }
    }
    text
}

/// Checks every configuration error must pass, whatever the text.
fn check_error(err: &Error, text: &str, path: &Path) -> Result<(), TestCaseError> {
    let shown = err.to_string();
    let p = path.display().to_string();
    prop_assert!(shown.starts_with(&p), "{shown:?} does not start with {p:?}");
    let lines = text.lines().count().max(1) + 1;
    match err {
        Error::ConfigSyntax {
            line,
            column,
            path: at,
            ..
        } => {
            prop_assert_eq!(at.as_path(), path);
            prop_assert!(
                (1..=lines).contains(line),
                "line {} of {}: {}",
                line,
                lines,
                shown
            );
            prop_assert!(*column >= 1);
            prop_assert!(
                shown.starts_with(&format!("{p}:{line}:{column}: ")),
                "{shown}"
            );
        }
        Error::ConfigInvalid { location, message } => {
            prop_assert!(location.starts_with(&p));
            let rest = &location[p.len()..];
            if let Some(n) = rest.strip_prefix(':') {
                let n: usize = n
                    .parse()
                    .map_err(|_| TestCaseError::fail(format!("{location:?}")))?;
                prop_assert!((1..=lines).contains(&n), "{shown}");
            } else {
                prop_assert_eq!(rest, "", "{}", shown);
            }
            prop_assert!(message.starts_with('['), "{shown}");
        }
        other => prop_assert!(false, "not a configuration error: {other:?}"),
    }
    Ok(())
}

/// The `[section] key` an invalid-value error is about.
fn invalid_key(message: &str) -> Option<(&str, &str)> {
    let rest = message.strip_prefix('[')?;
    let (section, rest) = rest.split_once("] ")?;
    let (key, _) = rest.split_once(':')?;
    Some((section, key))
}

/// Pieces of TOML, to build texts the parser has to read far into.
fn toml_soup() -> impl Strategy<Value = String> {
    let mut pieces: Vec<String> = vec![
        "[",
        "]",
        "[[",
        "]]",
        "=",
        " = ",
        "\n",
        "\r\n",
        "#",
        "\"",
        "'",
        "\"\"\"",
        "'''",
        ",",
        "{",
        "}",
        ".",
        " ",
        "\t",
        "\\",
        "\\u",
        "\0",
        "\u{fffd}",
        "é",
        "1",
        "-1",
        "1e400",
        "0x",
        "true",
        "1979-05-27",
        "T07:32:00",
        "nan",
        "digits",
        "[store]",
        "[totp]",
        "[policy]",
        "[lockout]",
        "[email]",
        "[sms]",
        "[remember]",
        "[backup_codes]",
        "[delivery]",
        "[totp.x]",
        "[[sms]]",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    for (_, keys) in KEYS {
        for (key, kind) in *keys {
            // Group names go through NSS: keep them out of the soup.
            if !matches!(kind, Kind::Groups) {
                pieces.push((*key).to_string());
            }
        }
    }
    prop::collection::vec(prop::sample::select(pieces), 0..60).prop_map(|v| v.concat())
}

fn config_path() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec![
        CONFIG_PATH,
        "/srv/with space/c.toml",
        "/c.toml",
        "/",
        "crm2fa.toml",
        "",
        "dir/\u{fffd}.toml",
    ])
}

proptest! {
    #![proptest_config(cases(256))]

    #[test]
    fn config_parse_never_panics_on_any_text(
        text in prop_oneof![
            2 => any::<String>(),
            1 => prop::collection::vec(any::<u8>(), 0..200)
                .prop_map(|b| String::from_utf8_lossy(&b).into_owned()),
            3 => toml_soup(),
            1 => hostile_string(),
        ],
        path in config_path(),
    ) {
        let path = Path::new(path);
        if let Err(e) = Config::parse(&text, path) {
            check_error(&e, &text, path)?;
        }
    }

    #[test]
    fn config_from_known_keys_parses_or_names_file_and_line(
        g in generated_config(),
        path in config_path(),
    ) {
        let (text, placed) = g.text();
        let path = Path::new(path);
        let Err(e) = Config::parse(&text, path) else {
            return Ok(());
        };
        check_error(&e, &text, path)?;
        match &e {
            Error::ConfigInvalid { location, message } => {
                let (section, key) = invalid_key(message)
                    .ok_or_else(|| TestCaseError::fail(format!("no [section] key in {message:?}")))?;
                // A key the file sets is named with its line. (A check
                // between a written key and a default one, e.g. a
                // lock_seconds above the default max_lock_seconds, is about
                // a key the file does not have: the file alone is named.)
                if let Some(at) = placed.iter().find(|p| p.section == section && p.key == key) {
                    let expected = format!("{}:{}", path.display(), at.first_line);
                    prop_assert_eq!(location, &expected, "{}\n{}", e, text);
                }
            }
            Error::ConfigSyntax { line, .. } if g.well_formed() => {
                // Only types and unknown keys can be wrong: the line is one
                // a key or its value was written on.
                prop_assert!(
                    placed.iter().any(|p| (p.first_line..=p.last_line).contains(line)),
                    "{}\n{}", e, text
                );
            }
            _ => {}
        }
    }

    #[test]
    fn a_config_that_parses_reads_back_identically_from_its_values(
        g in generated_config(),
        path in prop::sample::select(vec![CONFIG_PATH, "/srv/with space/c.toml", "/c.toml", "/"]),
    ) {
        let (text, placed) = g.text();
        let path = Path::new(path);
        let Ok(cfg) = Config::parse(&text, path) else {
            return Ok(());
        };
        // Every value written in the key's own type reads back as written
        // (when no broken value swallowed the lines after it).
        let checkable = g.well_formed();
        for p in placed.iter().filter(|p| checkable && p.written.canonical) {
            let held = value_of(&cfg, p.section, p.key);
            prop_assert_eq!(held.as_deref(), Some(p.written.text.as_str()), "[{}] {}\n{}", p.section, p.key, text);
        }
        // And the configuration written back from its values is the same.
        let again_text = render(&cfg);
        let again = Config::parse(&again_text, path)
            .map_err(|e| TestCaseError::fail(format!("{e}\n{again_text}")))?;
        prop_assert_eq!(format!("{cfg:?}"), format!("{again:?}"), "{}", again_text);
    }
}

#[test]
fn the_shipped_config_reads_back_identically_from_its_values() {
    let path = Path::new(CONFIG_PATH);
    let cfg = Config::parse(crm2fa_common::config::EXAMPLE, path).expect("shipped config");
    let again = Config::parse(&render(&cfg), path).expect("rendered config");
    assert_eq!(format!("{cfg:?}"), format!("{again:?}"));
}

// ---- the module's arguments ---------------------------------------------------------

fn module_arg() -> impl Strategy<Value = String> {
    prop_oneof![
        2 => prop::sample::select(vec![
            "debug", "debug=1", "DEBUG", "config=", "config", "qr=", "qr=unicode", "qr=ascii",
            "qr=none", "qr=ASCII", "nonroot=ignore", "nonroot=deny", "nonroot=", "nonroot",
            "=", "==", "", "config==", "qr=ascii=1", " debug",
        ])
        .prop_map(String::from),
        2 => "config=[ -~]{0,20}",
        1 => "[a-z]{1,8}=[ -~]{0,8}",
        2 => any::<String>(),
        1 => hostile_string(),
    ]
}

/// What one argument does, the way the module's documentation says.
#[derive(Debug, PartialEq)]
enum Effect {
    Config(String),
    Qr(QrStyle),
    NonRoot(NonRoot),
    Debug,
    Unknown,
}

fn effect(a: &str) -> Effect {
    if a == "debug" {
        return Effect::Debug;
    }
    match a.split_once('=') {
        Some(("config", p)) if !p.is_empty() => Effect::Config(p.to_string()),
        Some(("qr", "unicode")) => Effect::Qr(QrStyle::Unicode),
        Some(("qr", "ascii")) => Effect::Qr(QrStyle::Ascii),
        Some(("qr", "none")) => Effect::Qr(QrStyle::None),
        Some(("nonroot", "ignore")) => Effect::NonRoot(NonRoot::Ignore),
        Some(("nonroot", "deny")) => Effect::NonRoot(NonRoot::Deny),
        _ => Effect::Unknown,
    }
}

fn check_module_args(args: &[&str]) -> Result<(), TestCaseError> {
    let parsed = ModuleArgs::parse(args.iter().copied());
    let effects: Vec<_> = args.iter().map(|a| effect(a)).collect();
    let unknown: Vec<_> = args
        .iter()
        .zip(&effects)
        .filter(|(_, e)| **e == Effect::Unknown)
        .map(|(a, _)| a.to_string())
        .collect();
    // Every argument not understood is kept, in order, for the log.
    prop_assert_eq!(&parsed.unknown, &unknown);
    // The last one of each kind wins; the defaults stand otherwise.
    let config = effects
        .iter()
        .rev()
        .find_map(|e| match e {
            Effect::Config(p) => Some(p.as_str()),
            _ => None,
        })
        .unwrap_or(DEFAULT_PATH);
    prop_assert_eq!(parsed.config.as_os_str().to_str(), Some(config));
    let qr = effects
        .iter()
        .rev()
        .find_map(|e| match e {
            Effect::Qr(q) => Some(*q),
            _ => None,
        })
        .unwrap_or(QrStyle::Unicode);
    prop_assert_eq!(parsed.qr, qr);
    let nonroot = effects
        .iter()
        .rev()
        .find_map(|e| match e {
            Effect::NonRoot(n) => Some(*n),
            _ => None,
        })
        .unwrap_or(NonRoot::Ignore);
    prop_assert_eq!(parsed.nonroot, nonroot);
    prop_assert_eq!(parsed.debug, effects.contains(&Effect::Debug));
    Ok(())
}

proptest! {
    #![proptest_config(cases(256))]

    #[test]
    fn module_args_never_panic_and_keep_every_unknown_argument(
        args in prop::collection::vec(module_arg(), 0..12),
    ) {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        check_module_args(&args)?;
    }

    #[test]
    fn module_args_from_a_pam_line_split_on_whitespace(line in hostile_string()) {
        let args: Vec<&str> = line.split_whitespace().collect();
        check_module_args(&args)?;
    }
}
