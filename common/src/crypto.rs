//! Secrets at rest: the host key file and authenticated encryption of TOTP
//! secrets (ChaCha20-Poly1305, the user name bound in as associated data so a
//! row copied to another user does not decrypt).
use std::path::{Path, PathBuf};

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use crate::error::{Error, Result};
use crate::fsperm::{self, Secrecy};

const KEY_LEN: usize = 32;
const NONCE_LEN: usize = 12;
/// Version byte in front of every sealed value, so the format can change.
const SEALED_V1: u8 = 1;

/// Secret bytes: zeroized on drop, never printed.
#[derive(Clone, PartialEq, Eq, Zeroize, ZeroizeOnDrop)]
pub struct Secret(Vec<u8>);

impl Secret {
    /// Keep `bytes` as a secret.
    pub fn new(bytes: Vec<u8>) -> Self {
        Secret(bytes)
    }
    /// A new random secret of `len` bytes.
    pub fn random(len: usize) -> Self {
        Secret(random_bytes(len))
    }
    /// The bytes, for the one computation that needs them.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[redacted]")
    }
}

/// Cryptographically secure random bytes from the kernel.
///
/// # Panics
///
/// If the kernel has no randomness to give: no secret, salt or code can
/// be made safely then (the module turns the panic into a refused login).
pub fn random_bytes(len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    #[allow(clippy::expect_used)]
    getrandom::getrandom(&mut v).expect("the kernel random number generator failed");
    v
}

/// `parts` joined in one buffer allocated at its full size, wiped when
/// dropped: text with a secret in it (a setup block, new backup codes)
/// leaves no copy behind in a buffer that grew and was freed.
pub fn joined(parts: &[&str]) -> Zeroizing<String> {
    let mut out = Zeroizing::new(String::with_capacity(parts.iter().map(|p| p.len()).sum()));
    for part in parts {
        out.push_str(part);
    }
    out
}

/// The host key that encrypts secrets in the store, and the file it came
/// from (named when a secret does not open).
pub struct HostKey {
    key: Zeroizing<[u8; KEY_LEN]>,
    path: PathBuf,
}

impl std::fmt::Debug for HostKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostKey")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl HostKey {
    /// Read the key file: 64 hex digits, owned by root, mode 0600.
    pub fn load(path: &Path) -> Result<HostKey> {
        let text = fsperm::read_trusted(path, Secrecy::OwnerOnly)?;
        let mut key = Zeroizing::new([0u8; KEY_LEN]);
        hex::decode_to_slice(text.trim_ascii(), &mut key[..]).map_err(|_| Error::Key {
            path: path.into(),
            message: "is not 64 hexadecimal digits; restore it from backup (without it no \
                      enrolled secret can be read)"
                .into(),
        })?;
        Ok(HostKey {
            key,
            path: path.into(),
        })
    }

    /// Create a new random key file (mode 0600). Fails if one exists.
    pub fn create(path: &Path) -> Result<HostKey> {
        let mut key = Zeroizing::new([0u8; KEY_LEN]);
        key.copy_from_slice(&random_bytes(KEY_LEN));
        let mut text = Zeroizing::new(hex::encode(&key[..]));
        text.push('\n');
        fsperm::create_private_file(path, text.as_bytes())?;
        Ok(HostKey {
            key,
            path: path.into(),
        })
    }

    /// A fixed key, for tests.
    #[cfg(test)]
    pub fn for_tests(byte: u8) -> HostKey {
        HostKey {
            key: Zeroizing::new([byte; KEY_LEN]),
            path: PathBuf::from("test.key"),
        }
    }

    /// The key file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The error for a sealed value of `user` that does not open.
    pub fn decrypt_error(&self, user: &str) -> Error {
        Error::Decrypt {
            user: user.into(),
            key_file: self.path.clone(),
        }
    }

    /// Encrypt `plain` for `user`: version byte, random nonce, ciphertext+tag.
    pub fn seal(&self, user: &str, plain: &[u8]) -> Vec<u8> {
        let cipher = ChaCha20Poly1305::new(Key::from_slice(&self.key[..]));
        let nonce = random_bytes(NONCE_LEN);
        // Encryption fails only past 2^38 bytes of plaintext.
        #[allow(clippy::expect_used)]
        let ct = cipher
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: plain,
                    aad: user.as_bytes(),
                },
            )
            .expect("ChaCha20-Poly1305 encryption cannot fail for in-memory buffers");
        let mut out = Vec::with_capacity(1 + NONCE_LEN + ct.len());
        out.push(SEALED_V1);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ct);
        out
    }

    /// Decrypt what [`HostKey::seal`] made for the same `user`.
    pub fn open(&self, user: &str, sealed: &[u8]) -> Result<Secret> {
        let bad = || self.decrypt_error(user);
        if sealed.len() < 1 + NONCE_LEN + 16 || sealed[0] != SEALED_V1 {
            return Err(bad());
        }
        let cipher = ChaCha20Poly1305::new(Key::from_slice(&self.key[..]));
        let plain = cipher
            .decrypt(
                Nonce::from_slice(&sealed[1..1 + NONCE_LEN]),
                Payload {
                    msg: &sealed[1 + NONCE_LEN..],
                    aad: user.as_bytes(),
                },
            )
            .map_err(|_| bad())?;
        Ok(Secret(plain))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn joined_text_is_built_in_one_buffer_of_its_size() {
        let parts = ["Manual key: ", "ABCD EFGH", "\n", &"x".repeat(300), "\n"];
        let text = joined(&parts);
        assert_eq!(*text, parts.concat());
        // Grown by pushes, the buffer would have been reallocated (and
        // the earlier, shorter copy freed unwiped) and left with slack.
        assert_eq!(text.capacity(), text.len());
    }

    #[test]
    fn sealed_secret_opens_only_for_its_user_and_key() {
        let k = HostKey::for_tests(7);
        let sealed = k.seal("alice", b"top secret");
        assert!(!sealed.windows(10).any(|w| w == b"top secret"));
        assert_eq!(k.open("alice", &sealed).unwrap().expose(), b"top secret");
        assert!(k.open("bob", &sealed).is_err());
        assert!(HostKey::for_tests(8).open("alice", &sealed).is_err());
        let mut tampered = sealed.clone();
        *tampered.last_mut().unwrap() ^= 1;
        assert!(k.open("alice", &tampered).is_err());
    }

    #[test]
    fn secret_debug_is_redacted() {
        assert_eq!(format!("{:?}", Secret::new(b"abc".to_vec())), "[redacted]");
    }

    #[test]
    fn key_file_round_trips_and_is_0600() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("secret.key");
        let k = HostKey::create(&p).unwrap();
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let sealed = k.seal("u", b"s");
        if nix::unistd::geteuid().as_raw() == 0 {
            let k2 = HostKey::load(&p).unwrap();
            assert_eq!(k2.open("u", &sealed).unwrap().expose(), b"s");
        }
        assert!(
            HostKey::create(&p).is_err(),
            "an existing key is never overwritten"
        );
    }
}
