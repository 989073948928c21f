//! Envelope-encryption primitives.
//!
//! Owns the ciphertext formats and the associated-data layout: secrets are sealed with
//! AES-256-GCM under a per-write data key ([`Dek`]); data keys are wrapped with
//! AES-256-GCM under a versioned [`MasterKey`]. Every ciphertext starts with a versioned
//! header naming its algorithm (and, for wrapped keys, the master-key version); the
//! header is part of the associated data, together with a [`Binding`] that names where
//! the ciphertext belongs (purpose, connection, owner, record, version) and the field.
//! A ciphertext moved anywhere else fails to open.
//!
//! This module does no I/O and never logs. Errors are deliberately opaque: a failed
//! open says only that it failed, never why.

pub mod keyfile;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use zeroize::Zeroizing;

/// Length of every symmetric key (AES-256).
pub const KEY_LEN: usize = 32;
const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;
const FORMAT_V1: u8 = 1;
const ALG_AES256_GCM: u8 = 1;
/// Sealed secret: format, algorithm, nonce.
const SEALED_HEADER_LEN: usize = 2 + NONCE_LEN;
/// Wrapped DEK: format, algorithm, master-key version (u32 BE), nonce.
const WRAPPED_HEADER_LEN: usize = 2 + 4 + NONCE_LEN;
/// Length of a wrapped DEK.
pub const WRAPPED_LEN: usize = WRAPPED_HEADER_LEN + KEY_LEN + TAG_LEN;

/// Why a crypto operation failed. Deliberately coarse.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CryptoError {
    #[error("ciphertext is malformed")]
    Malformed,
    #[error("ciphertext format or algorithm is not supported")]
    Unsupported,
    #[error("ciphertext failed authentication")]
    Authentication,
    #[error("the operating system's random number generator failed")]
    Random,
    #[error("invalid key-derivation parameters")]
    Parameters,
}

/// Fills `buf` from the operating system's CSPRNG.
pub fn random_bytes(buf: &mut [u8]) -> Result<(), CryptoError> {
    getrandom::getrandom(buf).map_err(|_| CryptoError::Random)
}

fn random_key() -> Result<Zeroizing<[u8; KEY_LEN]>, CryptoError> {
    let mut key = Zeroizing::new([0u8; KEY_LEN]);
    random_bytes(key.as_mut())?;
    Ok(key)
}

/// What a data key belongs to: purpose, connection, owner, record id and the record's
/// secret version, in an unambiguous (length-prefixed) encoding. Stored beside the
/// wrapped DEK so the key can be re-wrapped without knowing the record's schema.
#[derive(Clone, PartialEq, Eq)]
pub struct Binding(Vec<u8>);

impl Binding {
    pub fn new(purpose: &str, connection: &str, owner: &str, record: &str, version: u64) -> Self {
        let mut out = Vec::with_capacity(64);
        for part in [purpose, connection, owner, record] {
            push_part(&mut out, part.as_bytes());
        }
        out.extend_from_slice(&version.to_be_bytes());
        Binding(out)
    }

    /// Re-creates a binding read back from storage.
    pub fn from_stored(bytes: Vec<u8>) -> Self {
        Binding(bytes)
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl std::fmt::Debug for Binding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Binding({} bytes)", self.0.len())
    }
}

fn push_part(out: &mut Vec<u8>, part: &[u8]) {
    out.extend_from_slice(&(part.len() as u32).to_be_bytes());
    out.extend_from_slice(part);
}

fn aad(label: &[u8], header: &[u8], binding: &Binding, field: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(label.len() + header.len() + binding.0.len() + field.len() + 12);
    push_part(&mut out, label);
    push_part(&mut out, header);
    push_part(&mut out, &binding.0);
    push_part(&mut out, field);
    out
}

fn cipher(key: &[u8; KEY_LEN]) -> Aes256Gcm {
    Aes256Gcm::new(key.into())
}

/// A data-encryption key: fresh for every write of a secret record.
pub struct Dek(Zeroizing<[u8; KEY_LEN]>);

