//! SMS: a command (no shell; the phone and the message as its last two
//! arguments) or an HTTP gateway (ureq over rustls; placeholders filled and
//! encoded for where they go; basic auth from a root-only file).
//!
//! The command runs as root with PATH alone for environment. Its program
//! (found in PATH if a bare name, followed through links) and, when its
//! first argument is the absolute path of a file, that script, must be
//! root's and closed to writes by others. It gets the message on its
//! standard input too, then end of file, for a script that would rather
//! read it there.
//!
//! The code is in the command's arguments, and every local user can read a
//! process's arguments in `/proc/PID/cmdline` while it runs: on a host
//! where untrusted users log in, mount `/proc` with `hidepid=invisible` (or
//! use an HTTP gateway, which gets the code over the network only).
use std::ffi::OsStr;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use crm2fa_common::config::SmsConfig;
use crm2fa_common::delivery::child::{self, Ended, Group, Job, RunError, Stdin, PATH};
use crm2fa_common::delivery::{fill, Message};
use crm2fa_common::fsperm::{self, Secrecy};
use crm2fa_common::URL_UNRESERVED;
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use ureq::http::{HeaderName, HeaderValue, Uri};
use ureq::unversioned::resolver::DefaultResolver;
use ureq::unversioned::transport::{
    Buffers, ConnectionDetails, Connector, DefaultConnector, NextTimeout, Transport,
};
use zeroize::Zeroizing;

use crate::email::plain_io;
use crate::{secret, Failure};

/// Send `msg` as [sms] says; the whole send may take `timeout`.
pub(crate) fn send(cfg: &SmsConfig, timeout: Duration, msg: &Message) -> Result<(), Failure> {
    if cfg.command.is_empty() {
        http(cfg, timeout, msg)
    } else {
        command(&cfg.command, timeout, msg)
    }
}

// ---- command ---------------------------------------------------------------

fn command(argv: &[String], timeout: Duration, msg: &Message) -> Result<(), Failure> {
    // It runs as root with the code in its arguments: it must be root's,
    // the file a link leads to as well as a script it is given to run.
    let program = trusted(&resolve(&argv[0])?)
        .map_err(|e| Failure::Config(format!("[sms] command: will not run it: {e}")))?;
    let mut args = argv[1..].to_vec();
    if let Some(script) = args
        .first_mut()
        .filter(|a| Path::new(a.as_str()).is_absolute() && Path::new(a.as_str()).is_file())
    {
        let checked = trusted(Path::new(script.as_str()))
            .map_err(|e| Failure::Config(format!("[sms] command: will not run its script: {e}")))?;
        // The file checked is the one it opens, whatever a link becomes.
        *script = checked.to_string_lossy().into_owned();
    }
    // Led by this program, the group is the one the PAM module kills whole
    // at its deadline and when the send failed: the command stays in it.
    // Otherwise (run by hand) the command gets a group of its own, so that
    // a time-out or a failure stops what it started.
    let leader = nix::unistd::getpgrp() == nix::unistd::getpid();
    let mut all: Vec<&OsStr> = args.iter().map(OsStr::new).collect();
    all.extend([OsStr::new(&msg.to), OsStr::new(&msg.text)]);
    let outcome = child::run(&Job {
        program: &program,
        arg0: Some(OsStr::new(&argv[0])),
        args: &all,
        // The message on standard input as well, then its end; a pipe, so
        // that a script may read it as /dev/stdin (this program ignores
        // SIGPIPE, as every Rust program does).
        input: msg.text.as_bytes(),
        stdin: Stdin::Pipe,
        timeout,
        group: if leader { Group::Callers } else { Group::Own },
    })
    .map_err(|e| match e {
        RunError::Start(e) => Failure::Config(format!(
            "[sms] command: cannot run {}: {}",
            program.display(),
            plain_io(&e)
        )),
        RunError::Wait(e) => {
            Failure::NotSent(format!("cannot wait for the SMS command: {}", plain_io(&e)))
        }
    })?;
    let how = match outcome.ended {
        Ended::Exited(0) => return Ok(()),
        Ended::TimedOut => format!(
            "the SMS command did not finish within {:.1} s and was stopped",
            timeout.as_secs_f64()
        ),
        Ended::Exited(code) => format!("the SMS command exited with status {code}"),
        Ended::Killed(Some(sig)) => format!("the SMS command was killed by signal {sig}"),
        Ended::Killed(None) => "the SMS command failed".to_string(),
    };
    let why = match outcome.said {
        Some(line) => format!("{how}: {line}"),
        None => how,
    };
    // Stopped or killed before it said: it may have sent the SMS.
    Err(if outcome.ended.cut_short() {
        Failure::Unconfirmed(why)
    } else {
        Failure::NotSent(why)
    })
}

