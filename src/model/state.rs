//! The lifecycle states stored in the database, as enums. Reading a row turns the stored
//! text into one of these; an unknown value is an error, never a default.

use std::fmt;
use std::str::FromStr;

use serde::Serialize;

/// An unknown state name read from storage.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {what} '{value}'")]
pub struct UnknownState {
    pub what: &'static str,
    pub value: String,
}

macro_rules! stored_enum {
    ($(#[$doc:meta])* $name:ident, $what:literal { $($variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
        #[serde(rename_all = "snake_case")]
        pub enum $name { $($variant),+ }

        impl $name {
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }
        }

        impl FromStr for $name {
            type Err = UnknownState;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $($text => Ok($name::$variant),)+
                    other => Err(UnknownState { what: $what, value: other.chars().take(32).collect() }),
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

stored_enum!(
    /// A master key version: `staged` → `active` → `decrypt_only` → `retired` → `destroyed`.
    MasterKeyState, "master key state" {
        Staged => "staged",
        Active => "active",
        DecryptOnly => "decrypt_only",
        Retired => "retired",
        Destroyed => "destroyed",
    }
);

impl MasterKeyState {
    /// Whether data may be wrapped under a key in this state (so its file must load).
    pub fn holds_data(self) -> bool {
        matches!(self, MasterKeyState::Staged | MasterKeyState::Active | MasterKeyState::DecryptOnly)
    }
}

stored_enum!(
    /// A credential's status.
    CredentialStatus, "credential status" {
        Active => "active",
        NeedsReauth => "needs_reauth",
        Revoked => "revoked",
    }
);

stored_enum!(
    /// A token-signing key: `active` signs, `published` only verifies, `retired` is gone.
    SigningKeyState, "signing key state" {
        Active => "active",
        Published => "published",
        Retired => "retired",
    }
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_unknown_values_are_errors() {
        for s in [MasterKeyState::Staged, MasterKeyState::DecryptOnly, MasterKeyState::Destroyed] {
            assert_eq!(s.as_str().parse::<MasterKeyState>().unwrap(), s);
        }
        assert_eq!("needs_reauth".parse::<CredentialStatus>().unwrap(), CredentialStatus::NeedsReauth);
        let e = "actve".parse::<CredentialStatus>().unwrap_err();
        assert_eq!(e.to_string(), "unknown credential status 'actve'");
        assert!("".parse::<MasterKeyState>().is_err());
    }
}
