//! Agent policies, as the API reads them (`PUT /v1/admin/agents/{id}/policy`: serde_json
//! from the body bytes, errors cleaned), as the CLI reads them (`Policy::parse_json`), and
//! inside agent bodies (`POST /v1/admin/agents`). Checks: no panic; the two readings agree;
//! an accepted policy is stored as JSON and reads back as itself; errors never echo input
//! (a duplicate grant names its connection id on purpose: ids are not secrets).
#![no_main]

use latchkey::model::{clean_serde_error, ConnectionId};
use latchkey::policy::Policy;
use latchkey::vault::NewAgent;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

mod common;

fuzz_target!(|data: &[u8]| {
    let body = serde_json::from_slice::<Value>(data).unwrap_or(Value::Null);
    let no_echo = |msg: &str, reparse: &dyn Fn(&Value) -> Option<String>| {
        common::assert_no_echo(msg, &body, reparse, |s| ConnectionId::parse(s).is_ok())
    };
    let clean = |e: serde_json::Error| clean_serde_error(&e.to_string());

    let api = serde_json::from_slice::<Policy>(data).map_err(|e| clean_serde_error(&e.to_string()));
    match &api {
        Ok(p) => {
            assert!(p.grants.len() <= 256);
            let stored = serde_json::to_string(p).unwrap();
            let again: Policy = serde_json::from_str(&stored).unwrap_or_else(|e| panic!("stored policy {stored} does not read back: {e}"));
            assert_eq!(&again, p);
            for g in &p.grants {
                assert_eq!(p.grant_for(&g.connection), Some(g));
                assert!(g.max_ttl.is_none_or(|t| (1..=86_400).contains(&t)));
            }
        }
        Err(msg) => no_echo(msg, &|v| serde_json::from_value::<Policy>(v.clone()).err().map(clean)),
    }

    if let Ok(text) = std::str::from_utf8(data) {
        match Policy::parse_json(text) {
            Ok(p) => assert_eq!(api.as_ref().ok(), Some(&p), "the CLI and the API read a policy alike"),
            Err(e) => {
                assert!(api.is_err(), "the CLI and the API read a policy alike");
                no_echo(&e.0, &|v| Policy::parse_json(&v.to_string()).err().map(|e| e.0));
            }
        }
    }

    if let Err(e) = serde_json::from_slice::<NewAgent>(data) {
        no_echo(&clean(e), &|v| serde_json::from_value::<NewAgent>(v.clone()).err().map(clean));
    }
});
