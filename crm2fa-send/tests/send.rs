//! `crm2fa-send` against real servers on 127.0.0.1: the SMTP and HTTP
//! servers of `crm2fa_tests::sinks` (tests/fixtures/smtp_sink.py, aiosmtpd,
//! and tests/fixtures/http_sink.py), started for each test and killed after
//! it; and SMS commands written into the test's directory. The program is
//! run as the PAM module runs it: `--config CONFIG`, an empty environment
//! but PATH, one JSON message on standard input.
//!
//! Runs as root: the configuration and the secret files must be root's.

#![forbid(unsafe_code)]

use std::fs;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;
use std::os::unix::process::CommandExt;

use crm2fa_tests::sinks::{dead_port, email_section_at, HttpSink, SmtpSink, EMAIL_FROM};
use crm2fa_tests::write_file;

const CODE: &str = "482913";
const PATH: &str = "/usr/sbin:/usr/bin:/sbin:/bin";

// ---- helpers ---------------------------------------------------------------

/// A test's directory: the configuration, secret files and SMS commands.
struct Dir {
    dir: tempfile::TempDir,
}

impl Dir {
    fn new() -> Dir {
        let dir = tempfile::Builder::new()
            .prefix("crm2fa-send-")
            .tempdir()
            .expect("tempdir");
        Dir { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The configuration `crm2fa.toml` (0644: root's, not writable by others).
    fn config(&self, text: &str) -> PathBuf {
        let p = self.path("crm2fa.toml");
        write_file(&p, text, 0o644);
        p
    }
}

/// What one run of crm2fa-send did.
#[derive(Debug)]
struct Run {
    status: ExitStatus,
    stderr: String,
}

impl Run {
    fn code(&self) -> Option<i32> {
        self.status.code()
    }

    /// It failed with `exit`, said why in one line containing `want`, and
    /// the line holds neither the code nor the message text.
    fn failed(&self, exit: i32, want: &str) {
        assert_eq!(self.code(), Some(exit), "{self:?}");
        let line = self.stderr.trim_end();
        assert!(
            !line.is_empty() && !line.contains('\n'),
            "one line: {self:?}"
        );
        assert!(line.contains(want), "{want:?} in {line:?}");
        assert!(!line.contains(CODE), "the code is in the reason: {line:?}");
        assert!(
            !line.contains("Your code is"),
            "the text is in the reason: {line:?}"
        );
    }

    fn sent(&self) {
        assert_eq!(self.code(), Some(0), "{self:?}");
        assert_eq!(self.stderr, "", "{self:?}");
    }
}

fn message(channel: &str, to: &str) -> serde_json::Value {
    serde_json::json!({
        "channel": channel,
        "to": to,
        "subject": if channel == "email" { "Your verification code" } else { "" },
        "text": format!("Your code is {CODE}.\nIt works once."),
        "code": CODE,
    })
}

/// crm2fa-send as the module runs it: no shell, PATH only (and `env`).
fn send_command(config: &Path, env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_crm2fa-send"));
    cmd.arg("--config")
        .arg(config)
        .env_clear()
        .env("PATH", PATH)
        .envs(env.iter().copied());
    cmd
}

/// crm2fa-send as a setuid caller (su) runs it: real uid and gid nobody's
/// (and its group), effective ones root's.
fn send_command_under_setuid_caller(config: &Path) -> Command {
    let mut cmd = Command::new("setpriv");
    cmd.args(["--ruid=65534", "--rgid=65534", "--groups=65534", "--"])
        .arg(env!("CARGO_BIN_EXE_crm2fa-send"))
        .arg("--config")
        .arg(config)
        .env_clear()
        .env("PATH", PATH);
    cmd
}

/// Run crm2fa-send as the module does (no shell, PATH only), `input` on
/// its standard input; a run that takes over a minute fails the test.
fn send_raw(config: &Path, input: &[u8], env: &[(&str, &str)]) -> Run {
    run(send_command(config, env), input)
}

/// Run `cmd`, `input` on its standard input; a run that takes over a minute
/// fails the test.
fn run(mut cmd: Command, input: &[u8]) -> Run {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run crm2fa-send");
    let mut stdin = child.stdin.take().expect("stdin");
    let _ = stdin.write_all(input);
    drop(stdin);
    let mut stderr = child.stderr.take().expect("stderr");
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("crm2fa-send still runs after 60 s");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Run {
        status,
        stderr: reader.join().expect("stderr reader"),
    }
}

fn send(config: &Path, msg: &serde_json::Value) -> Run {
    send_raw(config, msg.to_string().as_bytes(), &[])
}

/// The headers (unfolded, name in lower case) and the body of a raw message.
fn parse_email(raw: &str) -> (Vec<(String, String)>, String) {
    let (head, body) = raw
        .split_once("\r\n\r\n")
        .expect("headers, blank line, body");
    let mut headers: Vec<(String, String)> = vec![];
    for line in head.split("\r\n") {
        if line.starts_with([' ', '\t']) {
            headers.last_mut().expect("a header to continue").1 += line.trim_start();
        } else {
            let (name, value) = line.split_once(':').expect("name: value");
            headers.push((name.to_ascii_lowercase(), value.trim().to_string()));
        }
    }
    (headers, body.to_string())
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Vec<&'a str> {
    headers
        .iter()
        .filter(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
        .collect()
}

// ---- email -------------------------------------------------------------------

#[test]
fn an_email_arrives_with_its_from_to_subject_and_body() {
    let dir = Dir::new();
    let sink = SmtpSink::start(None);
    let config = dir.config(&sink.email_section(""));
    send(&config, &message("email", "alice@example.com")).sent();
    let mails = sink.messages();
    assert_eq!(mails.len(), 1, "{mails:?}");
    let (headers, body) = parse_email(&mails[0]);
    assert_eq!(header(&headers, "from"), [EMAIL_FROM]);
    assert_eq!(header(&headers, "to"), ["alice@example.com"]);
    assert_eq!(header(&headers, "subject"), ["Your verification code"]);
    assert_eq!(header(&headers, "date").len(), 1, "{headers:?}");
    assert_eq!(header(&headers, "message-id").len(), 1, "{headers:?}");
    assert!(
        header(&headers, "content-type")[0].starts_with("text/plain"),
        "{headers:?}"
    );
    assert_eq!(
        body.trim_end(),
        format!("Your code is {CODE}.\r\nIt works once.")
    );
}

#[test]
fn a_line_break_in_the_subject_cannot_add_a_header() {
    let dir = Dir::new();
    let sink = SmtpSink::start(None);
    let config = dir.config(&sink.email_section(""));
    let mut msg = message("email", "alice@example.com");
    msg["subject"] = "Code\r\nBcc: mallory@example.net".into();
    send(&config, &msg).sent();
    let (headers, _) = parse_email(&sink.messages()[0]);
    assert!(header(&headers, "bcc").is_empty(), "{headers:?}");
    assert_eq!(header(&headers, "to"), ["alice@example.com"]);
}

#[test]
fn smtp_auth_uses_the_password_from_the_root_only_file() {
    let dir = Dir::new();
    let sink = SmtpSink::start(Some("mailer:s3cret pass"));
    write_file(&dir.path("smtp.password"), "s3cret pass\n", 0o600);
    let config =
        dir.config(&sink.email_section("username = \"mailer\"\npassword_file = \"smtp.password\""));
    send(&config, &message("email", "bob@example.com")).sent();
    assert_eq!(sink.messages().len(), 1);
}

#[test]
fn a_wrong_smtp_password_is_not_sent_and_says_the_login_was_rejected() {
    let dir = Dir::new();
    let sink = SmtpSink::start(Some("mailer:s3cret"));
    write_file(&dir.path("smtp.password"), "wrong\n", 0o600);
    let config =
        dir.config(&sink.email_section("username = \"mailer\"\npassword_file = \"smtp.password\""));
    let run = send(&config, &message("email", "bob@example.com"));
    run.failed(1, "rejected the login as \"mailer\"");
    assert!(run.stderr.contains("535"), "{run:?}");
    assert!(
        !run.stderr.contains("wrong"),
        "the password is in the reason: {run:?}"
    );
    assert!(sink.messages().is_empty());
}

#[test]
fn a_password_file_other_users_can_read_is_refused_as_a_configuration_error() {
    let dir = Dir::new();
    write_file(&dir.path("smtp.password"), "s3cret\n", 0o644);
    let config = dir.config(&email_section_at(
        dead_port(),
        "username = \"mailer\"\npassword_file = \"smtp.password\"",
    ));
    let run = send(&config, &message("email", "bob@example.com"));
    run.failed(2, "[email] password_file");
    assert!(run.stderr.contains("chmod 0600"), "{run:?}");
}

#[test]
fn a_closed_smtp_port_fails_at_once_with_connection_refused() {
    let dir = Dir::new();
    let port = dead_port();
    let config = dir.config(&email_section_at(port, ""));
    let run = send(&config, &message("email", "alice@example.com"));
    run.failed(
        1,
        &format!("cannot connect to the mail server 127.0.0.1:{port}: Connection refused"),
    );
}

#[test]
fn a_mail_server_that_never_answers_times_out() {
    let dir = Dir::new();
    // Connections queue in the backlog; nothing ever answers them.
    let silent = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = silent.local_addr().expect("addr").port();
    let config = dir.config(&format!(
        "[delivery]\ntimeout = \"1s\"\n\n{}",
        email_section_at(port, "")
    ));
    let run = send(&config, &message("email", "alice@example.com"));
    run.failed(1, "timed out");
    assert!(run.stderr.contains(&format!("127.0.0.1:{port}")), "{run:?}");
    drop(silent);
}

/// A server on 127.0.0.1 for one connection, which `serve` handles in a
/// thread of its own, sending what it got to the receiver returned with
/// the port.
fn scripted_server(
    serve: impl FnOnce(std::net::TcpStream, std::sync::mpsc::Sender<Vec<u8>>) + Send + 'static,
) -> (u16, std::sync::mpsc::Receiver<Vec<u8>>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        if let Ok((conn, _)) = listener.accept() {
            serve(conn, tx);
        }
    });
    (port, rx)
}

/// A mail server on 127.0.0.1 that speaks SMTP up to the end of the
/// message, then gives `after_message` (nothing: it never answers) and
/// holds the connection for 10 s: the port, and the bytes it was sent.
fn scripted_smtp(after_message: Option<&'static str>) -> (u16, std::sync::mpsc::Receiver<Vec<u8>>) {
    scripted_server(move |mut conn, tx| {
        let mut got = Vec::new();
        let said = |conn: &mut std::net::TcpStream, line: &str| {
            let _ = conn.write_all(format!("{line}\r\n").as_bytes());
        };
        said(&mut conn, "220 test ESMTP");
        let mut buf = [0u8; 4096];
        let mut in_data = false;
        let mut pending = Vec::new();
        while let Ok(n) = conn.read(&mut buf) {
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
            pending.extend_from_slice(&buf[..n]);
            if in_data {
                if pending.ends_with(b"\r\n.\r\n") {
                    if let Some(line) = after_message {
                        said(&mut conn, line);
                    }
                    let _ = tx.send(got.clone());
                    std::thread::sleep(Duration::from_secs(10));
                    return;
                }
                continue;
            }
            while let Some(end) = pending.windows(2).position(|w| w == b"\r\n") {
                let line = String::from_utf8_lossy(&pending[..end]).to_uppercase();
                pending.drain(..end + 2);
                if line.starts_with("EHLO") {
                    said(&mut conn, "250 test");
                } else if line.starts_with("DATA") {
                    said(&mut conn, "354 go on");
                    in_data = true;
                } else {
                    said(&mut conn, "250 ok");
                }
            }
        }
    })
}

#[test]
fn a_message_sent_whose_answer_never_comes_is_unconfirmed() {
    let dir = Dir::new();
    let (port, got) = scripted_smtp(None);
    let config = dir.config(&format!(
        "[delivery]\ntimeout = \"2s\"\n\n{}",
        email_section_at(port, "")
    ));
    let run = send(&config, &message("email", "alice@example.com"));
    run.failed(3, "did not confirm it");
    assert!(run.stderr.contains("timed out"), "{run:?}");
    let got = String::from_utf8_lossy(&got.recv_timeout(Duration::from_secs(5)).expect("data"))
        .into_owned();
    assert!(got.contains("Your code is"), "the message went out: {got}");
}

#[test]
fn a_message_the_server_refuses_after_reading_it_is_not_sent() {
    let dir = Dir::new();
    let (port, _got) = scripted_smtp(Some("554 5.6.0 message refused"));
    let config = dir.config(&format!(
        "[delivery]\ntimeout = \"2s\"\n\n{}",
        email_section_at(port, "")
    ));
    let run = send(&config, &message("email", "alice@example.com"));
    run.failed(1, "refused the message for good: 554");
}

#[test]
fn starttls_required_by_the_config_is_not_skipped_when_the_server_lacks_it() {
    let dir = Dir::new();
    let sink = SmtpSink::start(None);
    let config = dir.config(
        &sink
            .email_section("")
            .replace("tls = \"none\"", "tls = \"starttls\""),
    );
    let run = send(&config, &message("email", "alice@example.com"));
    run.failed(1, "STARTTLS");
    assert!(sink.messages().is_empty(), "sent in the clear");
}

// ---- SMS over HTTP -------------------------------------------------------------

#[test]
fn an_sms_post_fills_the_json_body_escaped_with_the_headers_and_basic_auth() {
    let dir = Dir::new();
    let sink = HttpSink::start(200);
    write_file(
        &dir.path("gateway.credentials"),
        "gw-user:gw pass:x\n",
        0o600,
    );
    let config = dir.config(&format!(
        r#"[sms]
url = "http://127.0.0.1:{}/v1/send"
method = "POST"
headers = {{ "Content-Type" = "application/json", "X-Api-Key" = "key-123" }}
body_template = '{{"to": "{{phone}}", "text": "{{message}}", "code": "{{code}}"}}'
credentials_file = "gateway.credentials"
"#,
        sink.port()
    ));
    let mut msg = message("sms", "+441234567890");
    msg["text"] = format!("Your code is \"{CODE}\"\\ \n& valid 10 min").into();
    send(&config, &msg).sent();
    let requests = sink.requests();
    assert_eq!(requests.len(), 1, "{requests:?}");
    let r = &requests[0];
    assert_eq!(r["method"], "POST");
    assert_eq!(r["path"], "/v1/send");
    assert_eq!(r["headers"]["content-type"], "application/json");
    assert_eq!(r["headers"]["x-api-key"], "key-123");
    assert_eq!(
        r["headers"]["authorization"], "Basic Z3ctdXNlcjpndyBwYXNzOng=",
        "base64 of gw-user:gw pass:x"
    );
    let body: serde_json::Value =
        serde_json::from_str(r["body"].as_str().expect("a body")).expect("the body is JSON");
    assert_eq!(body["to"], "+441234567890");
    assert_eq!(body["text"], msg["text"]);
    assert_eq!(body["code"], CODE);
}

#[test]
fn an_sms_put_with_a_form_body_is_form_encoded() {
    let dir = Dir::new();
    let sink = HttpSink::start(200);
    let config = dir.config(&format!(
        r#"[sms]
url = "http://127.0.0.1:{}/send"
method = "PUT"
headers = {{ "content-type" = "application/x-www-form-urlencoded" }}
body_template = "to={{phone}}&text={{message}}"
"#,
        sink.port()
    ));
    send(&config, &message("sms", "+441234567890")).sent();
    let r = &sink.requests()[0];
    assert_eq!(r["method"], "PUT");
    assert_eq!(
        r["body"],
        format!("to=%2B441234567890&text=Your+code+is+{CODE}.%0AIt+works+once.")
    );
}

#[test]
fn an_sms_get_fills_the_url_percent_encoded_and_sends_no_body() {
    let dir = Dir::new();
    let sink = HttpSink::start(200);
    let config = dir.config(&format!(
        "[sms]\nurl = \"http://127.0.0.1:{}/send?to={{phone}}&msg={{message}}&c={{code}}\"\n\
         method = \"GET\"\n",
        sink.port()
    ));
    send(&config, &message("sms", "+441234567890")).sent();
    let r = &sink.requests()[0];
    assert_eq!(r["method"], "GET");
    assert_eq!(
        r["path"],
        format!(
            "/send?to=%2B441234567890&msg=Your%20code%20is%20{CODE}.%0AIt%20works%20once.&c={CODE}"
        )
    );
    assert_eq!(r["body"], "");
}

#[test]
fn an_sms_gateway_error_is_not_sent_and_the_reason_holds_no_code() {
    let dir = Dir::new();
    let sink = HttpSink::start(500);
    let config = dir.config(&format!(
        "[sms]\nurl = \"http://127.0.0.1:{}/send?c={{code}}\"\nbody_template = \"{{message}}\"\n",
        sink.port()
    ));
    let run = send(&config, &message("sms", "+441234567890"));
    run.failed(
        1,
        &format!(
            "the SMS gateway 127.0.0.1:{} answered HTTP 500",
            sink.port()
        ),
    );
    assert_eq!(sink.requests().len(), 1, "the request reached the gateway");
}

#[test]
fn a_redirect_is_not_followed() {
    let dir = Dir::new();
    let sink = HttpSink::start(302);
    let config = dir.config(&format!(
        "[sms]\nurl = \"http://127.0.0.1:{}/send\"\nbody_template = \"{{code}}\"\n",
        sink.port()
    ));
    send(&config, &message("sms", "+441234567890")).failed(1, "answered HTTP 302");
    assert_eq!(sink.requests().len(), 1);
}

#[test]
fn a_closed_gateway_port_fails_with_connection_refused() {
    let dir = Dir::new();
    let port = dead_port();
    let config = dir.config(&format!(
        "[sms]\nurl = \"http://127.0.0.1:{port}/send?c={{code}}\"\n"
    ));
    send(&config, &message("sms", "+441234567890")).failed(
        1,
        &format!("cannot connect to the SMS gateway 127.0.0.1:{port}: Connection refused"),
    );
}

/// A gateway on 127.0.0.1 that reads one whole request (its headers and
/// the body its Content-Length gives), then says nothing: it holds the
/// connection for 10 s, or with `hang_up` closes it. The port, and the
/// bytes it got.
fn gateway_that_takes_the_request(hang_up: bool) -> (u16, std::sync::mpsc::Receiver<Vec<u8>>) {
    scripted_server(move |mut conn, tx| {
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(n) = conn.read(&mut buf) {
            if n == 0 {
                return;
            }
            got.extend_from_slice(&buf[..n]);
            let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") else {
                continue;
            };
            let head = String::from_utf8_lossy(&got[..end]).to_lowercase();
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map_or(0, |v| v.trim().parse().expect("length"));
            if got.len() >= end + 4 + length {
                let _ = tx.send(got.clone());
                if !hang_up {
                    std::thread::sleep(Duration::from_secs(10));
                }
                return;
            }
        }
    })
}

fn sms_post_to(dir: &Dir, port: u16) -> PathBuf {
    dir.config(&format!(
        "[delivery]\ntimeout = \"1s\"\n\n[sms]\nurl = \"http://127.0.0.1:{port}/send\"\n\
         body_template = \"{{code}}\"\n"
    ))
}

#[test]
fn a_request_the_gateway_took_and_never_answered_is_unconfirmed() {
    for hang_up in [false, true] {
        let dir = Dir::new();
        let (port, got) = gateway_that_takes_the_request(hang_up);
        let run = send(&sms_post_to(&dir, port), &message("sms", "+441234567890"));
        run.failed(3, "did not confirm it");
        let why = if hang_up { "" } else { "timed out" };
        assert!(run.stderr.contains(why), "{run:?}");
        let got = got.recv_timeout(Duration::from_secs(5)).expect("request");
        assert!(
            String::from_utf8_lossy(&got).ends_with(CODE),
            "the whole request reached the gateway"
        );
    }
}

#[test]
fn a_gateway_that_never_completes_the_connection_has_not_got_the_message() {
    // A listening socket whose accept queue (backlog 0) one connection
    // fills: the kernel drops every further SYN, and a connect hangs.
    let full = TcpListener::bind("127.0.0.1:0").expect("bind");
    nix::sys::socket::listen(&full, nix::sys::socket::Backlog::new(0).expect("backlog"))
        .expect("listen");
    let port = full.local_addr().expect("addr").port();
    let _queued = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    let dir = Dir::new();
    let started = Instant::now();
    let run = send(&sms_post_to(&dir, port), &message("sms", "+441234567890"));
    run.failed(1, "timed out");
    assert!(started.elapsed() < Duration::from_secs(5), "{run:?}");
}

#[test]
fn an_expect_header_is_refused() {
    let dir = Dir::new();
    let config = dir.config(
        "[sms]\nurl = \"http://127.0.0.1:9/send\"\nbody_template = \"{code}\"\n\n\
         [sms.headers]\nExpect = \"100-continue\"\n",
    );
    send(&config, &message("sms", "+441234567890")).failed(2, "\"Expect\" is not supported");
}

// ---- SMS by command ----------------------------------------------------------

/// An SMS command: a shell script in the test's directory that writes its
/// arguments (NUL-terminated), its environment and its standard input (read
/// as `/dev/stdin`, as many scripts do) to files there, prints `stderr` on
/// standard error and exits with `exit`.
fn sms_script(dir: &Dir, stderr: &str, exit: i32) -> PathBuf {
    let script = dir.path("send-sms");
    let args = dir.path("args");
    let env = dir.path("env");
    let stdin = dir.path("stdin");
    write_file(
        &script,
        &format!(
            "#!/bin/sh\nfor a in \"$@\"; do printf '%s\\0' \"$a\"; done > '{}'\nenv > '{}'\n\
             cat /dev/stdin > '{}'\n{}exit {exit}\n",
            args.display(),
            env.display(),
            stdin.display(),
            if stderr.is_empty() {
                String::new()
            } else {
                format!("echo \"{stderr}\" >&2\n")
            }
        ),
        0o755,
    );
    script
}

fn recorded_args(dir: &Dir) -> Vec<String> {
    let raw = fs::read_to_string(dir.path("args")).expect("the command ran");
    raw.split_terminator('\0').map(String::from).collect()
}

#[test]
fn an_sms_command_gets_the_phone_and_the_message_as_two_more_arguments_and_no_environment() {
    let dir = Dir::new();
    let script = sms_script(&dir, "", 0);
    let config = dir.config(&format!(
        "[sms]\ncommand = [\"{}\", \"--from\", \"crm2fa host\"]\n",
        script.display()
    ));
    let msg = message("sms", "+441234567890");
    let input = msg.to_string();
    send_raw(
        &config,
        input.as_bytes(),
        &[("CRM2FA_TEST_SENTINEL", "leaked")],
    )
    .sent();
    assert_eq!(
        recorded_args(&dir),
        [
            "--from",
            "crm2fa host",
            "+441234567890",
            msg["text"].as_str().expect("text")
        ]
    );
    let env = fs::read_to_string(dir.path("env")).expect("env");
    assert!(env.lines().any(|l| l == format!("PATH={PATH}")), "{env}");
    assert!(!env.contains("CRM2FA_TEST_SENTINEL"), "{env}");
}

#[test]
fn a_failing_sms_command_is_not_sent_with_its_status_and_first_stderr_line_minus_the_code() {
    let dir = Dir::new();
    let script = sms_script(&dir, "modem refused: $2", 3);
    let config = dir.config(&format!("[sms]\ncommand = [\"{}\"]\n", script.display()));
    let run = send(&config, &message("sms", "+441234567890"));
    run.failed(1, "the SMS command exited with status 3: modem refused:");
    assert!(run.stderr.contains("[redacted]"), "{run:?}");
}

#[test]
fn an_sms_command_that_hangs_is_stopped_after_the_timeout() {
    let dir = Dir::new();
    let script = dir.path("hang");
    write_file(&script, "#!/bin/sh\nsleep 60\n", 0o755);
    let config = dir.config(&format!(
        "[delivery]\ntimeout = \"1s\"\n\n[sms]\ncommand = [\"{}\"]\n",
        script.display()
    ));
    // It may have sent the SMS before it hung: not confirmed.
    send(&config, &message("sms", "+441234567890")).failed(3, "did not finish");
}

#[test]
fn an_sms_command_other_users_may_change_is_not_run() {
    let dir = Dir::new();
    let script = sms_script(&dir, "", 0);
    fs::set_permissions(&script, fs::Permissions::from_mode(0o777)).expect("chmod");
    let config = dir.config(&format!("[sms]\ncommand = [\"{}\"]\n", script.display()));
    send(&config, &message("sms", "+441234567890")).failed(2, "will not run it");
    assert!(!dir.path("args").exists(), "the command ran");
}

#[test]
fn an_sms_command_also_gets_the_message_on_its_standard_input() {
    let dir = Dir::new();
    let script = sms_script(&dir, "", 0);
    let config = dir.config(&format!("[sms]\ncommand = [\"{}\"]\n", script.display()));
    let msg = message("sms", "+441234567890");
    send(&config, &msg).sent();
    let stdin = fs::read_to_string(dir.path("stdin")).expect("the command ran");
    assert_eq!(stdin, msg["text"].as_str().expect("text"));
}

#[test]
fn an_sms_command_found_through_a_link_in_path_runs_and_its_script_is_checked() {
    // sh is a link (to dash, bash …): the file it leads to is checked.
    let dir = Dir::new();
    let script = sms_script(&dir, "", 0);
    let config = dir.config(&format!(
        "[sms]\ncommand = [\"sh\", \"{}\"]\n",
        script.display()
    ));
    send(&config, &message("sms", "+441234567890")).sent();
    assert_eq!(recorded_args(&dir)[0], "+441234567890");
    // The script it runs is checked as the program is.
    fs::remove_file(dir.path("args")).expect("rm");
    fs::set_permissions(&script, fs::Permissions::from_mode(0o777)).expect("chmod");
    let run = send(&config, &message("sms", "+441234567890"));
    run.failed(2, "will not run");
    assert!(
        run.stderr.contains(&script.display().to_string()),
        "the script is named: {run:?}"
    );
    assert!(!dir.path("args").exists(), "the command ran");
}

#[test]
fn an_sms_command_through_a_link_is_checked_where_the_link_leads() {
    let dir = Dir::new();
    let script = sms_script(&dir, "", 0);
    let link = dir.path("sms-link");
    std::os::unix::fs::symlink(&script, &link).expect("ln -s");
    let config = dir.config(&format!("[sms]\ncommand = [\"{}\"]\n", link.display()));
    send(&config, &message("sms", "+441234567890")).sent();
    fs::remove_file(dir.path("args")).expect("rm");
    fs::set_permissions(&script, fs::Permissions::from_mode(0o777)).expect("chmod");
    send(&config, &message("sms", "+441234567890")).failed(2, "will not run it");
    assert!(!dir.path("args").exists(), "the command ran");
}

#[test]
fn under_a_setuid_caller_the_sms_command_runs_as_root_alone() {
    let dir = Dir::new();
    let script = dir.path("ids");
    write_file(
        &script,
        "#!/bin/sh\necho $(grep -E '^(Uid|Gid|Groups):' /proc/$$/status) >&2\nexit 1\n",
        0o755,
    );
    let config = dir.config(&format!("[sms]\ncommand = [\"{}\"]\n", script.display()));
    let msg = message("sms", "+441234567890");
    run(
        send_command_under_setuid_caller(&config),
        msg.to_string().as_bytes(),
    )
    .failed(1, ": Uid: 0 0 0 0 Gid: 0 0 0 0 Groups:");
}

/// An SMS command that starts two processes and waits: `nap` in the test's
/// directory is a link to sleep, so that each carries the directory in its
/// command line.
fn napping_sms_command(dir: &Dir) -> PathBuf {
    let sleep = ["/usr/bin/sleep", "/bin/sleep"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("sleep");
    std::os::unix::fs::symlink(sleep, dir.path("nap")).expect("ln -s");
    let script = dir.path("nap-sms");
    write_file(
        &script,
        "#!/bin/sh\n\"${0%/*}/nap\" 30 &\n\"${0%/*}/nap\" 30\n",
        0o755,
    );
    script
}

/// The processes whose command line holds the test's directory.
fn running_in(dir: &Dir) -> Vec<i32> {
    let marker = dir.dir.path().to_string_lossy().into_owned();
    fs::read_dir("/proc")
        .expect("/proc")
        .filter_map(|e| {
            let pid: i32 = e.ok()?.file_name().to_str()?.parse().ok()?;
            let cmdline = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            String::from_utf8_lossy(&cmdline)
                .contains(&marker)
                .then_some(pid)
        })
        .collect()
}

/// Those of [`running_in`] once killed ones had a moment to go; any left
/// are killed, so that a failed test leaves nothing behind.
fn left_in(dir: &Dir) -> Vec<i32> {
    let until = Instant::now() + Duration::from_secs(2);
    let mut left = running_in(dir);
    while !left.is_empty() && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(20));
        left = running_in(dir);
    }
    for pid in &left {
        let _ = kill(Pid::from_raw(*pid), Signal::SIGKILL);
    }
    left
}

