//! The master-key file format (pure encode/decode; the keys module does the file I/O).
//!
//! Layout (all integers big-endian):
//!
//! ```text
//! magic "LKMK" | format u8 | key version u32 | kdf u8 | m_cost KiB u32 | t_cost u32 |
//! p_cost u32 | salt [16] | nonce [12] | AES-256-GCM(master key) [32 + 16]
//! ```
//!
//! Everything before the ciphertext is the header and is the associated data, so the
//! KDF parameters cannot be changed without detection. Parameters are also bounded
//! before any work is done, so a tampered header cannot make us allocate gigabytes.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use zeroize::Zeroizing;

use super::{random_bytes, CryptoError, MasterKey, KEY_LEN};

const MAGIC: &[u8; 4] = b"LKMK";
const FORMAT: u8 = 1;
const KDF_NONE: u8 = 0;
const KDF_ARGON2ID: u8 = 1;
const SALT_LEN: usize = 16;
const HEADER_LEN: usize = 4 + 1 + 4 + 1 + 12 + SALT_LEN + 12;
/// Total length of a key file.
pub const FILE_LEN: usize = HEADER_LEN + KEY_LEN + 16;

/// Argon2id cost parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KdfParams {
    pub m_cost_kib: u32,
    pub t_cost: u32,
    pub p_cost: u32,
}

impl KdfParams {
    /// The production parameters: 64 MiB, 3 passes, 4 lanes.
    pub const RECOMMENDED: KdfParams = KdfParams { m_cost_kib: 64 * 1024, t_cost: 3, p_cost: 4 };

    /// Cheap parameters for tests only; refused by [`KdfLimits::PRODUCTION`].
    pub const INSECURE_FOR_TESTS: KdfParams = KdfParams { m_cost_kib: 64, t_cost: 1, p_cost: 1 };
}

/// Bounds applied to the parameters read from a file before any KDF work is done.
#[derive(Debug, Clone, Copy)]
pub struct KdfLimits {
    pub min: KdfParams,
    pub max: KdfParams,
}

impl KdfLimits {
    pub const PRODUCTION: KdfLimits =
        KdfLimits { min: KdfParams::RECOMMENDED, max: KdfParams { m_cost_kib: 1024 * 1024, t_cost: 16, p_cost: 16 } };
    pub const TESTS: KdfLimits =
        KdfLimits { min: KdfParams::INSECURE_FOR_TESTS, max: KdfParams { m_cost_kib: 1024 * 1024, t_cost: 16, p_cost: 16 } };

    fn admits(&self, p: &KdfParams) -> bool {
        (self.min.m_cost_kib..=self.max.m_cost_kib).contains(&p.m_cost_kib)
            && (self.min.t_cost..=self.max.t_cost).contains(&p.t_cost)
            && (self.min.p_cost..=self.max.p_cost).contains(&p.p_cost)
    }
}

/// How the master key in a file is protected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protection {
    /// Development only: anyone who can read the file has the key.
    None,
    Passphrase(KdfParams),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyFileError {
    #[error("not a latchkey key file (bad magic or wrong length)")]
    NotAKeyFile,
    #[error("key file format {0} is not supported by this version of latchkey")]
    UnsupportedFormat(u8),
    #[error("the key file header names KDF parameters outside the allowed range (m={m} KiB, t={t}, p={p}); the header was modified or the file is corrupt")]
    KdfParamsOutOfRange { m: u32, t: u32, p: u32 },
    #[error("the key file header names an unknown KDF ({0}); the file is corrupt or was modified")]
    UnknownKdf(u8),
    #[error("this key file is protected by a passphrase, but none was given")]
    PassphraseRequired,
    #[error("the key file could not be opened: wrong passphrase, or the file was modified")]
    OpenFailed,
    #[error("the key file holds version {found}, expected version {expected}")]
    VersionMismatch { expected: u32, found: u32 },
    #[error("key derivation failed")]
    Kdf,
    #[error(transparent)]
    Crypto(#[from] CryptoError),
}

/// A view of a key file's header, read without the passphrase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub version: u32,
    pub protection: Protection,
}

