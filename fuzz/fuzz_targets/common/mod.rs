//! Shared by the targets: the "errors never echo input" check, and a poll-once executor
//! for async code that must not wait (nothing here touches the network).
#![allow(dead_code)]

use std::future::Future;
use std::task::{Context, Poll, Waker};

/// Strings shorter than this are not checked: they may well occur in a message by chance.
pub const ECHO_MIN: usize = 8;

/// Every object key and string value in `v`.
pub fn strings(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::String(s) => out.push(s.clone()),
        serde_json::Value::Array(a) => a.iter().for_each(|x| strings(x, out)),
        serde_json::Value::Object(o) => {
            for (k, x) in o {
                out.push(k.clone());
                strings(x, out);
            }
        }
        _ => {}
    }
}

/// Panics if `msg`, the error for `input`, echoes a string of the input: a key or a string
/// value of at least [`ECHO_MIN`] bytes that the message contains, *and* that the message
/// follows when the string is changed (`reparse` gives the message for a changed input).
/// A string that is also latchkey's own text (a field name, a phrase of the message) stays
/// put when the input changes, so it is not taken for an echo. `allowed` names strings that
/// may be echoed on purpose.
pub fn assert_no_echo(
    msg: &str,
    input: &serde_json::Value,
    reparse: impl Fn(&serde_json::Value) -> Option<String>,
    allowed: impl Fn(&str) -> bool,
) {
    let mut all = Vec::new();
    strings(input, &mut all);
    for s in all {
        if s.len() < ECHO_MIN || !msg.contains(&s) || allowed(&s) {
            continue;
        }
        let changed = rotate(&s);
        if changed == s {
            continue;
        }
        if let Some(again) = reparse(&replace(input, &s, &changed)) {
            assert!(!again.contains(&changed), "an error message echoes input {s:?}: {msg}");
        }
    }
}

/// `s` with every ASCII letter and digit moved one on (z to a), the rest kept.
fn rotate(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            'z' => 'a',
            'Z' => 'A',
            '9' => '0',
            c if c.is_ascii_alphanumeric() => (c as u8 + 1) as char,
            c => c,
        })
        .collect()
}

/// `v` with every key and string value equal to `from` replaced by `to`.
fn replace(v: &serde_json::Value, from: &str, to: &str) -> serde_json::Value {
    use serde_json::Value;
    match v {
        Value::String(s) if s == from => Value::String(to.to_owned()),
        Value::Array(a) => Value::Array(a.iter().map(|x| replace(x, from, to)).collect()),
        Value::Object(o) => {
            Value::Object(o.iter().map(|(k, x)| (if k == from { to.to_owned() } else { k.clone() }, replace(x, from, to))).collect())
        }
        other => other.clone(),
    }
}

/// Runs a future that must complete without waiting (inline keys, no I/O).
pub fn block_on<F: Future>(f: F) -> F::Output {
    let mut f = std::pin::pin!(f);
    match f.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(v) => v,
        Poll::Pending => panic!("the future waited: it must not need the network"),
    }
}

/// base64url without padding.
pub fn b64url(b: &[u8]) -> String {
    use base64ct::{Base64UrlUnpadded, Encoding};
    Base64UrlUnpadded::encode_string(b)
}
