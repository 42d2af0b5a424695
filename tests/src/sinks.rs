//! Real mail and HTTP servers on 127.0.0.1 for tests of codes sent by email
//! and SMS: `tests/fixtures/smtp_sink.py` (Debian's python3-aiosmtpd) and
//! `tests/fixtures/http_sink.py`, started per test and killed on drop.
use std::fs;
use std::io::Read;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;
use tempfile::TempDir;

use crate::workspace_dir;

/// The sender of [`SmtpSink::email_section`] and [`email_section_at`].
pub const EMAIL_FROM: &str = "crm2fa <crm2fa@test.example>";

/// How long a fixture may take to listen, or a message to arrive.
const SINK_TIMEOUT: Duration = Duration::from_secs(30);

/// Debian's Python, which sees Debian's python3-aiosmtpd (a `python3`
/// earlier on PATH may be another installation); `python3` where there is
/// none.
fn python() -> PathBuf {
    let debian = PathBuf::from("/usr/bin/python3");
    if debian.exists() {
        debian
    } else {
        PathBuf::from("python3")
    }
}

/// Panics, saying to run `make deps`, unless python3-aiosmtpd (the SMTP
/// server of `smtp_sink.py`) can be imported. Checked once per process.
pub fn require_aiosmtpd() {
    static MISSING: OnceLock<Option<String>> = OnceLock::new();
    let missing = MISSING.get_or_init(|| {
        let out = Command::new(python())
            .args(["-c", "import aiosmtpd.controller"])
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("run {}: {e}", python().display()));
        (!out.status.success()).then(|| String::from_utf8_lossy(&out.stderr).into_owned())
    });
    if let Some(err) = missing {
        panic!(
            "python3-aiosmtpd is missing (the SMTP server these tests send to): \
             run `make deps`, which installs it with apt-get\n{err}"
        );
    }
}

/// A server started from a fixture script, stopped when dropped.
#[allow(missing_debug_implementations)]
pub struct Sink {
    child: Child,
    /// The port it listens on, on 127.0.0.1.
    pub port: u16,
    dir: TempDir,
}

impl Sink {
    /// Start `tests/fixtures/<script>` with `--port-file`, `--dir` and
    /// `extra`; returns once it listens.
    fn start(script: &str, extra: &[&str]) -> Sink {
        let dir = tempfile::tempdir().expect("sink dir");
        let port_file = dir.path().join("port");
        let keep = dir.path().join("kept");
        fs::create_dir(&keep).expect("sink message dir");
        let path = workspace_dir().join("tests/fixtures").join(script);
        let mut child = Command::new(python())
            .arg(&path)
            .arg("--port-file")
            .arg(&port_file)
            .arg("--dir")
            .arg(&keep)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", path.display()));
        let deadline = Instant::now() + SINK_TIMEOUT;
        let port = loop {
            if let Ok(text) = fs::read_to_string(&port_file) {
                break text.trim().parse().expect("port number");
            }
            if let Some(status) = child.try_wait().expect("try_wait") {
                let mut err = String::new();
                if let Some(mut e) = child.stderr.take() {
                    let _ = e.read_to_string(&mut err);
                }
                panic!(
                    "{script} ended ({status}) before listening: {err}\n\
                     (python3-aiosmtpd is installed by `make deps`)"
                );
            }
            assert!(
                Instant::now() < deadline,
                "{script} did not start in {SINK_TIMEOUT:?}"
            );
            thread::sleep(Duration::from_millis(20));
        };
        Sink { child, port, dir }
    }

    fn kept(&self) -> PathBuf {
        self.dir.path().join("kept")
    }

