//! Agent client secrets: 256 random bits, shown once, stored as an argon2id PHC hash.
//!
//! The secrets are high-entropy, so the hash only has to make a stolen database
//! useless, not resist guessing: OWASP's minimum argon2id parameters (19 MiB, t=2,
//! p=1) keep the token endpoint fast.

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};

use crate::crypto::{random_bytes, CryptoError};
use crate::secret::Secret;

/// The hasher with OWASP's minimum argon2id parameters. These are constants that
/// `Params::new` accepts; should it ever refuse them, hashing fails rather than falling
/// back to other parameters.
fn hasher() -> Result<Argon2<'static>, CryptoError> {
    let params = Params::new(19 * 1024, 2, 1, None).map_err(|_| CryptoError::Parameters)?;
    Ok(Argon2::new(Algorithm::Argon2id, Version::V0x13, params))
}

/// A new client secret and its hash.
pub fn generate() -> Result<(Secret, String), CryptoError> {
    let mut raw = zeroize::Zeroizing::new([0u8; 32]);
    random_bytes(raw.as_mut())?;
    let secret = Secret::new(format!("lks_{}", crate::crypto::b64url(raw.as_ref())));
    let mut salt = [0u8; 16];
    random_bytes(&mut salt)?;
    let salt = SaltString::encode_b64(&salt).map_err(|_| CryptoError::Random)?;
    let hash = hasher()?.hash_password(secret.expose().as_bytes(), &salt).map_err(|_| CryptoError::Random)?.to_string();
    Ok((secret, hash))
}

/// Checks a presented secret against a stored hash (constant time inside argon2).
pub fn verify(presented: &str, stored: &str) -> bool {
    match (PasswordHash::new(stored), hasher()) {
        (Ok(h), Ok(hasher)) => hasher.verify_password(presented.as_bytes(), &h).is_ok(),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn generate_and_verify() {
        let (s, h) = super::generate().unwrap();
        assert!(h.starts_with("$argon2id$"));
        assert!(!h.contains(s.expose()));
        assert!(super::verify(s.expose(), &h));
        assert!(!super::verify("lks_wrong", &h));
        assert!(!super::verify(s.expose(), "not a hash"));
    }
}