impl Dek {
    pub fn generate() -> Result<Self, CryptoError> {
        Ok(Dek(random_key()?))
    }

    /// Encrypts `plaintext` for `field` of the record named by `binding`.
    pub fn seal(&self, plaintext: &[u8], binding: &Binding, field: &str) -> Result<Vec<u8>, CryptoError> {
        let mut out = Vec::with_capacity(SEALED_HEADER_LEN + plaintext.len() + TAG_LEN);
        out.extend_from_slice(&[FORMAT_V1, ALG_AES256_GCM]);
        let mut nonce = [0u8; NONCE_LEN];
        random_bytes(&mut nonce)?;
        out.extend_from_slice(&nonce);
        let aad = aad(b"latchkey/secret", &out, binding, field.as_bytes());
        let ct = cipher(&self.0)
            .encrypt(Nonce::from_slice(&nonce), Payload { msg: plaintext, aad: &aad })
            .map_err(|_| CryptoError::Authentication)?;
        out.extend_from_slice(&ct);
        Ok(out)
    }

    /// Decrypts a ciphertext made by [`Dek::seal`] with the same binding and field.
    pub fn open(&self, sealed: &[u8], binding: &Binding, field: &str) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        if sealed.len() < SEALED_HEADER_LEN + TAG_LEN {
            return Err(CryptoError::Malformed);
        }
        if sealed[0] != FORMAT_V1 || sealed[1] != ALG_AES256_GCM {
            return Err(CryptoError::Unsupported);
        }
        let (header, ct) = sealed.split_at(SEALED_HEADER_LEN);
        let aad = aad(b"latchkey/secret", header, binding, field.as_bytes());
        cipher(&self.0)
            .decrypt(Nonce::from_slice(&header[2..]), Payload { msg: ct, aad: &aad })
            .map(Zeroizing::new)
            .map_err(|_| CryptoError::Authentication)
    }
}

impl std::fmt::Debug for Dek {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Dek([redacted])")
    }
}

/// A versioned key-encryption key. Never serialised except by [`keyfile`], which
/// encrypts it under the passphrase-derived key.
pub struct MasterKey {
    version: u32,
    key: Zeroizing<[u8; KEY_LEN]>,
}

impl MasterKey {
    pub fn generate(version: u32) -> Result<Self, CryptoError> {
        Ok(MasterKey { version, key: random_key()? })
    }

    pub(crate) fn from_bytes(version: u32, key: Zeroizing<[u8; KEY_LEN]>) -> Self {
        MasterKey { version, key }
    }

    pub(crate) fn expose(&self) -> &[u8; KEY_LEN] {
        &self.key
    }

    pub fn version(&self) -> u32 {
        self.version
    }

    /// Wraps `dek` for the record named by `binding`. The header carries this key's
    /// version, and the version is authenticated with the rest of the header.
    pub fn wrap(&self, dek: &Dek, binding: &Binding) -> Result<Vec<u8>, CryptoError> {
        let mut out = Vec::with_capacity(WRAPPED_LEN);
        out.extend_from_slice(&[FORMAT_V1, ALG_AES256_GCM]);
        out.extend_from_slice(&self.version.to_be_bytes());
        let mut nonce = [0u8; NONCE_LEN];
        random_bytes(&mut nonce)?;
        out.extend_from_slice(&nonce);
        let aad = aad(b"latchkey/dek-wrap", &out, binding, b"");
        let ct = cipher(&self.key)
            .encrypt(Nonce::from_slice(&nonce), Payload { msg: dek.0.as_slice(), aad: &aad })
            .map_err(|_| CryptoError::Authentication)?;
        out.extend_from_slice(&ct);
        Ok(out)
    }

