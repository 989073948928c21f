//! latchkey: a self-hosted credential vault for AI agents.
//!
//! # Layers
//!
//! Modules form layers, and every import points down (or within a layer), never up:
//!
//! | layer | modules | owns |
//! |---|---|---|
//! | 8 | `cli` | the command line: parse arguments, call the library |
//! | 7 | `startup` | building the server from settings and a vault |
//! | 6 | `api` | HTTP: parse requests, call one service method, map errors to responses |
//! | 5 | `service` | what one request asks: token issuance, release with refresh, proxied calls, connect links, disconnect |
//! | 4 | `oauth` | talking to OAuth providers: endpoints, code exchange, refresh with single flight, the refresher |
//! | 3 | `vault` | the rules: sealing, policy decisions, key lifecycle, audit |
//! | 2 | `policy`, `auth` | pure decisions; agent tokens, subject tokens |
//! | 1 | `store` | SQLite: schema, migrations, statements; ciphertext only |
//! | 0 | `crypto`, `keys`, `model`, `audit`, `metrics`, `secret`, `time`, `config`, `telemetry`, `egress` | primitives and domain types; `crypto` does no I/O; `egress` is where proxied calls may go |
//!
//! The integration test `layering` (tests/api/layering.rs) enforces the table: it reads
//! every `crate::…` path in `src/` and fails on an import of a higher layer. By hand:
//! `grep -rn 'crate::oauth' src/vault` must print nothing, and likewise for any module
//! against the layers above it.
#![forbid(unsafe_code)]
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

pub mod api;
pub mod audit;
pub mod auth;
pub mod cli;
pub mod config;
pub mod crypto;
pub mod egress;
pub mod keys;
pub mod metrics;
pub mod model;
pub mod oauth;
pub mod policy;
pub mod secret;
pub mod service;
pub mod startup;
pub mod store;
pub mod telemetry;
pub mod time;
pub mod vault;

/// Entry points for the fuzz targets in `fuzz/` that are private to their modules; built only
/// with the `fuzzing` feature. Not an API.
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing {
    pub use crate::auth::subject::pinned_algorithm_for_fuzzing as pinned_algorithm;
    pub use crate::oauth::client::{
        discovery_document_for_fuzzing as discovery_document, provider_token_response_for_fuzzing as provider_token_response,
    };
}
