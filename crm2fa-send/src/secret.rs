//! The secrets this program handles: passwords read from root-only files,
//! and the code and text of the message, kept out of every reason it gives.
use std::path::Path;

use crm2fa_common::delivery::Message;
use crm2fa_common::fsperm::{self, Secrecy};
use zeroize::Zeroizing;

use crate::Failure;

/// The longest reason printed, in characters.
const MAX_REASON: usize = 400;

/// The contents of the root-only file `path` (owned by root, mode 0600 or
/// tighter, in root's directories), without its trailing newline. `what`
/// names the setting in errors, e.g. `[email] password_file`.
pub(crate) fn read_file(path: &Path, what: &str) -> Result<Zeroizing<String>, Failure> {
    let bytes = fsperm::read_trusted(path, Secrecy::OwnerOnly)
        .map_err(|e| Failure::Config(format!("{what}: {e}")))?;
    let mut text = match std::str::from_utf8(&bytes) {
        Ok(t) => Zeroizing::new(t.to_string()),
        Err(_) => {
            return Err(Failure::Config(format!(
                "{what}: {} is not UTF-8 text",
                path.display()
            )))
        }
    };
    let keep = text.trim_end_matches(['\n', '\r']).len();
    text.truncate(keep);
    if text.is_empty() {
        return Err(Failure::Config(format!(
            "{what}: {} is empty",
            path.display()
        )));
    }
    Ok(text)
}

/// `reason` on one line, at most [`MAX_REASON`] characters, with the code
/// and the text of `msg` (whole or any line of it) replaced by
/// `[redacted]`: a server, a gateway or a command may echo what it got.
pub(crate) fn scrub(reason: &str, msg: &Message) -> String {
    let mut out = reason.to_string();
    let mut secrets: Vec<&str> = vec![msg.code.trim(), msg.text.trim()];
    secrets.extend(msg.text.lines().map(str::trim));
    // The longest first, so that a line is not half replaced by a part of it.
    secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
    for s in secrets.into_iter().filter(|s| !s.is_empty()) {
        if out.contains(s) {
            out = out.replace(s, "[redacted]");
        }
    }
    let mut line: String = out
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(MAX_REASON)
        .collect();
    if out.chars().count() > MAX_REASON {
        line.push('…');
    }
    line.trim().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crm2fa_common::delivery::Channel;

    fn msg() -> Message {
        Message {
            channel: Channel::Sms,
            to: "+4412345678".into(),
            subject: String::new(),
            text: "Your code is 482913.\nValid 10 minutes.".into(),
            code: "482913".into(),
        }
    }

    #[test]
    fn the_code_and_the_text_never_stay_in_a_reason() {
        let m = msg();
        let r = scrub(
            "gateway said: bad message \"Your code is 482913.\nValid 10 minutes.\"",
            &m,
        );
        assert!(!r.contains("482913") && !r.contains("Valid 10"), "{r}");
        assert!(!r.contains('\n'), "{r}");
        let r = scrub("rejected Valid 10 minutes. and 482913", &m);
        assert_eq!(r, "rejected [redacted] and [redacted]");
    }

    #[test]
    fn a_long_reason_is_cut() {
        let r = scrub(&"x".repeat(2000), &msg());
        assert!(r.chars().count() <= MAX_REASON + 1);
    }
}