    /// Unwraps a DEK made by [`MasterKey::wrap`] of this version for the same binding.
    pub fn unwrap(&self, wrapped: &[u8], binding: &Binding) -> Result<Dek, CryptoError> {
        if wrapped_key_version(wrapped)? != self.version {
            return Err(CryptoError::Authentication);
        }
        let (header, ct) = wrapped.split_at(WRAPPED_HEADER_LEN);
        let aad = aad(b"latchkey/dek-wrap", header, binding, b"");
        let plain = Zeroizing::new(
            cipher(&self.key)
                .decrypt(Nonce::from_slice(&header[6..]), Payload { msg: ct, aad: &aad })
                .map_err(|_| CryptoError::Authentication)?,
        );
        let mut key = Zeroizing::new([0u8; KEY_LEN]);
        if plain.len() != KEY_LEN {
            return Err(CryptoError::Malformed);
        }
        key.copy_from_slice(&plain);
        Ok(Dek(key))
    }
}

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MasterKey").field("version", &self.version).field("key", &"[redacted]").finish()
    }
}

/// Reads the master-key version from a wrapped DEK's header (unauthenticated until the
/// DEK is unwrapped with that version).
pub fn wrapped_key_version(wrapped: &[u8]) -> Result<u32, CryptoError> {
    if wrapped.len() != WRAPPED_LEN {
        return Err(CryptoError::Malformed);
    }
    if wrapped[0] != FORMAT_V1 || wrapped[1] != ALG_AES256_GCM {
        return Err(CryptoError::Unsupported);
    }
    Ok(u32::from_be_bytes([wrapped[2], wrapped[3], wrapped[4], wrapped[5]]))
}

/// HMAC-SHA256 of `data` under `key` (RFC 2104).
pub fn hmac_sha256(key: &[u8], data: &[u8]) -> [u8; 32] {
    use hmac::{Mac, SimpleHmac};
    // Any key length is valid for HMAC, so this cannot fail.
    let mut mac = match <SimpleHmac<sha2::Sha256> as Mac>::new_from_slice(key) {
        Ok(m) => m,
        Err(_) => return [0u8; 32],
    };
    mac.update(data);
    mac.finalize().into_bytes().into()
}

/// A long-lived key for MACs (rows, the audit chain): 256 random bits, never derived from
/// a master-key version (see `vault::vault_keys`).
pub struct MacKey {
    /// The keyed HMAC state, computed once (cloned per MAC: two hash blocks saved each time).
    keyed: hmac::Hmac<sha2::Sha256>,
}

impl MacKey {
    pub fn new(key: Zeroizing<[u8; KEY_LEN]>) -> Result<Self, CryptoError> {
        use hmac::Mac;
        // HMAC takes keys of any length, so this does not fail; if it ever did, no key.
        let keyed = <hmac::Hmac<sha2::Sha256> as Mac>::new_from_slice(key.as_ref()).map_err(|_| CryptoError::Malformed)?;
        Ok(MacKey { keyed })
    }

    /// HMAC-SHA256 of `data`.
    pub fn mac(&self, data: &[u8]) -> [u8; 32] {
        use hmac::Mac;
        let mut m = self.keyed.clone();
        m.update(data);
        m.finalize().into_bytes().into()
    }

    /// A public fingerprint of the key (to notice it was replaced), not usable as a MAC.
    pub fn fingerprint(&self) -> String {
        hex(&self.mac(b"latchkey/key-fingerprint/v1")[..8])
    }
}

impl std::fmt::Debug for MacKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MacKey(..)")
    }
}

/// An Ed25519 key that signs audit checkpoints (its seed is a vault key).
pub struct CheckpointSigner(ed25519_dalek::SigningKey);

impl CheckpointSigner {
    pub fn from_seed(seed: &[u8; KEY_LEN]) -> Self {
        CheckpointSigner(ed25519_dalek::SigningKey::from_bytes(seed))
    }

    pub fn sign(&self, msg: &[u8]) -> [u8; 64] {
        use ed25519_dalek::Signer;
        self.0.sign(msg).to_bytes()
    }

    pub fn public_key(&self) -> [u8; 32] {
        self.0.verifying_key().to_bytes()
    }

    /// A short public id of the key: the first 8 bytes of the public key's SHA-256, hex.
    pub fn kid(&self) -> String {
        hex(&sha256(&self.public_key())[..8])
    }
}

impl std::fmt::Debug for CheckpointSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CheckpointSigner({})", self.kid())
    }
}