/// `path` followed to the file it names, which must be root's and closed
/// to writes by others, as must every directory on the way.
fn trusted(path: &Path) -> Result<PathBuf, String> {
    let real =
        std::fs::canonicalize(path).map_err(|e| format!("{}: {}", path.display(), plain_io(&e)))?;
    fsperm::open_trusted(&real, Secrecy::NotWritableByOthers).map_err(|e| {
        if real == path {
            e.to_string()
        } else {
            format!("{e} ({} leads there)", path.display())
        }
    })?;
    Ok(real)
}

/// The command's program: an absolute path, or a name found in [`PATH`]
/// (as the spawn would find it).
fn resolve(program: &str) -> Result<PathBuf, Failure> {
    let path = Path::new(program);
    if path.is_absolute() {
        return Ok(path.to_path_buf());
    }
    if program.contains('/') || program.is_empty() {
        return Err(Failure::Config(format!(
            "[sms] command: {program:?} must be an absolute path or a program name found in {PATH}"
        )));
    }
    PATH.split(':')
        .map(|dir| Path::new(dir).join(program))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            Failure::Config(format!(
                "[sms] command: there is no {program:?} in {PATH}; give its absolute path"
            ))
        })
}

// ---- HTTP gateway ----------------------------------------------------------

/// What stays as it is in an `application/x-www-form-urlencoded` value.
const FORM_VALUE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'*')
    .remove(b' ');

/// How the values go into the body, by its Content-Type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BodyKind {
    Json,
    Form,
    Raw,
}

fn body_kind(cfg: &SmsConfig) -> BodyKind {
    let ct = cfg
        .headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-type"))
        .map(|(_, v)| v.to_ascii_lowercase());
    match ct {
        Some(t) if t.contains("json") => BodyKind::Json,
        Some(t)
            if t.trim_start()
                .starts_with("application/x-www-form-urlencoded") =>
        {
            BodyKind::Form
        }
        _ => BodyKind::Raw,
    }
}

/// `value` encoded for a body of `kind`.
fn encode_body_value(value: &str, kind: BodyKind) -> Zeroizing<String> {
    Zeroizing::new(match kind {
        BodyKind::Json => {
            let quoted = serde_json::Value::String(value.to_string()).to_string();
            quoted[1..quoted.len() - 1].to_string()
        }
        BodyKind::Form => utf8_percent_encode(value, FORM_VALUE)
            .to_string()
            .replace(' ', "+"),
        BodyKind::Raw => value.to_string(),
    })
}

/// `template` with `{phone}`, `{message}` and `{code}` filled with the
/// values of `msg`, each passed through `encode`.
fn fill_message(
    template: &str,
    msg: &Message,
    encode: impl Fn(&str) -> Zeroizing<String>,
) -> Zeroizing<String> {
    let (phone, message, code) = (encode(&msg.to), encode(&msg.text), encode(&msg.code));
    Zeroizing::new(fill(
        template,
        &[("phone", &phone), ("message", &message), ("code", &code)],
    ))
}

/// The gateway's address for reasons: scheme, host and port, never the
/// path or the query (they may hold the code).
fn gateway_name(uri: &Uri) -> String {
    let host = uri.host().unwrap_or("?");
    let port = uri.port_u16().unwrap_or(match uri.scheme_str() {
        Some("https") => 443,
        _ => 80,
    });
    format!("{host}:{port}")
}

