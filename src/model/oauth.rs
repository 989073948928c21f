//! OAuth data shared by the OAuth client (which produces it) and the vault (which stores
//! it): a provider's token response, PKCE pairs and single-use random values, and when a
//! token is due for refresh.

use crate::crypto::{b64url, random_bytes, sha256, CryptoError};
use crate::secret::Secret;
use crate::time::Timestamp;

/// Refresh this long before expiry (or at half the lifetime, if that is shorter).
pub const REFRESH_MARGIN: i64 = 300;

/// A successful token response as the provider sent it. `scope` stays raw here: the vault
/// decides what an unparseable scope string means (see [`super::HeldScopes`]).
#[derive(Debug)]
pub struct TokenSet {
    pub access_token: Secret,
    pub refresh_token: Option<Secret>,
    pub expires_in: Option<i64>,
    pub scope: Option<String>,
    pub token_type: String,
    /// Salesforce: the org's API host.
    pub instance_url: Option<String>,
    /// An OIDC ID token, when the provider sent one (verified before it is trusted).
    pub id_token: Option<Secret>,
}

/// When to refresh a token expiring at `expires_at`, written at `now`:
/// `min(REFRESH_MARGIN, lifetime / 2)` before expiry, minus up to 10 % jitter so that tokens
/// issued together are not all refreshed in the same second.
pub fn refresh_due_at(now: Timestamp, expires_at: Timestamp) -> Timestamp {
    let lead = REFRESH_MARGIN.min((expires_at - now).max(0) / 2);
    let mut b = [0u8; 2];
    // Jitter is a nicety: without randomness there is none.
    let jitter = match random_bytes(&mut b) {
        Ok(()) if lead >= 10 => i64::from(u16::from_le_bytes(b)) % (lead / 10 + 1),
        _ => 0,
    };
    expires_at - lead - jitter
}

/// 256 random bits, base64url: single-use values such as an OAuth `state`.
pub fn random_token() -> Result<Secret, CryptoError> {
    let mut raw = zeroize::Zeroizing::new([0u8; 32]);
    random_bytes(raw.as_mut())?;
    Ok(Secret::new(b64url(raw.as_ref())))
}

/// A PKCE pair (RFC 7636): a 43-character verifier and its S256 challenge.
#[derive(Debug)]
pub struct Pkce {
    pub verifier: Secret,
    pub challenge: String,
}

impl Pkce {
    pub fn generate() -> Result<Self, CryptoError> {
        let verifier = random_token()?;
        let challenge = b64url(&sha256(verifier.expose().as_bytes()));
        Ok(Pkce { verifier, challenge })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pkce_challenge_is_s256_of_verifier() {
        let p = Pkce::generate().unwrap();
        assert_eq!(p.verifier.len(), 43);
        assert_eq!(p.challenge, b64url(&sha256(p.verifier.expose().as_bytes())));
        assert_ne!(p.verifier.expose(), Pkce::generate().unwrap().verifier.expose());
    }

    #[test]
    fn refresh_is_scheduled_before_expiry() {
        // A one-hour token: about five minutes before, less up to 10 % jitter.
        let due = refresh_due_at(1_000, 4_600);
        assert!((4_600 - 330..=4_600 - 300).contains(&due), "{due}");
        // A 30-second token: about 15 s before.
        let due = refresh_due_at(1_000, 1_030);
        assert!((1_013..=1_015).contains(&due), "{due}");
        // Already expired: due at once.
        assert_eq!(refresh_due_at(1_000, 900), 900);
    }
}