/// Whether `sig` is `public`'s Ed25519 signature of `msg`.
pub fn ed25519_verify(public: &[u8; 32], msg: &[u8], sig: &[u8; 64]) -> bool {
    use ed25519_dalek::Verifier;
    ed25519_dalek::VerifyingKey::from_bytes(public).is_ok_and(|k| k.verify(msg, &ed25519_dalek::Signature::from_bytes(sig)).is_ok())
}

/// SHA-256 of `data`.
pub fn sha256(data: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(data).into()
}

/// Base64url without padding (JOSE, PKCE, random tokens).
pub fn b64url(data: &[u8]) -> String {
    use base64ct::{Base64UrlUnpadded, Encoding};
    Base64UrlUnpadded::encode_string(data)
}

/// Decodes base64url without padding; `None` if malformed.
pub fn b64url_decode(s: &str) -> Option<Vec<u8>> {
    use base64ct::{Base64UrlUnpadded, Encoding};
    Base64UrlUnpadded::decode_vec(s).ok()
}

/// Lower-case hex.
pub fn hex(b: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(b.len() * 2);
    for x in b {
        s.push(char::from(DIGITS[usize::from(x >> 4)]));
        s.push(char::from(DIGITS[usize::from(x & 0x0f)]));
    }
    s
}

