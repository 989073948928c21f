//! The one integration-test binary (modules keep build time down).

mod admin_api;
mod agents;
mod cli;
mod connect;
mod faults;
mod helpers;
mod integrity;
mod keyfiles;
mod layering;
mod limits;
mod oauth;
mod openapi;
mod pg_suite;
mod plaintext;
mod proxy;
mod replicas;
mod rotation;
mod scopes;