#[test]
fn the_sms_command_is_in_the_process_group_the_module_kills() {
    let dir = Dir::new();
    let script = napping_sms_command(&dir);
    let config = dir.config(&format!("[sms]\ncommand = [\"{}\"]\n", script.display()));
    let mut cmd = send_command(&config, &[]);
    let mut child = cmd
        .process_group(0)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("run crm2fa-send");
    let mut stdin = child.stdin.take().expect("stdin");
    stdin
        .write_all(message("sms", "+441234567890").to_string().as_bytes())
        .expect("write the message");
    drop(stdin);
    let until = Instant::now() + Duration::from_secs(20);
    while running_in(&dir).len() < 3 {
        assert!(Instant::now() < until, "the command did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    // As the module does at its deadline.
    let group = Pid::from_raw(i32::try_from(child.id()).expect("pid"));
    killpg(group, Signal::SIGKILL).expect("killpg");
    let _ = child.wait();
    assert_eq!(left_in(&dir), Vec::<i32>::new(), "still running");
}

#[test]
fn leading_its_group_its_own_timeout_stops_all_the_sms_command_started() {
    let dir = Dir::new();
    let script = napping_sms_command(&dir);
    let config = dir.config(&format!(
        "[delivery]\ntimeout = \"1s\"\n\n[sms]\ncommand = [\"{}\"]\n",
        script.display()
    ));
    let mut cmd = send_command(&config, &[]);
    cmd.process_group(0);
    run(cmd, message("sms", "+441234567890").to_string().as_bytes()).failed(3, "did not finish");
    assert_eq!(left_in(&dir), Vec::<i32>::new(), "still running");
}

// ---- usage and configuration ---------------------------------------------------

#[test]
fn a_channel_that_is_not_configured_is_a_configuration_error() {
    let dir = Dir::new();
    let config = dir.config("[totp]\ndigits = 6\n");
    send(&config, &message("email", "alice@example.com")).failed(2, "[email]");
    let config = dir.config("[sms]\ncode_ttl = \"5m\"\n");
    send(&config, &message("sms", "+441234567890")).failed(2, "SMS is not configured");
}

#[test]
fn input_that_is_not_a_message_is_a_usage_error_and_never_echoed() {
    let dir = Dir::new();
    let config = dir.config(&email_section_at(dead_port(), ""));
    for input in [
        "not json".to_string(),
        format!("{{\"channel\": \"email\", \"to\": \"a@example.com\", \"text\": \"t\", \"code\": {CODE}}}"),
        format!("{{\"channel\": \"fax\", \"to\": \"{CODE}\", \"text\": \"t\"}}"),
        String::new(),
    ] {
        send_raw(&config, input.as_bytes(), &[]).failed(2, "standard input");
    }
}

#[test]
fn a_missing_or_unsafe_configuration_is_a_configuration_error() {
    let dir = Dir::new();
    send(&dir.path("none.toml"), &message("email", "a@example.com")).failed(2, "none.toml");
    let config = dir.config(&email_section_at(dead_port(), ""));
    fs::set_permissions(&config, fs::Permissions::from_mode(0o666)).expect("chmod");
    send(&config, &message("email", "a@example.com")).failed(2, "chmod");
}

#[test]
fn help_and_bad_arguments() {
    let out = Command::new(env!("CARGO_BIN_EXE_crm2fa-send"))
        .arg("--help")
        .output()
        .expect("run");
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("--config PATH"));
    let out = Command::new(env!("CARGO_BIN_EXE_crm2fa-send"))
        .arg("--bogus")
        .stdin(Stdio::null())
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--bogus"));
}
