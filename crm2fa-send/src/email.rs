//! Email over SMTP with lettre: plain, STARTTLS required, or TLS from the
//! first byte (rustls, the system's CA certificates); optional AUTH with a
//! password from a root-only file. Every connection attempt and every
//! command times out.
use std::error::Error as _;
use std::io::ErrorKind;
use std::time::Duration;

use crm2fa_common::config::{EmailConfig, Tls};
use crm2fa_common::delivery::{mask_email, Message};
use lettre::address::Envelope;
use lettre::message::header::ContentType;
use lettre::message::Mailbox;
use lettre::transport::smtp::authentication::{Credentials, DEFAULT_MECHANISMS};
use lettre::transport::smtp::client::{SmtpConnection, TlsParameters};
use lettre::transport::smtp::commands::{Data, Mail, Rcpt};
use lettre::transport::smtp::extension::{ClientId, MailBodyParameter, MailParameter};

use crate::{secret, Failure};

/// Send `msg` as [email] says; each network step may take `timeout`.
///
/// Until the message's last line is written, a failure means it was not
/// sent. After that, only the server's answer says whether it took the
/// message: a refusal is [`Failure::NotSent`], but no answer (a timeout, a
/// connection dropped) is [`Failure::Unconfirmed`], since the server may
/// have queued it already.
pub(crate) fn send(cfg: &EmailConfig, timeout: Duration, msg: &Message) -> Result<(), Failure> {
    let server = format!("{}:{}", cfg.smtp_host, cfg.smtp_port);
    let not_sent =
        |e: lettre::transport::smtp::Error| Failure::NotSent(reason(&e, &server, timeout, cfg));
    let email = build(cfg, msg)?;
    let session = Session::new(cfg, timeout)?;
    let mut conn = session.connect().map_err(not_sent)?;
    let envelope = email.envelope();
    let body = email.formatted();
    let sent = begin_data(&mut conn, envelope, &body)
        .map_err(not_sent)
        .and_then(|()| {
            conn.message(&body).map(drop).map_err(|e| {
                if e.status().is_some() {
                    not_sent(e)
                } else {
                    Failure::Unconfirmed(format!(
                        "the message went to the mail server {server}, which did not confirm \
                         it: {}",
                        reason(&e, &server, timeout, cfg)
                    ))
                }
            })
        });
    conn.abort();
    sent
}

/// MAIL, RCPT and DATA, as lettre's own send does them: after these the
/// server waits for the message.
fn begin_data(
    conn: &mut SmtpConnection,
    envelope: &Envelope,
    body: &[u8],
) -> Result<(), lettre::transport::smtp::Error> {
    let mut options = vec![];
    let non_ascii = envelope
        .from()
        .into_iter()
        .chain(envelope.to())
        .any(|a| !a.to_string().is_ascii());
    if non_ascii {
        options.push(MailParameter::SmtpUtfEight);
    }
    if !body.is_ascii() {
        options.push(MailParameter::Body(MailBodyParameter::EightBitMime));
    }
    conn.command(Mail::new(envelope.from().cloned(), options))?;
    for to in envelope.to() {
        conn.command(Rcpt::new(to.clone(), vec![]))?;
    }
    conn.command(Data)?;
    Ok(())
}

/// The message: From, To, Subject, a plain-text body, Date and Message-ID.
fn build(cfg: &EmailConfig, msg: &Message) -> Result<lettre::Message, Failure> {
    let from: Mailbox = cfg.from.parse().map_err(|e| {
        Failure::Config(format!(
            "[email] from: {:?} is not an address like \"crm2fa <root@example.com>\" ({e})",
            cfg.from
        ))
    })?;
    let to: Mailbox = msg.to.trim().parse().map_err(|_| {
        Failure::Input(format!(
            "the recipient {} is not an email address",
            mask_email(&msg.to)
        ))
    })?;
    // A header is one line.
    let subject: String = msg
        .subject
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    lettre::Message::builder()
        .from(from)
        .to(to)
        .subject(subject.trim())
        .message_id(Some(message_id()))
        .header(ContentType::TEXT_PLAIN)
        .body(msg.text.clone())
        .map_err(|e| Failure::Input(format!("cannot build the email: {e}")))
}

/// This host's name, if it is one a mail server accepts after EHLO.
fn hostname() -> Option<String> {
    let name = nix::unistd::gethostname().ok()?.into_string().ok()?;
    let fine = !name.is_empty()
        && name.len() <= 253
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
    fine.then_some(name)
}

/// A Message-ID unique to this process and moment, at this host.
fn message_id() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    format!(
        "<{:x}.{:x}.{}@{}>",
        now.as_secs(),
        now.subsec_nanos(),
        std::process::id(),
        hostname().unwrap_or_else(|| "localhost".into())
    )
}

/// How to reach the mail server: [email] as a connection's settings.
struct Session {
    host: String,
    port: u16,
    timeout: Duration,
    tls: Tls,
    tls_params: Option<TlsParameters>,
    hello: ClientId,
    credentials: Option<Credentials>,
}

