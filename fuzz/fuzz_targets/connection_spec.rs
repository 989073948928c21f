//! Connection bodies (`POST /v1/admin/connections`) and JSON merge patches (`PATCH …`), from
//! the bytes of a request body. Checks: no panic; an accepted spec is stored as JSON and
//! must read back as itself (what `ConnectionSpec::from_json` accepts it must accept again);
//! errors never echo input (see `common::assert_no_echo`).
#![no_main]

use std::sync::OnceLock;

use latchkey::model::{ConnectionPatch, ConnectionSpec, NewConnection};
use libfuzzer_sys::fuzz_target;
use serde_json::{json, Value};

mod common;

/// Stored connections a patch is applied to.
fn stored() -> &'static [ConnectionSpec] {
    static S: OnceLock<Vec<ConnectionSpec>> = OnceLock::new();
    S.get_or_init(|| {
        [
            json!({"id": "k", "kind": "api_key", "api_key": {"header": "X-Key"}}),
            json!({"id": "crm", "kind": "oauth2", "oauth2": {"authorization_endpoint": "https://crm.example/a",
                "token_endpoint": "https://crm.example/t", "client_id": "abc", "scopes": ["crm:read"]},
                "scope_roles": {"crm:read": ["sales"]}}),
            json!({"id": "g", "kind": "oauth2", "provider": "google", "oauth2": {"client_id": "c"}}),
        ]
        .into_iter()
        .map(|v| NewConnection::from_json(v).unwrap().spec)
        .collect()
    })
}

/// A spec as stored (serialised) reads back as itself.
fn reads_back(spec: &ConnectionSpec) {
    let stored = serde_json::to_value(spec).unwrap();
    let again = ConnectionSpec::from_json(stored.clone()).unwrap_or_else(|e| panic!("stored spec {stored} does not read back: {e}"));
    assert_eq!(&again, spec);
}

fuzz_target!(|data: &[u8]| {
    let Ok(body) = serde_json::from_slice::<Value>(data) else { return };
    let no_echo = |msg: &str, reparse: &dyn Fn(&Value) -> Option<String>| common::assert_no_echo(msg, &body, reparse, |_| false);
    let new_error = |v: &Value| NewConnection::from_json(v.clone()).err().map(|e| e.0);
    let patch_error = |v: &Value| ConnectionPatch::from_json(v.clone()).err().map(|e| e.0);

    match NewConnection::from_json(body.clone()) {
        Ok(c) => {
            reads_back(&c.spec);
            assert!(c.spec.oauth2.as_ref().is_none_or(|o| o.scope_enforcement.is_some()), "stored specs state their scope enforcement");
            assert!(c.client_secret.as_ref().is_none_or(|s| !s.is_empty()));
        }
        Err(e) => no_echo(&e.0, &new_error),
    }

    match ConnectionPatch::from_json(body.clone()) {
        Ok(patch) => {
            assert!(patch.fields().iter().all(|f| *f != "id" && *f != "kind"));
            for spec in stored() {
                match patch.apply(spec) {
                    Ok(next) => {
                        assert_eq!((&next.id, next.kind), (&spec.id, spec.kind), "a patch never changes id or kind");
                        reads_back(&next);
                    }
                    Err(e) => no_echo(&e.0, &|v| ConnectionPatch::from_json(v.clone()).ok().and_then(|p| p.apply(spec).err()).map(|e| e.0)),
                }
            }
        }
        Err(e) => no_echo(&e.0, &patch_error),
    }
});