fn http(cfg: &SmsConfig, timeout: Duration, msg: &Message) -> Result<(), Failure> {
    // The URL as configured must be one; the filled one is the one used.
    let template_uri: Uri = cfg
        .url
        .parse()
        .map_err(|e| Failure::Config(format!("[sms] url: {:?} is not a URL: {e}", cfg.url)))?;
    match template_uri.scheme_str() {
        Some("http" | "https") if template_uri.host().is_some() => {}
        _ => {
            return Err(Failure::Config(format!(
                "[sms] url: {:?} must be an http:// or https:// URL with a host",
                cfg.url
            )))
        }
    }
    let url = fill_message(&cfg.url, msg, |v| {
        Zeroizing::new(utf8_percent_encode(v, URL_UNRESERVED).to_string())
    });
    let uri: Uri = url.parse().map_err(|_| {
        Failure::Config("[sms] url: not a URL once {phone}, {message} and {code} are filled".into())
    })?;
    let gateway = gateway_name(&uri);
    let mut headers = Vec::new();
    for (name, value) in &cfg.headers {
        let n = HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
            Failure::Config(format!("[sms] headers: {name:?} is not a header name"))
        })?;
        if n == ureq::http::header::EXPECT {
            // The request must go out whole before any answer is awaited
            // (see Watched).
            return Err(Failure::Config(format!(
                "[sms] headers: {name:?} is not supported"
            )));
        }
        let v = HeaderValue::from_str(value).map_err(|_| {
            Failure::Config(format!(
                "[sms] headers: the value of {name:?} is not a header value"
            ))
        })?;
        headers.push((n, v));
    }
    if let Some(path) = &cfg.credentials_file {
        let creds = secret::read_file(path, "[sms] credentials_file")?;
        if !creds.contains(':') {
            return Err(Failure::Config(format!(
                "[sms] credentials_file: {} must hold user:password on one line",
                path.display()
            )));
        }
        let token =
            Zeroizing::new(base64::engine::general_purpose::STANDARD.encode(creds.as_bytes()));
        let mut value =
            HeaderValue::from_str(&format!("Basic {}", token.as_str())).map_err(|_| {
                Failure::Config("[sms] credentials_file: not usable as basic auth".into())
            })?;
        value.set_sensitive(true);
        headers.push((ureq::http::header::AUTHORIZATION, value));
    }

    let mut tls = ureq::tls::TlsConfig::builder().provider(ureq::tls::TlsProvider::Rustls);
    if uri.scheme_str() == Some("https") {
        tls = tls.root_certs(system_roots()?);
    }
    let config = ureq::Agent::config_builder()
        .timeout_global(Some(timeout))
        .timeout_connect(Some(timeout))
        // A redirect would take the code somewhere not configured: a 3xx
        // is an answer like any other that is not 2xx.
        .max_redirects(0)
        .http_status_as_error(false)
        // The environment is the caller's, and a login's is empty anyway.
        .proxy(None)
        .user_agent(concat!("crm2fa-send/", env!("CARGO_PKG_VERSION")))
        .tls_config(tls.build())
        .build();
    let sent = Arc::new(AtomicBool::new(false));
    let agent = ureq::Agent::with_parts(
        config,
        DefaultConnector::new().chain(Watch(Arc::clone(&sent))),
        DefaultResolver::default(),
    );

    let result = match cfg.method.as_str() {
        "GET" => {
            let mut req = agent.get(url.as_str());
            for (n, v) in headers {
                req = req.header(n, v);
            }
            req.call()
        }
        method => {
            let kind = body_kind(cfg);
            let body = fill_message(&cfg.body_template, msg, |v| encode_body_value(v, kind));
            let mut req = if method == "PUT" {
                agent.put(url.as_str())
            } else {
                agent.post(url.as_str())
            };
            for (n, v) in headers {
                req = req.header(n, v);
            }
            req.send(body.as_bytes())
        }
    };
    let mut response = result.map_err(|e| {
        let why = http_reason(&e, &gateway, timeout);
        if sent.load(Ordering::SeqCst) {
            // The gateway may have taken the message and then failed to
            // answer, or been slow to: it may still arrive.
            Failure::Unconfirmed(format!(
                "the message went to the SMS gateway {gateway}, which did not confirm it: {why}"
            ))
        } else {
            Failure::NotSent(why)
        }
    })?;
    let status = response.status();
    if status.is_success() {
        return Ok(());
    }
    // A short first line of what it said, if it is text: that is where a
    // gateway says "invalid API key". (The code is scrubbed by the caller.)
    let mut said = Vec::new();
    let _ = response
        .body_mut()
        .as_reader()
        .take(512)
        .read_to_end(&mut said);
    let said = String::from_utf8_lossy(&said);
    let first: String = said
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("")
        .chars()
        .take(120)
        .collect();
    let mut why = format!(
        "the SMS gateway {gateway} answered HTTP {}",
        status.as_u16()
    );
    if !first.is_empty() && first.chars().all(|c| !c.is_control()) {
        why.push_str(": ");
        why.push_str(&first);
    }
    Err(Failure::NotSent(why))
}