fn parse_header(bytes: &[u8], limits: &KdfLimits) -> Result<Header, KeyFileError> {
    if bytes.len() != FILE_LEN || &bytes[..4] != MAGIC {
        return Err(KeyFileError::NotAKeyFile);
    }
    if bytes[4] != FORMAT {
        return Err(KeyFileError::UnsupportedFormat(bytes[4]));
    }
    let u32_at = |i: usize| u32::from_be_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]);
    let version = u32_at(5);
    let params = KdfParams { m_cost_kib: u32_at(10), t_cost: u32_at(14), p_cost: u32_at(18) };
    let protection = match bytes[9] {
        KDF_NONE if params == (KdfParams { m_cost_kib: 0, t_cost: 0, p_cost: 0 }) => Protection::None,
        KDF_NONE => return Err(KeyFileError::KdfParamsOutOfRange { m: params.m_cost_kib, t: params.t_cost, p: params.p_cost }),
        KDF_ARGON2ID if limits.admits(&params) => Protection::Passphrase(params),
        KDF_ARGON2ID => return Err(KeyFileError::KdfParamsOutOfRange { m: params.m_cost_kib, t: params.t_cost, p: params.p_cost }),
        other => return Err(KeyFileError::UnknownKdf(other)),
    };
    Ok(Header { version, protection })
}

/// Reads the header of a key file (no passphrase needed, nothing authenticated yet).
pub fn header(bytes: &[u8], limits: &KdfLimits) -> Result<Header, KeyFileError> {
    parse_header(bytes, limits)
}

fn derive_kek(protection: Protection, passphrase: Option<&[u8]>, salt: &[u8]) -> Result<Zeroizing<[u8; KEY_LEN]>, KeyFileError> {
    let mut kek = Zeroizing::new([0u8; KEY_LEN]);
    match protection {
        Protection::None => {
            // No secret goes in: this only gives the file the same shape and integrity
            // check as a protected one.
            let mut input = b"latchkey/unprotected-kek/v1".to_vec();
            input.extend_from_slice(salt);
            kek.copy_from_slice(&super::sha256(&input));
        }
        Protection::Passphrase(p) => {
            let passphrase = passphrase.ok_or(KeyFileError::PassphraseRequired)?;
            let params = argon2::Params::new(p.m_cost_kib, p.t_cost, p.p_cost, Some(KEY_LEN)).map_err(|_| KeyFileError::Kdf)?;
            argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params)
                .hash_password_into(passphrase, salt, kek.as_mut())
                .map_err(|_| KeyFileError::Kdf)?;
        }
    }
    Ok(kek)
}

/// Encrypts `key` into the key-file format.
pub fn encode(key: &MasterKey, protection: Protection, passphrase: Option<&[u8]>) -> Result<Vec<u8>, KeyFileError> {
    let (kdf, params) = match protection {
        Protection::None => (KDF_NONE, KdfParams { m_cost_kib: 0, t_cost: 0, p_cost: 0 }),
        Protection::Passphrase(p) => (KDF_ARGON2ID, p),
    };
    let mut out = Vec::with_capacity(FILE_LEN);
    out.extend_from_slice(MAGIC);
    out.push(FORMAT);
    out.extend_from_slice(&key.version().to_be_bytes());
    out.push(kdf);
    for v in [params.m_cost_kib, params.t_cost, params.p_cost] {
        out.extend_from_slice(&v.to_be_bytes());
    }
    let mut salt = [0u8; SALT_LEN];
    random_bytes(&mut salt)?;
    out.extend_from_slice(&salt);
    let mut nonce = [0u8; 12];
    random_bytes(&mut nonce)?;
    out.extend_from_slice(&nonce);
    let kek = derive_kek(protection, passphrase, &salt)?;
    let ct = Aes256Gcm::new(kek.as_ref().into())
        .encrypt(Nonce::from_slice(&nonce), Payload { msg: key.expose(), aad: &out })
        .map_err(|_| KeyFileError::Crypto(CryptoError::Authentication))?;
    out.extend_from_slice(&ct);
    Ok(out)
}