impl Session {
    fn new(cfg: &EmailConfig, timeout: Duration) -> Result<Session, Failure> {
        let tls_params = match cfg.tls {
            Tls::None => None,
            Tls::Starttls | Tls::Tls => Some(
                TlsParameters::builder(cfg.smtp_host.clone())
                    .build_rustls()
                    .map_err(|e| Failure::Config(format!("[email] tls: cannot set up TLS: {e}")))?,
            ),
        };
        let credentials = if cfg.username.is_empty() {
            None
        } else {
            let path = cfg.password_file.as_ref().ok_or_else(|| {
                Failure::Config(
                    "[email] username is set but password_file is not: name the root-only \
                     file that holds the SMTP password"
                        .into(),
                )
            })?;
            let password = secret::read_file(path, "[email] password_file")?;
            Some(Credentials::new(
                cfg.username.clone(),
                password.as_str().to_owned(),
            ))
        };
        Ok(Session {
            host: cfg.smtp_host.clone(),
            port: cfg.smtp_port,
            timeout,
            tls: cfg.tls,
            tls_params,
            hello: hostname().map_or_else(ClientId::default, ClientId::Domain),
            credentials,
        })
    }

    /// Connected, greeted, encrypted as [email] tls says (STARTTLS is
    /// never skipped), logged in when a username is set: as lettre's
    /// transport connects.
    fn connect(&self) -> Result<SmtpConnection, lettre::transport::smtp::Error> {
        let wrapper = match self.tls {
            Tls::Tls => self.tls_params.as_ref(),
            Tls::None | Tls::Starttls => None,
        };
        let mut conn = SmtpConnection::connect(
            (self.host.as_str(), self.port),
            Some(self.timeout),
            &self.hello,
            wrapper,
            None,
        )?;
        let mut secure_and_log_in = || {
            if let (Tls::Starttls, Some(params)) = (self.tls, &self.tls_params) {
                conn.starttls(params, &self.hello)?;
            }
            if let Some(credentials) = &self.credentials {
                conn.auth(DEFAULT_MECHANISMS, credentials)?;
            }
            Ok(())
        };
        match secure_and_log_in() {
            Ok(()) => Ok(conn),
            Err(e) => {
                conn.abort();
                Err(e)
            }
        }
    }
}

/// The first I/O error under `e`, if any.
fn io_error<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a std::io::Error> {
    let mut source = Some(e);
    while let Some(err) = source {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            return Some(io);
        }
        source = err.source();
    }
    None
}

/// What the system says about an I/O error, without "(os error N)".
pub(crate) fn plain_io(e: &std::io::Error) -> String {
    let s = e.to_string();
    match s.find(" (os error ") {
        Some(i) => s[..i].to_string(),
        None => s,
    }
}

/// One line that says why the mail server did not take the message.
fn reason(
    e: &lettre::transport::smtp::Error,
    server: &str,
    timeout: Duration,
    cfg: &EmailConfig,
) -> String {
    let secs = timeout.as_secs_f64();
    if let Some(code) = e.status() {
        let said = e.source().map(|s| s.to_string()).unwrap_or_default();
        let said = said.trim();
        if code.to_string() == "535" || code.to_string() == "534" {
            return format!(
                "the mail server {server} rejected the login as {:?}: {code} {said}",
                cfg.username
            );
        }
        let kind = if e.is_transient() {
            "for now (try again later)"
        } else {
            "for good"
        };
        return format!("the mail server {server} refused the message {kind}: {code} {said}");
    }
    if let Some(io) = io_error(e) {
        match io.kind() {
            // A read or write timeout reports EAGAIN on Linux.
            ErrorKind::TimedOut | ErrorKind::WouldBlock => {
                return format!(
                    "timed out after {secs:.1} s waiting for the mail server {server} \
                     (it accepted no connection or did not answer)"
                )
            }
            ErrorKind::ConnectionRefused
            | ErrorKind::HostUnreachable
            | ErrorKind::NetworkUnreachable
            | ErrorKind::AddrNotAvailable
            | ErrorKind::NotFound => {
                return format!(
                    "cannot connect to the mail server {server}: {}",
                    plain_io(io)
                )
            }
            ErrorKind::ConnectionReset
            | ErrorKind::ConnectionAborted
            | ErrorKind::UnexpectedEof => {
                return format!(
                    "the mail server {server} closed the connection: {}",
                    plain_io(io)
                )
            }
            _ => {}
        }
        if e.to_string().starts_with("Connection error") {
            // Name resolution failed, or a socket could not be made.
            return format!(
                "cannot connect to the mail server {server}: {}",
                plain_io(io)
            );
        }
    }
    if e.is_tls() {
        let why = e.source().map(|s| s.to_string()).unwrap_or_default();
        return format!("TLS with the mail server {server} failed: {why}");
    }
    format!("sending through the mail server {server} failed: {e}")
}
