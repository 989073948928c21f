//! Agent client secrets: 256 random bits, shown once, stored as a keyed hash.
//!
//! A secret with 256 bits of entropy cannot be guessed, so its hash has to make a stolen
//! database useless, not slow down guessing: HMAC-SHA256 under a long-lived random key
//! that the vault seals like a data key (so it is not in the database in the clear, and
//! survives master-key rotation), compared in constant time. That costs microseconds per
//! attempt, where argon2 cost milliseconds and tens of MiB — which let a flood of bad
//! credentials fill the CPUs.
//!
//! Hashes written before (argon2id PHC strings) still verify, and the vault replaces each
//! with a keyed hash on its next successful use.

use argon2::password_hash::{PasswordHash, PasswordVerifier};
use argon2::{Algorithm, Argon2, Params, Version};

use crate::crypto::{b64url, b64url_decode, ct_eq, hmac_sha256, random_bytes, CryptoError};
use crate::secret::Secret;

/// The keyed-hash format: `hmac-sha256$<base64url MAC>`.
const KEYED: &str = "hmac-sha256$";
/// Client secrets start with this, so that a leaked one is recognisable.
pub const SECRET_PREFIX: &str = "lks_";

/// How a presented secret compares with a stored hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verified {
    Yes,
    /// It matches a legacy (argon2) hash, which should be replaced by a keyed one.
    YesLegacy,
    No,
}

/// The keyed hash of a secret.
pub fn hash(key: &[u8], secret: &str) -> String {
    format!("{KEYED}{}", b64url(&hmac_sha256(key, secret.as_bytes())))
}

/// A new client secret and its keyed hash.
pub fn generate(key: &[u8]) -> Result<(Secret, String), CryptoError> {
    let mut raw = zeroize::Zeroizing::new([0u8; 32]);
    random_bytes(raw.as_mut())?;
    let secret = Secret::new(format!("{SECRET_PREFIX}{}", b64url(raw.as_ref())));
    let h = hash(key, secret.expose());
    Ok((secret, h))
}

/// Checks a presented secret against a stored hash, in constant time for keyed hashes.
/// `None` for `stored` (an unknown client) costs the same as a wrong secret.
pub fn verify(key: &[u8], presented: &str, stored: Option<&str>) -> Verified {
    let computed = hmac_sha256(key, presented.as_bytes());
    match stored {
        Some(s) if s.starts_with(KEYED) => {
            let expected = b64url_decode(&s[KEYED.len()..]).unwrap_or_default();
            if ct_eq(&computed, &expected) {
                Verified::Yes
            } else {
                Verified::No
            }
        }
        Some(s) if s.starts_with("$argon2") => match (PasswordHash::new(s), legacy_hasher()) {
            (Ok(h), Ok(hasher)) if hasher.verify_password(presented.as_bytes(), &h).is_ok() => Verified::YesLegacy,
            _ => Verified::No,
        },
        _ => {
            // Compare against something, so an unknown client takes as long as a wrong secret.
            let _ = ct_eq(&computed, &[0u8; 32]);
            Verified::No
        }
    }
}

/// The parameters legacy hashes were written with (OWASP's argon2id minimum).
fn legacy_hasher() -> Result<Argon2<'static>, CryptoError> {
    let params = Params::new(19 * 1024, 2, 1, None).map_err(|_| CryptoError::Parameters)?;
    Ok(Argon2::new(Algorithm::Argon2id, Version::V0x13, params))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyed_hashes_verify_in_constant_time_and_depend_on_the_key() {
        let key = [7u8; 32];
        let (s, h) = generate(&key).unwrap();
        assert!(h.starts_with(KEYED) && s.expose().starts_with(SECRET_PREFIX));
        assert!(!h.contains(s.expose()));
        assert_eq!(verify(&key, s.expose(), Some(&h)), Verified::Yes);
        assert_eq!(verify(&key, "lks_wrong", Some(&h)), Verified::No);
        assert_eq!(verify(&[8u8; 32], s.expose(), Some(&h)), Verified::No, "another key");
        assert_eq!(verify(&key, s.expose(), None), Verified::No);
        assert_eq!(verify(&key, s.expose(), Some("not a hash")), Verified::No);
        assert_eq!(verify(&key, s.expose(), Some("hmac-sha256$!!!")), Verified::No);
    }

    #[test]
    fn legacy_argon2_hashes_still_verify() {
        use argon2::password_hash::{PasswordHasher, SaltString};
        let salt = SaltString::encode_b64(&[1u8; 16]).unwrap();
        let legacy = legacy_hasher().unwrap().hash_password(b"lks_old", &salt).unwrap().to_string();
        assert_eq!(verify(&[0u8; 32], "lks_old", Some(&legacy)), Verified::YesLegacy);
        assert_eq!(verify(&[0u8; 32], "lks_other", Some(&legacy)), Verified::No);
    }
}
