//! The conversation with the person logging in, and what crm2fa says in it.

/// The prompt for a code.
pub const PROMPT: &str = "Verification code: ";
/// Said after every wrong code.
pub const INVALID: &str = "Invalid verification code.";
/// The last prompt after new backup codes, so they are seen before the login ends.
pub const SAVED_PROMPT: &str = "Press Enter when you have saved them: ";

/// The conversation broke down (the client went away or refused).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvError;

impl std::fmt::Display for ConvError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the PAM conversation failed")
    }
}

impl std::error::Error for ConvError {}

/// The conversation with the person logging in: libpam's in the module, a
/// scripted one in tests.
pub trait Conversation {
    /// Ask with echo off. `Ok(None)`: no answer (end of input).
    fn prompt_hidden(&mut self, msg: &str) -> Result<Option<String>, ConvError>;
    /// Ask with echo on.
    fn prompt_visible(&mut self, msg: &str) -> Result<Option<String>, ConvError>;
    /// Show information.
    fn info(&mut self, msg: &str);
    /// Show an error.
    fn error(&mut self, msg: &str);
    /// Show information the user cannot do without, always followed by a
    /// prompt (new backup codes, the setup of an authenticator app): where
    /// informational messages are suppressed (`PAM_SILENT`), it goes out
    /// with that prompt's text instead of being lost.
    fn essential(&mut self, msg: &str) {
        self.info(msg);
    }
}
