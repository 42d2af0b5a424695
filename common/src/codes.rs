//! Backup and recovery codes: made from an alphabet without look-alike
//! characters, typed in any case with or without dashes, and stored only as
//! argon2id hashes under a per-user salt, so checking one attempt costs one
//! argon2 evaluation however many codes a user has.
use argon2::{Algorithm, Argon2, Params, Version};
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use crate::crypto::random_bytes;

/// Crockford's base32: no I, L, O or U, so nothing reads as something else.
const ALPHABET: &[u8; 32] = b"0123456789abcdefghjkmnpqrstvwxyz";
/// Characters of a backup code: 8 × 5 bits = 40 bits.
pub const BACKUP_LEN: usize = 8;
/// Characters of a recovery code: 12 × 5 bits = 60 bits.
pub const RECOVERY_LEN: usize = 12;
/// Salt length for the per-user code hashes.
pub const SALT_LEN: usize = 16;
/// Hash length stored per code.
pub const HASH_LEN: usize = 32;

/// A code in canonical form (lower case, no dashes): zeroized, never printed.
#[derive(Clone, PartialEq, Eq, Zeroize, ZeroizeOnDrop)]
pub struct Code(String);

impl std::fmt::Debug for Code {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Code([redacted])")
    }
}

impl Code {
    /// Canonical form of what a user typed: whitespace and dashes dropped,
    /// lower case, and the look-alikes o→0, i/l→1 mapped as Crockford does.
    pub fn normalize(input: &str) -> Code {
        Code(
            input
                .chars()
                .filter(|c| !c.is_whitespace() && *c != '-')
                .map(|c| match c.to_ascii_lowercase() {
                    'o' => '0',
                    'i' | 'l' => '1',
                    c => c,
                })
                .collect(),
        )
    }

    /// A new random code of `len` characters.
    pub fn generate(len: usize) -> Code {
        let bytes = Zeroizing::new(random_bytes(len));
        Code(
            bytes
                .iter()
                .map(|b| ALPHABET[(b & 31) as usize] as char)
                .collect(),
        )
    }

    /// The canonical form.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Is this shaped like a code of `len` characters of our alphabet?
    pub fn is_code_of_len(&self, len: usize) -> bool {
        self.0.len() == len && self.0.bytes().all(|b| ALPHABET.contains(&b))
    }

    /// Is this `len` decimal digits (a TOTP or sent code)?
    pub fn is_digits(&self, len: usize) -> bool {
        self.0.len() == len && self.0.bytes().all(|b| b.is_ascii_digit())
    }

    /// A new random code of `len` decimal digits, each equally likely.
    pub fn generate_digits(len: usize) -> Code {
        let mut out = String::with_capacity(len);
        while out.len() < len {
            let bytes = Zeroizing::new(random_bytes(len));
            // 250 = 25 × 10: drop 250..=255 so every digit is as likely.
            for b in bytes.iter().filter(|&&b| b < 250).take(len - out.len()) {
                out.push(char::from(b'0' + b % 10));
            }
        }
        Code(out)
    }

    /// The form shown to people: groups of four joined by dashes.
    pub fn display(&self) -> Zeroizing<String> {
        let mut out = Zeroizing::new(String::with_capacity(self.0.len() * 5 / 4));
        for (i, c) in self.0.chars().enumerate() {
            if i > 0 && i % 4 == 0 {
                out.push('-');
            }
            out.push(c);
        }
        out
    }

    /// argon2id of the canonical code under the user's salt.
    ///
    /// # Panics
    ///
    /// If `salt` is shorter than argon2's minimum of 8 bytes. Salts are
    /// made [`SALT_LEN`] bytes long by [`new_salt`], and the store refuses
    /// to read any other length.
    pub fn hash(&self, salt: &[u8]) -> [u8; HASH_LEN] {
        let mut out = [0u8; HASH_LEN];
        // SALT_LEN bytes of salt and HASH_LEN bytes of output are within
        // argon2's limits: this cannot fail for a salt the store hands out.
        #[allow(clippy::expect_used)]
        hasher()
            .hash_password_into(self.0.as_bytes(), salt, &mut out)
            .expect("argon2 accepts the salt and output lengths");
        out
    }
}

/// The one argon2id configuration used for codes (OWASP's minimum: 19 MiB, 2 passes).
fn hasher() -> Argon2<'static> {
    // Constant parameters, within argon2's limits.
    #[allow(clippy::expect_used)]
    let params = Params::new(19 * 1024, 2, 1, Some(HASH_LEN)).expect("valid argon2 parameters");
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

/// A new per-user salt.
pub fn new_salt() -> Vec<u8> {
    random_bytes(SALT_LEN)
}

/// A fresh set of `count` backup codes with their hashes.
pub fn backup_set(count: u32, salt: &[u8]) -> Vec<(Code, [u8; HASH_LEN])> {
    (0..count)
        .map(|_| {
            let c = Code::generate(BACKUP_LEN);
            let h = c.hash(salt);
            (c, h)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typed_forms_normalize_to_one_code() {
        let c = Code::normalize("AB1O-x9zL");
        assert_eq!(c.as_str(), "ab10x9z1");
        assert_eq!(Code::normalize(" ab10 x9z1 ").as_str(), "ab10x9z1");
        assert_eq!(Code::normalize("ab10-x9z1").display().as_str(), "ab10-x9z1");
        assert_eq!(
            Code::normalize("ab10x9z1wxyz").display().as_str(),
            "ab10-x9z1-wxyz"
        );
    }

    #[test]
    fn generated_codes_use_the_alphabet_and_differ() {
        let a = Code::generate(BACKUP_LEN);
        let b = Code::generate(BACKUP_LEN);
        assert!(a.is_code_of_len(BACKUP_LEN));
        assert_ne!(a, b);
        assert_eq!(Code::normalize(&a.display()), a);
        assert!(!a.as_str().contains(['i', 'l', 'o', 'u']));
    }

    #[test]
    fn digit_codes_have_their_length_and_only_digits() {
        for len in [6, 8] {
            let c = Code::generate_digits(len);
            assert!(c.is_digits(len), "{}", c.as_str());
            assert!(!c.is_digits(len + 1));
        }
        assert_ne!(Code::generate_digits(8), Code::generate_digits(8));
        assert!(!Code::normalize("12345a").is_digits(6));
    }

    #[test]
    fn hash_depends_on_code_and_salt() {
        let c = Code::normalize("abcd-efgh");
        let s1 = [1u8; SALT_LEN];
        let s2 = [2u8; SALT_LEN];
        assert_eq!(c.hash(&s1), Code::normalize("ABCD EFGH").hash(&s1));
        assert_ne!(c.hash(&s1), c.hash(&s2));
        assert_ne!(c.hash(&s1), Code::normalize("abcd-efgj").hash(&s1));
    }

    #[test]
    fn debug_never_shows_the_code() {
        assert_eq!(format!("{:?}", Code::normalize("abcd")), "Code([redacted])");
    }
}