    /// The files `<n>.<ext>` it kept so far, in arrival order.
    fn files(&self, ext: &str) -> Vec<String> {
        let mut found: Vec<(u64, PathBuf)> = fs::read_dir(self.kept())
            .expect("read sink dir")
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == ext))
            .filter_map(|p| {
                let n = p.file_stem()?.to_str()?.parse().ok()?;
                Some((n, p))
            })
            .collect();
        found.sort();
        found
            .into_iter()
            .map(|(_, p)| fs::read_to_string(&p).expect("read kept file"))
            .collect()
    }

    /// Wait until `n` files with the extension `ext` are kept; all of them.
    fn wait_for(&self, ext: &str, n: usize) -> Vec<String> {
        let deadline = Instant::now() + SINK_TIMEOUT;
        loop {
            let f = self.files(ext);
            if f.len() >= n {
                return f;
            }
            assert!(
                Instant::now() < deadline,
                "{n} message(s) expected, {} arrived",
                f.len()
            );
            thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An SMTP server keeping every message.
#[allow(missing_debug_implementations)]
pub struct SmtpSink(pub Sink);

impl SmtpSink {
    /// Start one (with `--auth USER:PASS` when `auth` is given).
    pub fn start(auth: Option<&str>) -> SmtpSink {
        let extra: Vec<&str> = auth.map(|a| vec!["--auth", a]).unwrap_or_default();
        SmtpSink::start_with(&extra)
    }

    /// Start one with more arguments of `smtp_sink.py`; panics with what to
    /// install when python3-aiosmtpd is missing.
    pub fn start_with(extra: &[&str]) -> SmtpSink {
        require_aiosmtpd();
        SmtpSink(Sink::start("smtp_sink.py", extra))
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.0.port
    }

    /// The messages so far, raw.
    pub fn messages(&self) -> Vec<String> {
        self.0.files("eml")
    }

    /// Wait until `n` messages arrived; all of them.
    pub fn wait_for(&self, n: usize) -> Vec<String> {
        self.0.wait_for("eml", n)
    }

    /// The `[email]` section that sends through this server.
    pub fn email_section(&self, extra: &str) -> String {
        email_section_at(self.port(), extra)
    }
}

/// The `[email]` section that sends to 127.0.0.1:`port` without TLS, from
/// [`EMAIL_FROM`], then `extra`.
pub fn email_section_at(port: u16, extra: &str) -> String {
    format!(
        "[email]\nsmtp_host = \"127.0.0.1\"\nsmtp_port = {port}\ntls = \"none\"\n\
         from = \"{EMAIL_FROM}\"\n{extra}"
    )
}

/// An HTTP server recording every request.
#[allow(missing_debug_implementations)]
pub struct HttpSink(pub Sink);

impl HttpSink {
    /// Start one answering `status`.
    pub fn start(status: u16) -> HttpSink {
        let s = status.to_string();
        HttpSink(Sink::start("http_sink.py", &["--status", &s]))
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.0.port
    }

    /// The requests so far.
    pub fn requests(&self) -> Vec<Value> {
        parse(self.0.files("json"))
    }

    /// Wait until `n` requests arrived; all of them.
    pub fn wait_for(&self, n: usize) -> Vec<Value> {
        parse(self.0.wait_for("json", n))
    }
}

fn parse(files: Vec<String>) -> Vec<Value> {
    files
        .iter()
        .map(|t| serde_json::from_str(t).expect("request JSON"))
        .collect()
}

/// The first run of `digits` digits standing alone in `text` (the code in
/// a message).
pub fn code_in(text: &str, digits: usize) -> Option<String> {
    text.split(|c: char| !c.is_ascii_digit())
        .find(|w| w.len() == digits)
        .map(String::from)
}

/// The built sending program.
pub fn send_program() -> PathBuf {
    let p = crate::artifact_dir().join("crm2fa-send");
    assert!(
        p.is_file(),
        "{} is missing: run `cargo build --workspace` first",
        p.display()
    );
    p
}

/// The `[delivery]` section using the built sending program.
pub fn delivery_section(extra: &str) -> String {
    format!(
        "[delivery]\nprogram = \"{}\"\ntimeout = \"5s\"\n{extra}",
        send_program().display()
    )
}

/// A dead port: bound, noted and closed again.
pub fn dead_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}