/// The last link of ureq's connector chain: it hands on the connection
/// (TCP, then TLS) as it is, watched by [`Watched`].
#[derive(Debug)]
struct Watch(Arc<AtomicBool>);

impl Connector<Box<dyn Transport>> for Watch {
    type Out = Watched;

    fn connect(
        &self,
        _: &ConnectionDetails,
        chained: Option<Box<dyn Transport>>,
    ) -> Result<Option<Watched>, ureq::Error> {
        Ok(chained.map(|inner| Watched {
            inner,
            sent: Arc::clone(&self.0),
        }))
    }
}

/// A connection to the gateway that notes when the request went out whole:
/// ureq first waits for input once it has written the request line, the
/// headers and the body (the config may not set `Expect`, which would have
/// it wait for `100 Continue` before the body). Before that a
/// failure means the gateway cannot have the message; after it, only the
/// gateway's answer says whether it took it.
#[derive(Debug)]
struct Watched {
    inner: Box<dyn Transport>,
    sent: Arc<AtomicBool>,
}

impl Transport for Watched {
    fn buffers(&mut self) -> &mut dyn Buffers {
        self.inner.buffers()
    }

    fn transmit_output(&mut self, amount: usize, timeout: NextTimeout) -> Result<(), ureq::Error> {
        self.inner.transmit_output(amount, timeout)
    }

    fn await_input(&mut self, timeout: NextTimeout) -> Result<bool, ureq::Error> {
        self.sent.store(true, Ordering::SeqCst);
        self.inner.await_input(timeout)
    }

    fn is_open(&mut self) -> bool {
        self.inner.is_open()
    }

    fn is_tls(&self) -> bool {
        self.inner.is_tls()
    }
}

/// The system's CA certificates (`/etc/ssl/certs`), for an https gateway.
fn system_roots() -> Result<ureq::tls::RootCerts, Failure> {
    let found = rustls_native_certs::load_native_certs();
    if found.certs.is_empty() {
        let why = found
            .errors
            .first()
            .map(|e| format!(": {e}"))
            .unwrap_or_default();
        return Err(Failure::Config(format!(
            "[sms] url: no CA certificates found on this system to check the gateway's \
             certificate (install ca-certificates){why}"
        )));
    }
    Ok(ureq::tls::RootCerts::new_with_certs(
        &found
            .certs
            .iter()
            .map(|c| ureq::tls::Certificate::from_der(c.as_ref()).to_owned())
            .collect::<Vec<_>>(),
    ))
}