/// Opens a key file that must hold `expected_version`.
pub fn decode(bytes: &[u8], expected_version: u32, passphrase: Option<&[u8]>, limits: &KdfLimits) -> Result<MasterKey, KeyFileError> {
    let header = parse_header(bytes, limits)?;
    if header.version != expected_version {
        return Err(KeyFileError::VersionMismatch { expected: expected_version, found: header.version });
    }
    let salt = &bytes[22..22 + SALT_LEN];
    let nonce = &bytes[22 + SALT_LEN..HEADER_LEN];
    let kek = derive_kek(header.protection, passphrase, salt)?;
    let plain = Zeroizing::new(
        Aes256Gcm::new(kek.as_ref().into())
            .decrypt(Nonce::from_slice(nonce), Payload { msg: &bytes[HEADER_LEN..], aad: &bytes[..HEADER_LEN] })
            .map_err(|_| KeyFileError::OpenFailed)?,
    );
    let mut key = Zeroizing::new([0u8; KEY_LEN]);
    if plain.len() != KEY_LEN {
        return Err(KeyFileError::OpenFailed);
    }
    key.copy_from_slice(&plain);
    Ok(MasterKey::from_bytes(header.version, key))
}

#[cfg(test)]
mod tests {
    use super::*;

    const FAST: Protection = Protection::Passphrase(KdfParams::INSECURE_FOR_TESTS);

    #[test]
    fn round_trip_with_and_without_passphrase() {
        let mk = MasterKey::generate(3).unwrap();
        let file = encode(&mk, FAST, Some(b"correct horse")).unwrap();
        assert_eq!(file.len(), FILE_LEN);
        let back = decode(&file, 3, Some(b"correct horse"), &KdfLimits::TESTS).unwrap();
        assert_eq!(back.expose(), mk.expose());
        let open = encode(&mk, Protection::None, None).unwrap();
        assert_eq!(decode(&open, 3, None, &KdfLimits::TESTS).unwrap().expose(), mk.expose());
        assert!(!file.windows(KEY_LEN).any(|w| w == mk.expose()));
        assert!(!open.windows(KEY_LEN).any(|w| w == mk.expose()));
    }

    #[test]
    fn wrong_passphrase_missing_passphrase_and_wrong_version_are_refused() {
        let mk = MasterKey::generate(1).unwrap();
        let file = encode(&mk, FAST, Some(b"right")).unwrap();
        assert_eq!(decode(&file, 1, Some(b"wrong"), &KdfLimits::TESTS).unwrap_err(), KeyFileError::OpenFailed);
        assert_eq!(decode(&file, 1, None, &KdfLimits::TESTS).unwrap_err(), KeyFileError::PassphraseRequired);
        assert_eq!(
            decode(&file, 2, Some(b"right"), &KdfLimits::TESTS).unwrap_err(),
            KeyFileError::VersionMismatch { expected: 2, found: 1 }
        );
    }

    #[test]
    fn tampered_kdf_parameters_are_refused() {
        let mk = MasterKey::generate(1).unwrap();
        let file = encode(&mk, FAST, Some(b"pw")).unwrap();
        // Lowered within limits: authentication of the header fails.
        let mut t = file.clone();
        t[14..18].copy_from_slice(&2u32.to_be_bytes());
        assert_eq!(decode(&t, 1, Some(b"pw"), &KdfLimits::TESTS).unwrap_err(), KeyFileError::OpenFailed);
        // Raised past the cap: refused before any work.
        let mut t = file.clone();
        t[10..14].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(matches!(decode(&t, 1, Some(b"pw"), &KdfLimits::TESTS).unwrap_err(), KeyFileError::KdfParamsOutOfRange { .. }));
        // Below the production floor.
        assert!(matches!(decode(&file, 1, Some(b"pw"), &KdfLimits::PRODUCTION).unwrap_err(), KeyFileError::KdfParamsOutOfRange { .. }));
        // Switched to "no KDF": refused, not silently opened.
        let mut t = file.clone();
        t[9] = KDF_NONE;
        assert!(decode(&t, 1, None, &KdfLimits::TESTS).is_err());
        let mut t = file;
        t[0] = b'X';
        assert_eq!(decode(&t, 1, Some(b"pw"), &KdfLimits::TESTS).unwrap_err(), KeyFileError::NotAKeyFile);
    }
}
