//! Identifiers from paths, queries and bodies: connection and agent ids, owners, scopes.
//! Checks: no panic; what parses prints back as the input and re-parses (also through
//! serde); errors never echo the input.
#![no_main]

use latchkey::model::{AgentId, ConnectionId, Owner, Scope, ValidationError};
use libfuzzer_sys::fuzz_target;

mod common;

/// An error for an input of [`common::ECHO_MIN`] bytes or more must not contain it, unless
/// the text is also in a message for a known-bad canary (then it is latchkey's own).
fn no_echo(input: &str, e: &ValidationError, canaries: &[Result<(), ValidationError>]) {
    let msg = e.to_string();
    if input.len() >= common::ECHO_MIN && msg.contains(input) {
        let own = canaries.iter().any(|c| c.as_ref().is_err_and(|c| c.0.contains(input)));
        assert!(own, "an error message echoes its input {input:?}: {msg}");
    }
}

fn drop_ok<T>(r: Result<T, ValidationError>) -> Result<(), ValidationError> {
    r.map(|_| ())
}

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else { return };

    match ConnectionId::parse(s) {
        Ok(c) => {
            assert_eq!(c.as_str(), s);
            assert_eq!(c.to_string(), s);
            let json = serde_json::to_string(&c).unwrap();
            assert_eq!(serde_json::from_str::<ConnectionId>(&json).unwrap(), c);
            assert!(AgentId::parse(s).is_ok(), "agent ids follow the connection id rule");
        }
        Err(e) => {
            no_echo(s, &e, &[drop_ok(ConnectionId::parse("")), drop_ok(ConnectionId::parse("A"))]);
            assert!(serde_json::from_value::<ConnectionId>(serde_json::Value::String(s.into())).is_err());
        }
    }

    match AgentId::parse(s) {
        Ok(a) => assert_eq!(a.as_str(), s),
        Err(e) => {
            no_echo(s, &e, &[drop_ok(AgentId::parse(""))]);
            assert!(ConnectionId::parse(s).is_err());
        }
    }

    match Owner::parse(s) {
        Ok(o) => {
            assert_eq!(o.to_string(), s, "an owner prints as it was written");
            assert_eq!(Owner::parse(&o.to_string()).unwrap(), o);
            assert_eq!(Owner::new(o.kind(), o.id()).unwrap(), o);
            let json = serde_json::to_string(&o).unwrap();
            assert_eq!(serde_json::from_str::<Owner>(&json).unwrap(), o);
        }
        Err(e) => {
            no_echo(s, &e, &[drop_ok(Owner::parse("x")), drop_ok(Owner::parse("user:")), drop_ok(Owner::parse("tenant: "))]);
            assert!(serde_json::from_value::<Owner>(serde_json::Value::String(s.into())).is_err());
        }
    }

    match Scope::parse(s) {
        Ok(sc) => {
            assert_eq!(sc.as_str(), s);
            assert_eq!(Scope::parse_list(s).unwrap(), vec![sc]);
        }
        Err(e) => no_echo(s, &e, &[drop_ok(Scope::parse(""))]),
    }

    match Scope::parse_list(s) {
        Ok(list) => {
            assert!(list.windows(2).all(|w| w[0] < w[1]), "sorted and without duplicates");
            let joined = list.iter().map(Scope::as_str).collect::<Vec<_>>().join(" ");
            assert_eq!(Scope::parse_list(&joined).unwrap(), list, "the joined form re-parses to the same list");
            for sc in &list {
                assert!(s.split(' ').any(|p| p == sc.as_str()));
            }
        }
        Err(e) => no_echo(s, &e, &[drop_ok(Scope::parse_list("\""))]),
    }
});