/// Constant-time equality of two byte strings (length is not secret).
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    fn binding(owner: &str, version: u64) -> Binding {
        Binding::new("credential", "crm", owner, "cred_1", version)
    }

    #[test]
    fn a_mac_key_is_hmac_sha256_under_its_key() {
        let key = Zeroizing::new([0x0bu8; 32]);
        let k = MacKey::new(key.clone()).unwrap();
        for data in [&b""[..], b"Hi There", &[0xdd; 200]] {
            assert_eq!(k.mac(data), hmac_sha256(key.as_ref(), data), "the keyed state is reused, not changed");
        }
        assert_ne!(k.mac(b"x"), MacKey::new(Zeroizing::new([0x0c; 32])).unwrap().mac(b"x"));
    }

    #[test]
    fn hmac_matches_rfc_4231() {
        // Test case 2.
        let mac = hmac_sha256(b"Jefe", b"what do ya want for nothing?");
        assert_eq!(hex(&mac), "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
        // Test case 6: a key longer than the block size.
        let mac = hmac_sha256(&[0xaa; 131], b"Test Using Larger Than Block-Size Key - Hash Key First");
        assert_eq!(hex(&mac), "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54");
    }

    #[test]
    fn seal_open_round_trip() {
        let dek = Dek::generate().unwrap();
        let b = binding("user:alice", 1);
        let ct = dek.seal(b"s3cret", &b, "api_key").unwrap();
        assert_eq!(dek.open(&ct, &b, "api_key").unwrap().as_slice(), b"s3cret");
        assert!(!ct.windows(6).any(|w| w == b"s3cret"));
    }

    #[test]
    fn ciphertext_moved_to_another_owner_field_record_or_version_fails() {
        let dek = Dek::generate().unwrap();
        let b = binding("user:alice", 1);
        let ct = dek.seal(b"token", &b, "access_token").unwrap();
        assert_eq!(dek.open(&ct, &binding("user:bob", 1), "access_token").unwrap_err(), CryptoError::Authentication);
        assert_eq!(dek.open(&ct, &b, "refresh_token").unwrap_err(), CryptoError::Authentication);
        assert_eq!(dek.open(&ct, &binding("user:alice", 2), "access_token").unwrap_err(), CryptoError::Authentication);
        let other_record = Binding::new("credential", "crm", "user:alice", "cred_2", 1);
        assert_eq!(dek.open(&ct, &other_record, "access_token").unwrap_err(), CryptoError::Authentication);
        let other_conn = Binding::new("credential", "mail", "user:alice", "cred_1", 1);
        assert_eq!(dek.open(&ct, &other_conn, "access_token").unwrap_err(), CryptoError::Authentication);
        let other_purpose = Binding::new("connection", "crm", "user:alice", "cred_1", 1);
        assert_eq!(dek.open(&ct, &other_purpose, "access_token").unwrap_err(), CryptoError::Authentication);
    }

    #[test]
    fn swapped_ciphertexts_between_rows_fail_under_their_own_keys() {
        let (dek_a, dek_b) = (Dek::generate().unwrap(), Dek::generate().unwrap());
        let (ba, bb) = (binding("user:alice", 1), binding("user:bob", 1));
        let ct_a = dek_a.seal(b"alice", &ba, "api_key").unwrap();
        let ct_b = dek_b.seal(b"bob", &bb, "api_key").unwrap();
        assert!(dek_a.open(&ct_b, &ba, "api_key").is_err());
        assert!(dek_b.open(&ct_a, &bb, "api_key").is_err());
        // Even with the right key, another row's binding fails.
        assert!(dek_b.open(&ct_b, &ba, "api_key").is_err());
    }

    #[test]
    fn every_flipped_header_or_body_byte_fails() {
        let dek = Dek::generate().unwrap();
        let b = binding("user:alice", 1);
        let ct = dek.seal(b"payload", &b, "api_key").unwrap();
        for i in 0..ct.len() {
            let mut bad = ct.clone();
            bad[i] ^= 0x01;
            assert!(dek.open(&bad, &b, "api_key").is_err(), "flip at byte {i} went unnoticed");
        }
        assert_eq!(dek.open(&ct[..10], &b, "api_key").unwrap_err(), CryptoError::Malformed);
    }

    #[test]
    fn wrap_unwrap_and_version_checks() {
        let v1 = MasterKey::generate(1).unwrap();
        let v2 = MasterKey::generate(2).unwrap();
        let dek = Dek::generate().unwrap();
        let b = binding("user:alice", 1);
        let ct = dek.seal(b"x", &b, "api_key").unwrap();
        let w1 = v1.wrap(&dek, &b).unwrap();
        assert_eq!(wrapped_key_version(&w1).unwrap(), 1);
        // The old version still opens what it wrapped.
        let back = v1.unwrap(&w1, &b).unwrap();
        assert_eq!(back.open(&ct, &b, "api_key").unwrap().as_slice(), b"x");
        // Wrong key version fails, also when the header is rewritten to claim it.
        assert!(v2.unwrap(&w1, &b).is_err());
        let mut forged = w1.clone();
        forged[2..6].copy_from_slice(&2u32.to_be_bytes());
        assert!(v2.unwrap(&forged, &b).is_err());
        assert!(v1.unwrap(&forged, &b).is_err());
        // Wrapped key moved to another record fails.
        assert!(v1.unwrap(&w1, &binding("user:bob", 1)).is_err());
        for i in 0..w1.len() {
            let mut bad = w1.clone();
            bad[i] ^= 0x80;
            assert!(v1.unwrap(&bad, &b).is_err(), "flip at byte {i} went unnoticed");
        }
    }

    #[test]
    fn no_repeated_nonce_over_100k_encryptions() {
        let dek = Dek::generate().unwrap();
        let mk = MasterKey::generate(1).unwrap();
        let b = binding("user:alice", 1);
        let mut seen = HashSet::with_capacity(200_000);
        for _ in 0..100_000 {
            let ct = dek.seal(b"v", &b, "f").unwrap();
            assert!(seen.insert(ct[2..2 + NONCE_LEN].to_vec()), "nonce repeated");
            let w = mk.wrap(&dek, &b).unwrap();
            assert!(seen.insert(w[6..6 + NONCE_LEN].to_vec()), "nonce repeated");
        }
    }

    #[test]
    fn debug_never_prints_key_material() {
        let mk = MasterKey::from_bytes(7, Zeroizing::new([0xAB; KEY_LEN]));
        let s = format!("{mk:?} {:?}", Dek(Zeroizing::new([0xAB; KEY_LEN])));
        assert!(!s.to_lowercase().contains("ab, ") && !s.contains("171"), "{s}");
        assert!(s.contains("redacted"));
    }
}
