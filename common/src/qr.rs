//! QR codes for the terminal. Light modules are drawn and dark ones left
//! blank, which scans on the usual light-on-dark terminal.
use qrcode::render::unicode::Dense1x2;
use qrcode::{EcLevel, QrCode};
use zeroize::Zeroizing;

/// How to draw the QR code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QrStyle {
    /// Half-block characters: compact, needs a UTF-8 terminal.
    Unicode,
    /// `##` cells: works in any locale, twice as tall.
    Ascii,
    /// No QR code (the manual key and URI are still shown).
    None,
}

impl QrStyle {
    /// Read a style name: `unicode`, `ascii` or `none`.
    pub fn parse(s: &str) -> Option<QrStyle> {
        match s {
            "unicode" => Some(QrStyle::Unicode),
            "ascii" => Some(QrStyle::Ascii),
            "none" => Some(QrStyle::None),
            _ => None,
        }
    }
}

/// Render `data` as text lines, or `None` for [`QrStyle::None`].
pub fn render(data: &str, style: QrStyle) -> Option<Zeroizing<String>> {
    if style == QrStyle::None {
        return None;
    }
    let code = QrCode::with_error_correction_level(data.as_bytes(), EcLevel::L)
        .or_else(|_| QrCode::new(data.as_bytes()))
        .ok()?;
    Some(Zeroizing::new(match style {
        QrStyle::Unicode => code
            .render::<Dense1x2>()
            .dark_color(Dense1x2::Light)
            .light_color(Dense1x2::Dark)
            .quiet_zone(true)
            .build(),
        _ => code
            .render::<char>()
            .dark_color(' ')
            .light_color('#')
            .module_dimensions(2, 1)
            .quiet_zone(true)
            .build(),
    }))
}

/// What a user needs to set up an authenticator app: the QR code of `uri`
/// in `style`, then the manual key and the URI (labelled `uri_label`).
pub fn setup_block(uri: &str, base32: &str, style: QrStyle, uri_label: &str) -> Zeroizing<String> {
    let qr = render(uri, style);
    let key = crate::totp::grouped(base32);
    let (qr, qr_end) = match &qr {
        Some(q) => (q.as_str(), "\n"),
        None => ("", ""),
    };
    crate::crypto::joined(&[qr, qr_end, "Manual key: ", &key, "\n", uri_label, uri, "\n"])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ascii_rendering_is_plain_ascii_and_square() {
        let q = render("otpauth://totp/crm2fa:alice?secret=ABC", QrStyle::Ascii).unwrap();
        assert!(q.is_ascii());
        let lines: Vec<&str> = q.lines().collect();
        assert_eq!(
            lines[0].len(),
            lines.len() * 2,
            "each module is two characters wide"
        );
    }

    #[test]
    fn unicode_rendering_uses_half_blocks() {
        let q = render("otpauth://totp/x", QrStyle::Unicode).unwrap();
        assert!(q.contains('█') || q.contains('▀') || q.contains('▄'));
        assert!(render("x", QrStyle::None).is_none());
    }
}
