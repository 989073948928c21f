//! latchkey: a self-hosted credential vault for AI agents.
//!
//! Layers, top to bottom: `cli` and `api` (edges: parse input into `model` types),
//! `vault` (the service: rules, sealing, audit), `store` (SQLite, ciphertext only),
//! `keys` (key files and the key ring) and `crypto` (pure primitives, no I/O).
#![forbid(unsafe_code)]
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

pub mod api;
pub mod audit;
pub mod auth;
pub mod cli;
pub mod config;
pub mod crypto;
pub mod keys;
pub mod model;
pub mod oauth;
pub mod policy;
pub mod secret;
pub mod startup;
pub mod store;
pub mod telemetry;
pub mod time;
pub mod vault;