/// One line that says why the gateway did not get the message.
fn http_reason(e: &ureq::Error, gateway: &str, timeout: Duration) -> String {
    let secs = timeout.as_secs_f64();
    match e {
        ureq::Error::Timeout(_) => {
            format!("timed out after {secs:.1} s waiting for the SMS gateway {gateway}")
        }
        ureq::Error::HostNotFound => {
            format!("cannot connect to the SMS gateway {gateway}: host not found")
        }
        ureq::Error::ConnectionFailed => {
            format!("cannot connect to the SMS gateway {gateway}")
        }
        ureq::Error::Io(io) => match io.kind() {
            std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock => {
                format!("timed out after {secs:.1} s waiting for the SMS gateway {gateway}")
            }
            std::io::ErrorKind::ConnectionRefused
            | std::io::ErrorKind::HostUnreachable
            | std::io::ErrorKind::NetworkUnreachable
            | std::io::ErrorKind::AddrNotAvailable => format!(
                "cannot connect to the SMS gateway {gateway}: {}",
                plain_io(io)
            ),
            _ => format!(
                "talking to the SMS gateway {gateway} failed: {}",
                plain_io(io)
            ),
        },
        ureq::Error::Tls(why) => format!("TLS with the SMS gateway {gateway} failed: {why}"),
        ureq::Error::Rustls(why) => format!("TLS with the SMS gateway {gateway} failed: {why}"),
        other => format!("sending to the SMS gateway {gateway} failed: {other}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crm2fa_common::delivery::Channel;

    fn msg() -> Message {
        Message {
            channel: Channel::Sms,
            to: "+44 20 7946".into(),
            subject: String::new(),
            text: "Code \"1234\" & go\n".into(),
            code: "1234".into(),
        }
    }

    #[test]
    fn values_are_encoded_for_where_they_go() {
        let m = msg();
        let json = fill_message("{\"t\":\"{message}\",\"to\":\"{phone}\"}", &m, |v| {
            encode_body_value(v, BodyKind::Json)
        });
        let parsed: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(parsed["t"], "Code \"1234\" & go\n");
        assert_eq!(parsed["to"], "+44 20 7946");
        let form = fill_message("to={phone}&text={message}", &m, |v| {
            encode_body_value(v, BodyKind::Form)
        });
        assert_eq!(
            form.as_str(),
            "to=%2B44+20+7946&text=Code+%221234%22+%26+go%0A"
        );
        let url = fill_message("https://g/s?to={phone}&c={code}", &m, |v| {
            Zeroizing::new(utf8_percent_encode(v, URL_UNRESERVED).to_string())
        });
        assert_eq!(url.as_str(), "https://g/s?to=%2B44%2020%207946&c=1234");
    }

    #[test]
    fn the_content_type_header_decides_the_body_encoding_in_any_case() {
        let mut cfg = SmsConfig {
            command: vec![],
            url: "http://g/".into(),
            method: "POST".into(),
            headers: Default::default(),
            body_template: String::new(),
            credentials_file: None,
            code_ttl: 600,
        };
        assert_eq!(body_kind(&cfg), BodyKind::Raw);
        cfg.headers.insert(
            "content-TYPE".into(),
            "application/json; charset=utf-8".into(),
        );
        assert_eq!(body_kind(&cfg), BodyKind::Json);
        cfg.headers.insert(
            "content-TYPE".into(),
            "application/x-www-form-urlencoded".into(),
        );
        assert_eq!(body_kind(&cfg), BodyKind::Form);
    }

    #[test]
    fn a_command_is_an_absolute_path_or_a_name_in_path() {
        let sh = resolve("sh").unwrap();
        assert!(sh.is_absolute() && sh.ends_with("sh"), "{}", sh.display());
        assert_eq!(resolve("/opt/x").unwrap(), PathBuf::from("/opt/x"));
        for bad in ["bin/send-sms", "", "no-such-program-crm2fa"] {
            assert!(resolve(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn reasons_name_the_gateway_by_host_and_port_only() {
        let uri: Uri = "https://sms.example/send?code=1234".parse().unwrap();
        assert_eq!(gateway_name(&uri), "sms.example:443");
        let uri: Uri = "http://127.0.0.1:8080/x".parse().unwrap();
        assert_eq!(gateway_name(&uri), "127.0.0.1:8080");
    }
}
