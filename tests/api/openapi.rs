//! The OpenAPI document (`src/api/openapi.json`, served at `/openapi.json`) is exact, and
//! these tests keep it so:
//! - every route in `src/api` is documented, and every documented operation is routed;
//! - every operation documents the errors it can answer, with the shared error schema: 400 for
//!   a body or a validated path or query, 408, 413 (and 415 for JSON) for a body, 401 for a
//!   token, 500 and 503 where the database is asked; and every error code the server has is
//!   documented somewhere;
//! - request schemas accept exactly what the validators accept, on sample values on both sides
//!   of every pattern, length, range and rule (`ConnectionId::parse`, `Owner::parse`,
//!   `Scope::parse`, ..., and whole bodies through `NewConnection::from_json`,
//!   `CredentialInput::into_secret`, `Policy`, `NewAgent`, `NewIssuer`, and the HTTP routes for
//!   query strings);
//! - responses of real calls to every operation, successes and errors, validate against the
//!   document: status, content type, required headers and body.
//!
//! The checking is done by a small JSON Schema (2020-12 subset) and regular-expression
//! implementation below. It refuses keywords and regex syntax it does not know, so the
//! document cannot use one that goes unchecked.
//!
//! A known difference: some limits count UTF-8 bytes where JSON Schema counts characters (the
//! document's descriptions say "bytes" there).

use std::collections::{BTreeMap, BTreeSet};

use reqwest::Method;
use serde_json::{json, Value};

use crate::helpers::TestApp;
use latchkey::auth::subject::{valid_subject_prefix, NewIssuer};
use latchkey::model::{AgentId, ConnectionId, ConnectionKind, ConnectionPatch, CredentialInput, NewConnection, Owner, OwnerKind, Scope};
use latchkey::policy::Policy;
use latchkey::vault::NewAgent;

const DOC: &str = include_str!("../../src/api/openapi.json");

fn doc() -> Value {
    serde_json::from_str(DOC).expect("openapi.json is JSON")
}

/// A regular-expression subset (ECMA 262 syntax as JSON Schema uses it): literals, escapes
/// (`\xHH` and escaped punctuation), classes with ranges and negation, groups with
/// alternation, `?`, `*`, `+`, `{m}`, `{m,}`, `{m,n}`, `^` and `$`. Matching computes the set
/// of end positions, so it takes polynomial time whatever the pattern.
mod regex {
    use std::collections::BTreeSet;

    #[derive(Debug)]
    enum Node {
        Class(Vec<(char, char)>, bool),
        Group(Vec<Vec<Node>>),
        Repeat(Box<Node>, usize, Option<usize>),
        Start,
        End,
    }

    #[derive(Debug)]
    pub struct Regex(Vec<Vec<Node>>);

    type Set = BTreeSet<usize>;

    impl Regex {
        pub fn new(pattern: &str) -> Regex {
            let p: Vec<char> = pattern.chars().collect();
            let mut i = 0;
            let alts = alternatives(&p, &mut i);
            assert_eq!(i, p.len(), "unbalanced ')' in {pattern}");
            Regex(alts)
        }

        /// JSON Schema semantics: the pattern matches somewhere in `s` (ours are anchored).
        pub fn is_match(&self, s: &str) -> bool {
            let s: Vec<char> = s.chars().collect();
            (0..=s.len()).any(|start| !alts_ends(&self.0, &s, &Set::from([start])).is_empty())
        }
    }

    fn alternatives(p: &[char], i: &mut usize) -> Vec<Vec<Node>> {
        let mut alts = vec![vec![]];
        while *i < p.len() {
            match p[*i] {
                '|' => {
                    *i += 1;
                    alts.push(vec![]);
                }
                ')' => break,
                _ => {
                    let a = atom(p, i);
                    let q = quantified(p, i, a);
                    alts.last_mut().expect("an alternative").push(q);
                }
            }
        }
        alts
    }

    fn atom(p: &[char], i: &mut usize) -> Node {
        let c = p[*i];
        *i += 1;
        match c {
            '^' => Node::Start,
            '$' => Node::End,
            '(' => {
                assert!(p.get(*i) != Some(&'?'), "unsupported group syntax");
                let alts = alternatives(p, i);
                assert_eq!(p.get(*i), Some(&')'), "unclosed group");
                *i += 1;
                Node::Group(alts)
            }
            '[' => class(p, i),
            '\\' => {
                let c = escape(p, i);
                Node::Class(vec![(c, c)], false)
            }
            '.' | '*' | '+' | '?' | '{' | '}' | ']' => panic!("unsupported or unescaped '{c}' in a pattern"),
            c => Node::Class(vec![(c, c)], false),
        }
    }

    fn escape(p: &[char], i: &mut usize) -> char {
        let c = p[*i];
        *i += 1;
        match c {
            'x' => {
                let hex: String = p[*i..*i + 2].iter().collect();
                *i += 2;
                char::from_u32(u32::from_str_radix(&hex, 16).expect("\\xHH")).expect("a char")
            }
            'n' => '\n',
            't' => '\t',
            'r' => '\r',
            c if c.is_ascii_alphanumeric() => panic!("unsupported escape \\{c}"),
            c => c,
        }
    }

    fn class(p: &[char], i: &mut usize) -> Node {
        let negated = p[*i] == '^';
        if negated {
            *i += 1;
        }
        let mut ranges = vec![];
        loop {
            let c = p[*i];
            *i += 1;
            if c == ']' {
                break;
            }
            let lo = if c == '\\' { escape(p, i) } else { c };
            if p[*i] == '-' && p[*i + 1] != ']' {
                *i += 1;
                let c2 = p[*i];
                *i += 1;
                let hi = if c2 == '\\' { escape(p, i) } else { c2 };
                assert!(lo <= hi, "bad range in a class");
                ranges.push((lo, hi));
            } else {
                ranges.push((lo, lo));
            }
        }
        Node::Class(ranges, negated)
    }

    fn quantified(p: &[char], i: &mut usize, a: Node) -> Node {
        let (min, max) = match p.get(*i) {
            Some('*') => (0, None),
            Some('+') => (1, None),
            Some('?') => (0, Some(1)),
            Some('{') => {
                let end = p[*i..].iter().position(|c| *c == '}').expect("closed {") + *i;
                let body: String = p[*i + 1..end].iter().collect();
                *i = end;
                match body.split_once(',') {
                    None => {
                        let n = body.parse().expect("{n}");
                        (n, Some(n))
                    }
                    Some((m, "")) => (m.parse().expect("{m,}"), None),
                    Some((m, n)) => (m.parse().expect("{m,n}"), Some(n.parse().expect("{m,n}"))),
                }
            }
            _ => return a,
        };
        *i += 1;
        assert!(!matches!(p.get(*i), Some('?' | '+')), "lazy and possessive quantifiers are not supported");
        Node::Repeat(Box::new(a), min, max)
    }

    fn alts_ends(alts: &[Vec<Node>], s: &[char], from: &Set) -> Set {
        let mut out = Set::new();
        for seq in alts {
            let mut cur = from.clone();
            for n in seq {
                cur = ends(n, s, &cur);
                if cur.is_empty() {
                    break;
                }
            }
            out.extend(cur);
        }
        out
    }

    fn ends(n: &Node, s: &[char], from: &Set) -> Set {
        match n {
            Node::Class(ranges, negated) => from
                .iter()
                .filter(|&&i| i < s.len() && ranges.iter().any(|(lo, hi)| (*lo..=*hi).contains(&s[i])) != *negated)
                .map(|i| i + 1)
                .collect(),
            Node::Start => from.iter().filter(|&&i| i == 0).copied().collect(),
            Node::End => from.iter().filter(|&&i| i == s.len()).copied().collect(),
            Node::Group(alts) => alts_ends(alts, s, from),
            Node::Repeat(inner, min, max) => {
                let mut cur = from.clone();
                let mut out = if *min == 0 { from.clone() } else { Set::new() };
                for k in 1..=*min {
                    cur = ends(inner, s, &cur);
                    if k == *min {
                        out.extend(cur.iter().copied());
                    }
                }
                match max {
                    Some(max) => {
                        for _ in *min..*max {
                            cur = ends(inner, s, &cur);
                            if cur.is_empty() {
                                break;
                            }
                            out.extend(cur.iter().copied());
                        }
                    }
                    None => loop {
                        let next: Set = ends(inner, s, &cur).difference(&out).copied().collect();
                        if next.is_empty() {
                            break;
                        }
                        out.extend(next.iter().copied());
                        cur = next;
                    },
                }
                out
            }
        }
    }

    #[test]
    fn the_matcher_matches() {
        let r = Regex::new(r"^[a-z0-9][a-z0-9._-]{0,2}$");
        assert!(r.is_match("a") && !r.is_match("a.-_") && r.is_match("a.-") && !r.is_match("") && !r.is_match("-a"));
        let r = Regex::new(r"^ *([a\x21]{1,2} +)*([a]{1,2})?$");
        for ok in ["", " ", "a", "aa a", "!a a ", "a  aa"] {
            assert!(r.is_match(ok), "{ok:?}");
        }
        for bad in ["aaa", "b", "a b"] {
            assert!(!r.is_match(bad), "{bad:?}");
        }
        assert!(Regex::new(r"^[^\x00-\x1f]*$").is_match("é") && !Regex::new(r"^[^\x00-\x1f]*$").is_match("a\nb"));
        assert!(Regex::new(r"^(user|tenant):x$").is_match("tenant:x") && !Regex::new(r"^(user|tenant):x$").is_match("users:x"));
        assert!(Regex::new(r"b").is_match("abc"), "unanchored patterns match anywhere");
    }
}

/// A JSON Schema 2020-12 subset over the document (local `$ref`s). Unknown keywords panic.
struct Schemas {
    doc: Value,
    patterns: std::sync::Mutex<BTreeMap<String, std::sync::Arc<regex::Regex>>>,
}

const ANNOTATIONS: [&str; 8] = ["description", "title", "default", "example", "examples", "writeOnly", "readOnly", "format"];

impl Schemas {
    fn new() -> Schemas {
        Schemas { doc: doc(), patterns: Default::default() }
    }

    fn resolve<'a>(&'a self, v: &'a Value) -> &'a Value {
        match v.get("$ref").and_then(Value::as_str) {
            Some(r) => {
                self.resolve(self.doc.pointer(r.strip_prefix('#').expect("a local $ref")).unwrap_or_else(|| panic!("dangling $ref {r}")))
            }
            None => v,
        }
    }

    fn named(&self, name: &str) -> &Value {
        &self.doc["components"]["schemas"][name]
    }

    fn regex(&self, p: &str) -> std::sync::Arc<regex::Regex> {
        let mut m = self.patterns.lock().unwrap();
        m.entry(p.to_owned()).or_insert_with(|| std::sync::Arc::new(regex::Regex::new(p))).clone()
    }

    fn valid(&self, schema: &Value, v: &Value) -> bool {
        self.check(schema, v, "").is_ok()
    }

    fn check(&self, schema: &Value, v: &Value, at: &str) -> Result<(), String> {
        let fail = |why: String| Err(format!("{at}: {why}"));
        let s = match schema {
            Value::Bool(true) => return Ok(()),
            Value::Bool(false) => return fail("nothing is allowed here".into()),
            Value::Object(s) => s,
            other => panic!("not a schema: {other}"),
        };
        for (k, kw) in s {
            match k.as_str() {
                "$ref" => self.check(self.resolve(schema), v, at)?,
                "allOf" => {
                    for sub in kw.as_array().unwrap() {
                        self.check(sub, v, at)?;
                    }
                }
                "anyOf" => {
                    let errors: Vec<String> = kw.as_array().unwrap().iter().filter_map(|sub| self.check(sub, v, at).err()).collect();
                    if errors.len() == kw.as_array().unwrap().len() {
                        return fail(format!("no anyOf branch matches: {errors:?}"));
                    }
                }
                "oneOf" => {
                    let errors: Vec<String> = kw.as_array().unwrap().iter().filter_map(|sub| self.check(sub, v, at).err()).collect();
                    let matching = kw.as_array().unwrap().len() - errors.len();
                    if matching != 1 {
                        return fail(format!("{matching} oneOf branches match: {errors:?}"));
                    }
                }
                "not" => {
                    if self.valid(kw, v) {
                        return fail(format!("matches `not` {kw}"));
                    }
                }
                "if" => {
                    let branch = if self.valid(kw, v) { s.get("then") } else { s.get("else") };
                    if let Some(b) = branch {
                        self.check(b, v, at)?;
                    }
                }
                "then" | "else" => {}
                "type" => {
                    let types: Vec<&str> = match kw {
                        Value::String(t) => vec![t.as_str()],
                        Value::Array(ts) => ts.iter().map(|t| t.as_str().unwrap()).collect(),
                        _ => panic!("type"),
                    };
                    let ok = types.iter().any(|t| match *t {
                        "null" => v.is_null(),
                        "boolean" => v.is_boolean(),
                        "object" => v.is_object(),
                        "array" => v.is_array(),
                        "string" => v.is_string(),
                        "number" => v.is_number(),
                        "integer" => v.is_i64() || v.is_u64() || v.as_f64().is_some_and(|f| f.fract() == 0.0),
                        other => panic!("unknown type {other}"),
                    });
                    if !ok {
                        return fail(format!("not of type {kw}: {v}"));
                    }
                }
                "const" => {
                    if kw != v {
                        return fail(format!("{v} is not {kw}"));
                    }
                }
                "enum" => {
                    if !kw.as_array().unwrap().contains(v) {
                        return fail(format!("{v} is not one of {kw}"));
                    }
                }
                "properties" | "required" | "additionalProperties" | "propertyNames" | "minProperties" | "dependentRequired" => {
                    let Some(o) = v.as_object() else { continue };
                    match k.as_str() {
                        "properties" => {
                            for (name, sub) in kw.as_object().unwrap() {
                                if let Some(m) = o.get(name) {
                                    self.check(sub, m, &format!("{at}/{name}"))?;
                                }
                            }
                        }
                        "required" => {
                            for r in kw.as_array().unwrap() {
                                if !o.contains_key(r.as_str().unwrap()) {
                                    return fail(format!("missing {r}"));
                                }
                            }
                        }
                        "additionalProperties" => {
                            let known = s.get("properties").and_then(Value::as_object);
                            for (name, m) in o {
                                if !known.is_some_and(|p| p.contains_key(name)) {
                                    self.check(kw, m, &format!("{at}/{name}"))?;
                                }
                            }
                        }
                        "propertyNames" => {
                            for name in o.keys() {
                                self.check(kw, &json!(name), &format!("{at}/{name} (name)"))?;
                            }
                        }
                        "minProperties" => {
                            if (o.len() as u64) < kw.as_u64().unwrap() {
                                return fail(format!("fewer than {kw} members"));
                            }
                        }
                        _ => {
                            for (name, needs) in kw.as_object().unwrap() {
                                if o.contains_key(name) && needs.as_array().unwrap().iter().any(|n| !o.contains_key(n.as_str().unwrap())) {
                                    return fail(format!("{name} needs {needs}"));
                                }
                            }
                        }
                    }
                }
                "items" | "minItems" | "maxItems" | "uniqueItems" => {
                    let Some(a) = v.as_array() else { continue };
                    match k.as_str() {
                        "items" => {
                            for (i, item) in a.iter().enumerate() {
                                self.check(kw, item, &format!("{at}/{i}"))?;
                            }
                        }
                        "minItems" if (a.len() as u64) < kw.as_u64().unwrap() => return fail(format!("fewer than {kw} items")),
                        "maxItems" if (a.len() as u64) > kw.as_u64().unwrap() => return fail(format!("more than {kw} items")),
                        "uniqueItems" if kw == true && a.iter().enumerate().any(|(i, x)| a[..i].contains(x)) => {
                            return fail("items repeat".to_owned())
                        }
                        _ => {}
                    }
                }
                "minLength" | "maxLength" | "pattern" => {
                    let Some(text) = v.as_str() else { continue };
                    let n = text.chars().count() as u64;
                    match k.as_str() {
                        "minLength" if n < kw.as_u64().unwrap() => return fail(format!("shorter than {kw}")),
                        "maxLength" if n > kw.as_u64().unwrap() => return fail(format!("longer than {kw}")),
                        "pattern" if !self.regex(kw.as_str().unwrap()).is_match(text) => {
                            return fail(format!("{text:?} does not match {kw}"))
                        }
                        _ => {}
                    }
                }
                "minimum" | "maximum" => {
                    if !v.is_number() {
                        continue;
                    }
                    let order = compare(v, kw);
                    if (k == "minimum" && order.is_lt()) || (k == "maximum" && order.is_gt()) {
                        return fail(format!("{v} is out of range ({k} {kw})"));
                    }
                }
                k if ANNOTATIONS.contains(&k) => {}
                other => panic!("the checker does not know the keyword `{other}` (at {at}); teach it before using it"),
            }
        }
        Ok(())
    }
}

/// Numbers compared exactly across the i64 and u64 range (as floats otherwise).
fn compare(a: &Value, b: &Value) -> std::cmp::Ordering {
    let int = |v: &Value| v.as_i64().map(i128::from).or(v.as_u64().map(i128::from));
    match (int(a), int(b)) {
        (Some(x), Some(y)) => x.cmp(&y),
        _ => a.as_f64().unwrap().partial_cmp(&b.as_f64().unwrap()).unwrap(),
    }
}

// ---------------------------------------------------------------------------------------
// Operations, routes and documented errors.
// ---------------------------------------------------------------------------------------

const METHODS: [&str; 5] = ["get", "post", "put", "patch", "delete"];

fn operations(doc: &Value) -> Vec<(String, String, &Value)> {
    let mut out = vec![];
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            if method == "parameters" {
                continue; // shared by the path's operations
            }
            assert!(METHODS.contains(&method.as_str()), "{method} {path}: unexpected member");
            out.push((method.to_uppercase(), path.clone(), op));
        }
    }
    out
}

/// `(METHOD, path)` of every route, read from the route tables in `src/api`.
fn routes_in_source() -> BTreeSet<(String, String)> {
    let sources = [
        ("", include_str!("../../src/api/ops.rs")),
        ("", include_str!("../../src/api/agent.rs")),
        ("", include_str!("../../src/api/connect.rs")),
        ("/v1/admin", include_str!("../../src/api/admin.rs")),
    ];
    let module = include_str!("../../src/api/mod.rs");
    assert!(
        module.contains("web::scope(\"/v1/admin\")") && module.contains(".configure(admin::routes)") && !module.contains("web::resource("),
        "the admin routes are no longer mounted as this test assumes; update it"
    );
    let mut routes = BTreeSet::new();
    // Proxy mode takes any method (`.to(proxy)`); the document lists the five with bodies or
    // effects (HEAD and OPTIONS are forwarded the same way).
    let proxy = include_str!("../../src/api/proxy.rs");
    assert!(proxy.contains("web::resource(\"/v1/proxy/{connection}/{path:.*}\").to(proxy)"), "the proxy route changed; update this test");
    for m in ["GET", "POST", "PUT", "PATCH", "DELETE"] {
        routes.insert((m.to_owned(), "/v1/proxy/{connection}/{path}".to_owned()));
    }
    for (prefix, text) in sources {
        for chunk in text.split("web::resource(\"").skip(1) {
            let (path, rest) = chunk.split_once('"').unwrap();
            // The route table ends with its function.
            let rest = rest.split("\n}").next().unwrap();
            let mut methods = 0;
            for m in METHODS {
                let n = rest.matches(&format!("web::{m}()")).count();
                assert!(n <= 1, "{path}: {m} routed twice");
                if n == 1 {
                    routes.insert((m.to_uppercase(), format!("{prefix}{path}")));
                    methods += 1;
                }
            }
            assert!(methods > 0, "{path}: no method found");
        }
    }
    routes
}

#[test]
fn every_route_is_documented_and_every_documented_operation_routed() {
    let doc = doc();
    let documented: BTreeSet<(String, String)> = operations(&doc).into_iter().map(|(m, p, _)| (m, p)).collect();
    let routed = routes_in_source();
    assert_eq!(routed.len(), 40, "{routed:?}");
    let undocumented: Vec<_> = routed.difference(&documented).collect();
    let unrouted: Vec<_> = documented.difference(&routed).collect();
    assert!(
        undocumented.is_empty() && unrouted.is_empty(),
        "routed but not documented: {undocumented:?}; documented but not routed: {unrouted:?}"
    );
    let ids: BTreeSet<&str> = operations(&doc).iter().map(|(_, _, op)| op["operationId"].as_str().expect("operationId")).collect();
    assert_eq!(ids.len(), documented.len(), "operationIds are unique");
}

/// The `error` codes a documented error response allows, or `None` if its schema is not the
/// shared error schema (narrowed to codes), `ScopeError` or `MinTtlError`.
fn error_codes(schema: &Value) -> Option<Vec<String>> {
    if let Some(r) = schema.get("$ref").and_then(Value::as_str) {
        return match r {
            "#/components/schemas/ScopeError" => Some(vec!["insufficient_scope".into()]),
            "#/components/schemas/MinTtlError" => Some(vec!["min_ttl_unsatisfiable".into()]),
            "#/components/schemas/BodyTooLargeError" => Some(vec!["payload_too_large".into()]),
            "#/components/schemas/NotReadyError" => Some(vec!["not_ready".into()]),
            _ => None,
        };
    }
    if let Some(alts) = schema.get("oneOf").and_then(Value::as_array) {
        let mut out = vec![];
        for a in alts {
            out.extend(error_codes(a)?);
        }
        return Some(out);
    }
    let all = schema.get("allOf")?.as_array()?;
    if all.len() != 2 || all[0] != json!({"$ref": "#/components/schemas/Error"}) || schema.as_object()?.len() != 1 {
        return None;
    }
    let code = &all[1]["properties"]["error"];
    if all[1].as_object()?.len() != 1 || all[1]["properties"].as_object()?.len() != 1 {
        return None;
    }
    match (code.get("const"), code.get("enum")) {
        (Some(c), None) => Some(vec![c.as_str()?.to_owned()]),
        (None, Some(e)) => e.as_array()?.iter().map(|c| c.as_str().map(str::to_owned)).collect(),
        _ => None,
    }
}

#[test]
fn every_operation_documents_the_errors_it_can_answer() {
    let s = Schemas::new();
    let mut documented_codes: BTreeSet<(u16, String)> = BTreeSet::new();
    for (method, path, op) in operations(&s.doc) {
        let name = format!("{method} {path}");
        let responses = op["responses"].as_object().unwrap();
        let has = |status: &str| responses.contains_key(status);
        let html = responses.values().any(|r| s.resolve(r)["content"].get("text/html").is_some());
        let params = op["parameters"].as_array().cloned().unwrap_or_default();
        let validated = params.iter().any(|p| p["in"] == "query" || s.resolve(&p["schema"]).get("pattern").is_some());
        if let Some(body) = op.get("requestBody") {
            let json_body = body["content"].get("application/json").is_some();
            for status in ["400", "408", "413"] {
                assert!(has(status), "{name} takes a body but does not document {status}");
            }
            assert_eq!(has("415"), json_body, "{name}: 415 exactly when the body is JSON");
        }
        if validated && !html {
            assert!(has("400"), "{name} validates its path or query but does not document 400");
        }
        if html && params.iter().any(|p| p["in"] == "path") {
            assert!(has("404"), "{name}: an invalid link is a 404 page");
        }
        let security = op["security"].as_array().expect("every operation states its security");
        let needs_token = !security.is_empty() && security.iter().all(|alt| !alt.as_object().unwrap().is_empty());
        if needs_token {
            let r = s.resolve(&responses["401"]);
            assert!(r["headers"].get("WWW-Authenticate").is_some(), "{name}: 401 without WWW-Authenticate");
        }
        if path.starts_with("/v1/admin") || path == "/v1/connect/sessions" || path == "/v1/connections/{id}/token" {
            assert!(has("500") && has("503"), "{name} asks the database: document 500 and 503");
        }
        for (status, r) in responses {
            let r = s.resolve(r);
            let code: u16 = status.parse().unwrap_or_else(|_| panic!("{name}: status {status}"));
            assert!(r["headers"].get("X-Request-Id").is_some(), "{name} {status}: every response carries X-Request-Id");
            if code >= 400 {
                if let Some(schema) = r["content"].get("application/json").map(|c| &c["schema"]) {
                    let codes = error_codes(schema).unwrap_or_else(|| panic!("{name} {status}: not the shared error schema: {schema}"));
                    documented_codes.extend(codes.into_iter().map(|c| (code, c)));
                } else {
                    assert!(r["content"].get("text/html").is_some(), "{name} {status}: an error with no body");
                }
            }
        }
    }
    // Every error code the server can answer with is documented somewhere, with its status.
    let statuses = [
        ("BAD_REQUEST", 400),
        ("UNAUTHORIZED", 401),
        ("FORBIDDEN", 403),
        ("NOT_FOUND", 404),
        ("REQUEST_TIMEOUT", 408),
        ("METHOD_NOT_ALLOWED", 405),
        ("CONFLICT", 409),
        ("PAYLOAD_TOO_LARGE", 413),
        ("UNSUPPORTED_MEDIA_TYPE", 415),
        ("TOO_MANY_REQUESTS", 429),
        ("INTERNAL_SERVER_ERROR", 500),
        ("SERVICE_UNAVAILABLE", 503),
        ("BAD_GATEWAY", 502),
        ("GATEWAY_TIMEOUT", 504),
    ];
    let mut in_source = BTreeSet::new();
    for text in [include_str!("../../src/api/error.rs"), include_str!("../../src/api/ops.rs"), include_str!("../../src/api/proxy.rs")] {
        let text: String = text.split_whitespace().collect();
        for chunk in text.split("new(StatusCode::").skip(1).chain(text.split("new(actix_web::http::StatusCode::").skip(1)) {
            let (name, rest) = chunk.split_once(',').unwrap();
            let code = rest.strip_prefix('"').and_then(|r| r.split_once('"')).map(|(c, _)| c);
            let (Some(code), Some((_, status))) = (code, statuses.iter().find(|(n, _)| *n == name)) else {
                assert!(code.is_none(), "unknown status {name}");
                continue;
            };
            in_source.insert((*status, code.to_owned()));
        }
    }
    assert!(in_source.len() >= 20, "{in_source:?}");
    let missing: Vec<_> = in_source.difference(&documented_codes).collect();
    assert!(missing.is_empty(), "error codes the server answers with but no operation documents: {missing:?}");
}

// ---------------------------------------------------------------------------------------
// Request schemas agree with the validators.
// ---------------------------------------------------------------------------------------

fn strings(samples: &[&str]) -> Vec<String> {
    samples.iter().map(|s| s.to_string()).collect()
}

/// Asserts that schema `name` accepts exactly the samples `validator` accepts.
fn agree(s: &Schemas, name: &str, samples: Vec<String>, validator: impl Fn(&str) -> bool) {
    let schema = s.named(name);
    assert!(schema.is_object(), "no schema {name}");
    for sample in samples {
        let (doc, code) = (s.valid(schema, &json!(sample)), validator(&sample));
        assert_eq!(doc, code, "{name}: the document {} {sample:?}, the validator {}", verdict(doc), verdict(code));
    }
}

fn verdict(ok: bool) -> &'static str {
    if ok {
        "accepts"
    } else {
        "refuses"
    }
}

fn printable_ascii() -> String {
    (0x21u8..=0x7e).map(char::from).collect()
}

#[test]
fn identifier_patterns_agree_with_the_validators() {
    let s = Schemas::new();
    let long = |c: &str, n: usize| c.repeat(n);
    let ids = [
        strings(&[
            "a",
            "0",
            "crm",
            "google-calendar",
            "crm.v2",
            "0_x",
            "a-",
            "a.",
            "a_",
            "",
            "A",
            "-a",
            ".a",
            "_a",
            "a/b",
            "a b",
            "é",
            "a\n",
            "a:b",
        ]),
        vec![long("a", 63), long("a", 64), format!("9{}", long("-", 62)), long("a", 5000)],
    ]
    .concat();
    agree(&s, "ConnectionId", ids.clone(), |v| ConnectionId::parse(v).is_ok());
    agree(&s, "AgentId", ids, |v| AgentId::parse(v).is_ok());

    let mut owner_ids: Vec<String> =
        strings(&["alice", "auth0|abc123", "a@b.example", "okta:00u1abc", "", "a b", "a/b", "a?b", "a#b", "a%2F", "\u{7f}", "é", "a\tb"]);
    owner_ids.extend([long("x", 300), long("x", 301), printable_ascii().replace(['/', '?', '#', '%'], ""), printable_ascii()]);
    owner_ids.extend((0x20u8..=0x7f).map(|c| format!("a{}", char::from(c))));
    agree(&s, "OwnerId", owner_ids.clone(), |v| Owner::new(OwnerKind::User, v).is_ok());
    let mut owners: Vec<String> = owner_ids.iter().flat_map(|id| [format!("user:{id}"), format!("tenant:{id}")]).collect();
    owners.extend(strings(&["alice", "group:x", "User:a", "user", "tenant", ":a", "users:a", "user:", "user::"]));
    agree(&s, "Owner", owners, |v| Owner::parse(v).is_ok());

    let mut scopes =
        strings(&["a", "crm:read", "https://www.googleapis.com/auth/calendar.readonly", "", "a b", "a\"b", "a\\b", "é", "\u{7f}", "a\t"]);
    scopes.extend([long("x", 256), long("x", 257), printable_ascii().replace(['"', '\\'], "")]);
    scopes.extend((0x20u8..=0x7f).map(|c| format!("a{}", char::from(c))));
    agree(&s, "Scope", scopes, |v| Scope::parse(v).is_ok());
    let mut lists = strings(&["", " ", "   ", "a", "a b", "  a  b  ", "b a a", "a\"", "a\tb", "a\nb", "é", "a \\"]);
    lists.extend([long("x", 256), long("x", 257), format!("{} {}", long("x", 256), long("y", 256)), format!("a {}", long("y", 257))]);
    agree(&s, "ScopeList", lists, |v| Scope::parse_list(v).is_ok());

    let mut prefixes = strings(&["acme", "a", "0", "a-b", "a-", "", "A", "-a", "a_b", "a.b", "a:b", "é"]);
    prefixes.extend([long("a", 32), long("a", 33)]);
    agree(&s, "SubjectPrefix", prefixes, valid_subject_prefix);

    let providers: Vec<&str> = latchkey::model::providers::CATALOG.iter().map(|p| p.name).collect();
    let documented: Vec<&str> = s.named("ProviderName")["enum"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    assert_eq!(documented, providers, "ProviderName lists the catalog, in its order");
}

/// `base` with the member at JSON pointer `at` set to `value` (or removed, for `None`).
fn with(base: &Value, at: &str, value: Option<Value>) -> Value {
    let mut v = base.clone();
    let (parent, key) = at.rsplit_once('/').unwrap();
    let parent = v.pointer_mut(parent).unwrap_or_else(|| panic!("no {parent}")).as_object_mut().unwrap();
    match value {
        Some(x) => parent.insert(key.to_owned(), x),
        None => parent.remove(key),
    };
    v
}

/// Asserts that schema `name` and `validator` agree on each body.
fn agree_on_bodies(s: &Schemas, name: &str, bodies: Vec<Value>, validator: impl Fn(&Value) -> Result<(), String>) {
    let schema = s.named(name);
    for body in bodies {
        let doc = s.check(schema, &body, "");
        let code = validator(&body);
        assert_eq!(doc.is_ok(), code.is_ok(), "{name}: the document says {doc:?}, the validator {code:?}, for {body}");
    }
}

/// Sets each `(pointer, value)` on `base`; `None` removes the member.
fn mutations(base: &Value, cases: &[(&str, Vec<Option<Value>>)]) -> Vec<Value> {
    let mut out = vec![base.clone()];
    for (at, values) in cases {
        for v in values {
            out.push(with(base, at, v.clone()));
        }
    }
    out
}

fn proxy_samples() -> Vec<Option<Value>> {
    let b = "https://api.example.com/v1";
    [
        json!({"base_url": b}),
        json!({"base_url": "{instance_url}/services/data"}),
        json!({"base_url": "{instance_url}"}),
        json!({"base_url": "{instance_url}x"}),
        json!({"base_url": "https://api.example.com/?q=1"}),
        json!({"base_url": "https://api.example.com/#f"}),
        json!({"base_url": "http://api.example.com"}),
        json!({"base_url": "http://127.0.0.1:8080/api"}),
        json!({"base_url": b, "timeout": 0}),
        json!({"base_url": b, "timeout": 300}),
        json!({"base_url": b, "timeout": 301}),
        json!({"base_url": b, "max_body": 0}),
        json!({"base_url": b, "max_body": 1_073_741_824u64}),
        json!({"base_url": b, "max_body": 1_073_741_825u64}),
        json!({"base_url": b, "allowed_methods": ["GET", "POST"]}),
        json!({"base_url": b, "allowed_methods": []}),
        json!({"base_url": b, "allowed_methods": ["TRACE"]}),
        json!({"base_url": b, "allowed_paths": ["/calendars/*/events", "/users/**"]}),
        json!({"base_url": b, "allowed_paths": ["calendars"]}),
        json!({"base_url": b, "allowed_paths": ["/a?b"]}),
        json!({"base_url": b, "allowed_paths": []}),
        json!({"base_url": b, "allow_private": true, "pass_cookies": true}),
        json!({"base_url": b, "pass_cookies": "yes"}),
        json!({"base_url": b, "colour": 1}),
        json!({}),
        Value::Null,
    ]
    .into_iter()
    .map(Some)
    .collect()
}

fn url_samples() -> Vec<Option<Value>> {
    [
        "https://crm.example/oauth/token",
        "https://a",
        "https://a.example:8443/x?y=1#z",
        "https://127.0.0.1/x",
        "https://a.example:65535/",
        "http://localhost/x",
        "http://localhost:8080/x",
        "http://127.0.0.1:9/token",
        "http://[::1]:9/t",
        "http://crm.example/token",
        "http://10.0.0.1/x",
        "ftp://crm.example/x",
        "crm.example/token",
        "",
        "https://",
        "https://a b/",
        "https://a.example:65536/",
    ]
    .iter()
    .map(|u| Some(json!(u)))
    .chain([Some(Value::Null), Some(json!(5))])
    .collect()
}

fn text_samples(max: usize) -> Vec<Option<Value>> {
    let x = |n: usize| "x".repeat(n);
    [
        json!(""),
        json!("a"),
        json!(x(max)),
        json!(x(max + 1)),
        json!("a\u{1}"),
        json!("a\u{7f}"),
        json!("a\u{85}"),
        json!("Zoë's app"),
        json!(7),
        Value::Null,
    ]
    .into_iter()
    .map(Some)
    .collect()
}

#[test]
fn connection_bodies_agree_with_the_validator() {
    let s = Schemas::new();
    let x = |n: usize| "x".repeat(n);
    let oauth = json!({"id": "crm", "kind": "oauth2", "oauth2": {
        "authorization_endpoint": "https://crm.example/authorize", "token_endpoint": "https://crm.example/token", "client_id": "abc"}});
    let discovery = with(&with(&oauth, "/oauth2/authorization_endpoint", None), "/oauth2/token_endpoint", None);
    let api_key = json!({"id": "reports", "kind": "api_key", "api_key": {"header": "X-API-Key"}});
    let validator = |b: &Value| NewConnection::from_json(b.clone()).map(|_| ()).map_err(|e| e.0);
    let mut bodies = mutations(
        &oauth,
        &[
            ("/id", vec![Some(json!("Crm")), Some(json!("")), Some(json!(x(63))), Some(json!(x(64))), None, Some(Value::Null)]),
            ("/kind", vec![Some(json!("api_key")), Some(json!("other")), None]),
            ("/display_name", text_samples(200)),
            ("/provider", vec![Some(json!("google")), Some(json!("nope")), Some(Value::Null)]),
            ("/api_key", vec![Some(Value::Null), Some(json!({"header": "X"}))]),
            ("/oauth2", vec![Some(Value::Null), Some(json!({}))]),
            ("/proxy", proxy_samples()),
            ("/colour", vec![Some(json!("red"))]),
            (
                "/oauth2/client_id",
                vec![
                    Some(json!("")),
                    Some(json!(x(512))),
                    Some(json!(x(513))),
                    Some(json!("a b")),
                    Some(json!("a\u{7f}")),
                    Some(json!("é")),
                    None,
                ],
            ),
            (
                "/oauth2/client_secret",
                vec![Some(json!("s")), Some(json!("")), Some(json!(x(4096))), Some(json!(x(4097))), Some(Value::Null), Some(json!(5))],
            ),
            ("/oauth2/authorization_endpoint", url_samples()),
            ("/oauth2/token_endpoint", url_samples()),
            ("/oauth2/revocation_endpoint", url_samples()),
            ("/oauth2/jwks_uri", url_samples()),
            ("/oauth2/issuer", url_samples()),
            (
                "/oauth2/return_to_allowlist",
                vec![Some(json!(["https://app.example/"])), Some(json!(["http://app.example/"])), Some(json!([])), Some(Value::Null)],
            ),
            (
                "/oauth2/scopes",
                vec![
                    Some(json!(["a", "crm:read"])),
                    Some(json!([])),
                    Some(json!(["a b"])),
                    Some(json!([""])),
                    Some(Value::Null),
                    Some(json!("a")),
                ],
            ),
            (
                "/oauth2/token_endpoint_auth_method",
                vec![
                    Some(json!("client_secret_post")),
                    Some(json!("client_secret_basic")),
                    Some(json!("private_key_jwt")),
                    Some(Value::Null),
                ],
            ),
            ("/oauth2/pkce", vec![Some(json!(false)), Some(Value::Null), Some(json!("yes"))]),
            ("/oauth2/owner_proof", vec![Some(json!(false)), Some(Value::Null)]),
            ("/oauth2/scope_enforcement", vec![Some(json!("label")), Some(json!("downscope")), Some(json!("loose")), Some(Value::Null)]),
            (
                "/oauth2/tenant",
                vec![
                    Some(json!("common")),
                    Some(json!("contoso.onmicrosoft.com")),
                    Some(json!("")),
                    Some(json!("a_b")),
                    Some(json!(x(64))),
                    Some(json!(x(65))),
                    Some(Value::Null),
                ],
            ),
            (
                "/oauth2/extra_authorize_params",
                vec![
                    Some(json!({"prompt": "consent", "access_type": ""})),
                    Some(json!({"state": "x"})),
                    Some(json!({"code_challenge_method": "plain"})),
                    Some(json!({"": "x"})),
                    Some(json!({x(128): "v"})),
                    Some(json!({x(129): "v"})),
                    Some(json!({"k": x(1024)})),
                    Some(json!({"k": x(1025)})),
                    Some(json!({"k": "a\u{0}"})),
                    Some(json!({"k\n": "a"})),
                    Some(json!({"k": null})),
                    Some(Value::Null),
                ],
            ),
            ("/oauth2/surprise", vec![Some(json!(1))]),
            (
                "/scope_roles",
                vec![
                    Some(json!({"crm:write": ["sales-admin"]})),
                    Some(json!({"crm:write": []})),
                    Some(json!({"a b": ["r"]})),
                    Some(json!({"s": ["a b"]})),
                    Some(json!({"s": [x(128)]})),
                    Some(json!({"s": [x(129)]})),
                    Some(json!({"s": [""]})),
                    Some(json!({})),
                    Some(Value::Null),
                ],
            ),
        ],
    );
    bodies.extend(mutations(
        &discovery,
        &[
            ("/oauth2/discovery_url", url_samples()),
            ("/provider", vec![Some(json!("microsoft")), Some(Value::Null)]),
            ("/oauth2/token_endpoint", vec![Some(json!("https://crm.example/token"))]),
        ],
    ));
    bodies.push(with(&with(&discovery, "/oauth2/discovery_url", None), "/provider", Some(json!("github"))));
    bodies.push(with(&discovery, "/oauth2/discovery_url", None));
    bodies.extend(mutations(
        &api_key,
        &[
            ("/oauth2", vec![Some(Value::Null), Some(json!({"client_id": "a"})), Some(json!({"client_id": "a", "client_secret": "s"}))]),
            ("/api_key", vec![Some(Value::Null), Some(json!({})), None]),
            ("/kind", vec![Some(json!("oauth2"))]),
            ("/provider", vec![Some(json!("github"))]),
            (
                "/api_key/header",
                vec![
                    Some(json!("Authorization")),
                    Some(json!("X Key")),
                    Some(json!("")),
                    Some(json!(x(128))),
                    Some(json!(x(129))),
                    Some(json!("é")),
                    Some(json!("X!#$%&'*+-.^_`|~9")),
                    Some(json!("X(Key)")),
                    Some(Value::Null),
                ],
            ),
            (
                "/api_key/query_param",
                vec![
                    Some(json!("api_key")),
                    Some(json!("a.b~c-d_e")),
                    Some(json!("")),
                    Some(json!("a b")),
                    Some(json!("a&b")),
                    Some(json!(x(128))),
                    Some(json!(x(129))),
                    Some(Value::Null),
                ],
            ),
            (
                "/api_key/format",
                vec![
                    Some(json!("{key}")),
                    Some(json!("Bearer {key}")),
                    Some(json!("no placeholder")),
                    Some(json!("{key}{key}")),
                    Some(json!("{{key}}")),
                    Some(json!("{ke{key}")),
                    Some(json!("{key}}")),
                    Some(json!("{key")),
                    Some(json!(format!("{}{{key}}", x(507)))),
                    Some(json!(format!("{}{{key}}", x(508)))),
                    Some(json!("{key}\u{7f}")),
                    Some(json!("é {key}")),
                    Some(json!("")),
                    Some(Value::Null),
                ],
            ),
            ("/api_key/prefix", vec![Some(json!("x"))]),
        ],
    ));
    agree_on_bodies(&s, "ConnectionInput", bodies, validator);
}

#[test]
fn connection_patches_agree_with_the_validator() {
    // A patch is checked at the edge, then the patched connection as a whole: the document
    // states the first exactly; the second depends on the stored connection.
    let s = Schemas::new();
    let stored = [
        NewConnection::from_json(json!({"id": "crm", "kind": "oauth2", "oauth2": {
            "authorization_endpoint": "https://crm.example/authorize", "token_endpoint": "https://crm.example/token", "client_id": "abc"}}))
        .unwrap()
        .spec,
        NewConnection::from_json(json!({"id": "k", "kind": "api_key", "api_key": {"header": "X-Key"}})).unwrap().spec,
    ];
    let x = |n: usize| "x".repeat(n);
    let patches = [
        json!({}),
        json!({"display_name": "CRM"}),
        json!({"display_name": null}),
        json!({"display_name": ""}),
        json!({"display_name": x(201)}),
        json!({"provider": null}),
        json!({"provider": "nope"}),
        json!({"id": "other"}),
        json!({"kind": "api_key"}),
        json!({"colour": "red"}),
        json!([1]),
        json!({"oauth2": {"client_secret": "s"}}),
        json!({"oauth2": {"client_secret": ""}}),
        json!({"oauth2": {"client_secret": null, "scopes": ["a"]}}),
        json!({"oauth2": {"scopes": null, "pkce": null, "owner_proof": null, "return_to_allowlist": null}}),
        json!({"oauth2": {"extra_authorize_params": {"prompt": "consent"}}}),
        json!({"oauth2": {"extra_authorize_params": {"prompt": null}}}),
        json!({"oauth2": {"extra_authorize_params": {"state": "x"}}}),
        json!({"oauth2": {"token_endpoint": "http://crm.example/token"}}),
        json!({"oauth2": {"client_id": null}}),
        json!({"oauth2": {"surprise": 1}}),
        json!({"oauth2": null}),
        json!({"api_key": {"format": "Bearer {key}"}}),
        json!({"api_key": {"format": null}}),
        json!({"api_key": {"format": "no placeholder"}}),
        json!({"api_key": {"header": null}}),
        json!({"scope_roles": {"crm:write": ["admin"]}}),
        json!({"scope_roles": {"crm:write": null}}),
        json!({"scope_roles": {"crm:write": []}}),
        json!({"scope_roles": null}),
    ];
    let schema = s.named("ConnectionPatch");
    for p in patches {
        let doc = s.valid(schema, &p);
        let edge = ConnectionPatch::from_json(p.clone());
        let results: Vec<bool> = stored.iter().map(|spec| edge.as_ref().is_ok_and(|patch| patch.apply(spec).is_ok())).collect();
        if doc {
            // Valid per the document: it passes the edge, and whether the whole stays valid
            // depends on the connection (an api_key member on an oauth2 connection).
            assert!(edge.is_ok(), "the document accepts {p}, the edge refuses it: {:?}", edge.err());
        } else {
            assert!(results.iter().all(|ok| !ok), "the document refuses {p}, yet it applies to {results:?}");
        }
    }
}

#[test]
fn credential_bodies_agree_with_the_validator() {
    // The document states the union of both kinds' bodies; which one a connection takes is
    // its kind's business (400 otherwise).
    let s = Schemas::new();
    let now = 1_000_000;
    let x = |n: usize| "x".repeat(n);
    let validator = |b: &Value| {
        let parse = || latchkey::model::from_value_strict::<CredentialInput>(b.clone()).map_err(|e| e.to_string());
        let api = parse().and_then(|c| c.into_secret(ConnectionKind::ApiKey, now).map(|_| ()).map_err(|e| e.0));
        let oauth = parse().and_then(|c| c.into_secret(ConnectionKind::Oauth2, now).map(|_| ()).map_err(|e| e.0));
        api.or(oauth)
    };
    let secret = |at: &str| -> (String, Vec<Option<Value>>) {
        (
            at.to_owned(),
            vec![Some(json!("s")), Some(json!("")), Some(json!(x(16384))), Some(json!(x(16385))), Some(Value::Null), Some(json!(1))],
        )
    };
    let api_key = json!({"api_key": "sk-live-1"});
    let oauth = json!({"access_token": "at", "refresh_token": "rt", "expires_in": 3600, "scope": "a b", "token_type": "Bearer"});
    let (k1, v1) = secret("/api_key");
    let (k2, v2) = secret("/access_token");
    let (k3, v3) = secret("/refresh_token");
    let mut bodies = mutations(
        &api_key,
        &[
            (k1.as_str(), v1),
            ("/access_token", vec![Some(json!("at")), Some(Value::Null)]),
            ("/scope", vec![Some(json!("a")), Some(Value::Null)]),
            ("/expires_in", vec![Some(json!(60)), Some(Value::Null)]),
            ("/apikey", vec![Some(json!("k"))]),
        ],
    );
    bodies.extend(mutations(
        &oauth,
        &[
            (k2.as_str(), v2),
            (k3.as_str(), v3),
            ("/access_token", vec![None]),
            ("/api_key", vec![Some(json!("k")), Some(Value::Null)]),
            (
                "/expires_in",
                vec![
                    Some(json!(1)),
                    Some(json!(0)),
                    Some(json!(315_360_000)),
                    Some(json!(315_360_001)),
                    Some(json!(-5)),
                    Some(json!("60")),
                    Some(Value::Null),
                    None,
                ],
            ),
            ("/scope", vec![Some(json!("")), Some(json!("  a  ")), Some(json!("a\"b")), Some(json!(x(257))), Some(Value::Null), None]),
            (
                "/token_type",
                vec![
                    Some(json!("bearer")),
                    Some(json!("DPoP")),
                    Some(json!("")),
                    Some(json!("a b")),
                    Some(json!(x(32))),
                    Some(json!(x(33))),
                    Some(Value::Null),
                ],
            ),
            (
                "/instance_url",
                vec![
                    Some(json!("https://acme.my.salesforce.com")),
                    Some(json!("http://localhost/x")),
                    Some(json!(format!("https://a.example/{}", x(492)))),
                    Some(json!(format!("https://a.example/{}", x(493)))),
                    Some(json!("not a url")),
                    Some(Value::Null),
                ],
            ),
            ("/colour", vec![Some(json!("red"))]),
        ],
    ));
    let no_expiry = with(&oauth, "/expires_in", None);
    // The last second of year 9999 is the latest `expires_at`.
    bodies.extend(mutations(
        &no_expiry,
        &[(
            "/expires_at",
            vec![
                Some(json!(now + 1)),
                Some(json!(253_402_300_799_i64)),
                Some(json!(253_402_300_800_i64)),
                Some(json!(i64::MAX)),
                Some(json!(now)),
                Some(json!("2030")),
                Some(Value::Null),
            ],
        )],
    ));
    bodies.push(with(&oauth, "/expires_at", Some(json!(now + 10))));
    bodies.push(with(&oauth, "/expires_at", Some(Value::Null)));
    bodies.push(json!({}));
    // Clock-dependent: an `expires_at` not after now is refused, which no schema can state.
    let past = with(&no_expiry, "/expires_at", Some(json!(now)));
    let bodies: Vec<Value> = bodies.into_iter().filter(|b| *b != past).collect();
    agree_on_bodies(&s, "CredentialInput", bodies, validator);
    assert!(validator(&past).is_err());
}

#[test]
fn agent_and_policy_bodies_agree_with_the_validators() {
    let s = Schemas::new();
    let x = |n: usize| "x".repeat(n);
    let grant = json!({"connection": "crm", "owners": "any"});
    let mut grants = mutations(
        &grant,
        &[
            ("/connection", vec![Some(json!("Crm")), Some(json!("")), None, Some(Value::Null)]),
            ("/owners", vec![Some(json!("self")), Some(json!("tenant")), Some(json!("everyone")), None]),
            ("/scopes", vec![Some(json!(["crm:read"])), Some(json!([])), Some(json!(["a b"])), Some(Value::Null)]),
            (
                "/max_ttl",
                vec![
                    Some(json!(1)),
                    Some(json!(86_400)),
                    Some(json!(0)),
                    Some(json!(86_401)),
                    Some(json!(-1)),
                    Some(json!("60")),
                    Some(Value::Null),
                ],
            ),
            ("/connect", vec![Some(json!(true)), Some(json!(false)), Some(Value::Null)]),
            ("/connect_role", vec![Some(json!("admin")), Some(Value::Null)]),
            (
                "/modes",
                vec![
                    Some(json!(["proxy"])),
                    Some(json!(["release", "proxy"])),
                    Some(json!([])),
                    Some(json!(["proxy", "proxy"])),
                    Some(json!(["stream"])),
                    Some(Value::Null),
                ],
            ),
            ("/colour", vec![Some(json!("red"))]),
        ],
    );
    let connecting = with(&grant, "/connect", Some(json!(true)));
    grants.extend(mutations(
        &connecting,
        &[(
            "/connect_role",
            vec![
                Some(json!("admin")),
                Some(json!("")),
                Some(json!(x(128))),
                Some(json!(x(129))),
                Some(json!("a b")),
                Some(json!("é")),
                Some(Value::Null),
            ],
        )],
    ));
    let mut policies: Vec<Value> = grants.iter().map(|g| json!({"grants": [g]})).collect();
    let many = |n: usize| json!({"grants": (0..n).map(|i| json!({"connection": format!("c{i}"), "owners": "self"})).collect::<Vec<_>>()});
    // A body is an object: an array is refused, although serde would read a struct from it.
    policies.extend([
        json!([]),
        json!([[{"connection": "crm", "owners": "any"}]]),
        json!({}),
        json!({"grants": []}),
        json!({"grants": null}),
        json!({"grants": [], "extra": 1}),
        json!("grants"),
        many(256),
        many(257),
    ]);
    agree_on_bodies(&s, "PolicyInput", policies.clone(), |b| Policy::parse_json(&b.to_string()).map(|_| ()).map_err(|e| e.0));
    // Two grants for one connection are refused, which JSON Schema cannot state.
    assert!(Policy::parse_json(&json!({"grants": [grant, grant]}).to_string()).is_err());

    let agent = json!({"id": "support-bot", "name": "Support bot", "policy": {"grants": [grant]}});
    let mut agents = mutations(
        &agent,
        &[
            ("/id", vec![Some(json!("Support")), Some(json!(x(63))), Some(json!(x(64))), None, Some(Value::Null)]),
            ("/name", text_samples(200)),
            ("/name", vec![None]),
            ("/policy", vec![None, Some(Value::Null), Some(json!({})), Some(json!({"grants": [{"connection": "crm"}]}))]),
            ("/secret", vec![Some(json!("s"))]),
        ],
    );
    agents.extend(policies.into_iter().map(|p| with(&agent, "/policy", Some(p))));
    agree_on_bodies(&s, "AgentInput", agents, |b| {
        latchkey::model::from_value_strict::<NewAgent>(b.clone()).map(|_| ()).map_err(|e| e.to_string())
    });
}

#[test]
fn issuer_bodies_agree_with_the_validator() {
    let s = Schemas::new();
    let x = |n: usize| "x".repeat(n);
    // Real key material (the fixtures' keys, RFC 8037's Ed25519 key): what a key must look like
    // beyond its members is the validator's business, and may grow stricter.
    let fixture: Value = serde_json::from_str(crate::helpers::issuer::ISSUER_JWKS).unwrap();
    let (rsa_n, ec_x, ec_y) = (fixture["keys"][0]["n"].clone(), fixture["keys"][1]["x"].clone(), fixture["keys"][1]["y"].clone());
    let ed_x = "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo";
    let okp = json!({"kty": "OKP", "crv": "Ed25519", "x": ed_x});
    let issuer = json!({"issuer": "https://idp.example.com", "subject_prefix": "acme", "audience": "latchkey", "jwks": {"keys": [okp]}});
    let keys = |k: Value| Some(json!({"keys": [k]}));
    let mut bodies = mutations(
        &issuer,
        &[
            ("/issuer", url_samples()),
            (
                "/issuer",
                vec![Some(json!(format!("https://a.example/{}", x(492)))), Some(json!(format!("https://a.example/{}", x(493)))), None],
            ),
            ("/subject_prefix", vec![Some(json!("a-b")), Some(json!("A")), Some(json!(x(32))), Some(json!(x(33))), None]),
            ("/display_name", text_samples(100)),
            ("/audience", vec![Some(json!("")), Some(json!(x(512))), Some(json!(x(513))), None, Some(Value::Null)]),
            ("/tenant_claim", vec![Some(json!("org")), Some(json!("")), Some(json!(x(128))), Some(json!(x(129))), Some(Value::Null)]),
            ("/roles_claim", vec![Some(json!("roles")), Some(json!("")), Some(json!(x(129))), Some(Value::Null)]),
            (
                "/owner_proof",
                vec![
                    Some(json!({"client_id": "latchkey"})),
                    Some(json!({"client_id": "latchkey", "client_secret": "s"})),
                    Some(json!({"client_id": "latchkey", "client_secret": ""})),
                    Some(json!({"client_id": "latchkey", "client_secret": x(4096)})),
                    Some(json!({"client_id": "latchkey", "client_secret": x(4097)})),
                    Some(json!({"client_id": "latchkey", "client_secret": null})),
                    Some(json!({"client_id": ""})),
                    Some(json!({"client_id": x(513)})),
                    Some(json!({"client_id": "a\u{7f}"})),
                    Some(json!({})),
                    Some(json!({"client_id": "a", "extra": 1})),
                    Some(Value::Null),
                ],
            ),
            ("/jwks_uri", vec![Some(json!("https://idp.example.com/jwks")), Some(Value::Null)]),
            (
                "/jwks",
                vec![
                    None,
                    Some(Value::Null),
                    Some(json!({"keys": []})),
                    Some(json!({})),
                    Some(json!({"keys": [okp], "extra": 1})),
                    keys(json!({"kty": "RSA", "n": rsa_n, "e": "AQAB", "alg": "RS256", "kid": "r1", "use": "sig"})),
                    keys(json!({"kty": "RSA", "n": rsa_n, "e": "AQAB", "alg": "RS512"})),
                    keys(json!({"kty": "RSA", "n": rsa_n, "e": "AQAB", "alg": null, "kid": null, "x5c": null, "key_ops": ["verify"]})),
                    keys(json!({"kty": "RSA", "n": rsa_n})),
                    keys(json!({"kty": "RSA", "n": 5, "e": "AQAB"})),
                    keys(json!({"kty": "EC", "crv": "P-256", "x": ec_x, "y": ec_y})),
                    keys(json!({"kty": "EC", "crv": "P-256", "x": ec_x, "y": ec_y, "alg": "ES256"})),
                    keys(json!({"kty": "EC", "crv": "P-384", "x": ec_x, "y": ec_y})),
                    keys(json!({"kty": "EC", "crv": "P-256", "x": ec_x})),
                    keys(json!({"kty": "OKP", "crv": "Ed25519", "x": ed_x, "alg": "EdDSA"})),
                    keys(json!({"kty": "OKP", "crv": "Ed25519", "x": ed_x, "alg": "ES256"})),
                    keys(json!({"kty": "OKP", "crv": "P-256", "x": ed_x})),
                    keys(json!({"kty": "oct", "k": "c2VjcmV0"})),
                    keys(json!({"kty": "OKP", "crv": "Ed25519", "x": ed_x, "kid": 5})),
                    keys(json!({"kty": "OKP", "crv": "Ed25519", "x": ed_x, "something": {"else": 1}})),
                ],
            ),
            ("/colour", vec![Some(json!("red"))]),
        ],
    );
    let by_uri = with(&with(&issuer, "/jwks", None), "/jwks_uri", Some(json!("https://idp.example.com/jwks")));
    bodies.extend(mutations(&by_uri, &[("/jwks_uri", url_samples()), ("/jwks", vec![Some(Value::Null), Some(json!({"keys": [okp]}))])]));
    agree_on_bodies(&s, "IssuerInput", bodies, |b| {
        latchkey::model::from_value_strict::<NewIssuer>(b.clone()).map(|_| ()).map_err(|e| e.to_string())
    });
}

#[tokio::test]
async fn query_strings_and_session_bodies_agree_with_the_routes() {
    // What no model type parses on its own: the release and admin query strings, and the
    // connect-session body. A 400 on a stateless route (or a 400 "invalid ..." from parsing)
    // is the validator's verdict.
    let s = Schemas::new();
    let app = TestApp::spawn().await;
    app.api_key_connection("k").await;
    let agent = app.service_agent_token("k").await;
    let op = |path: &str, method: &str| s.doc["paths"][path][method].clone();
    let param = |op: &Value, name: &str| -> Value {
        op["parameters"].as_array().unwrap().iter().find(|p| p["name"] == name).unwrap_or_else(|| panic!("no parameter {name}"))["schema"]
            .clone()
    };
    let enc = |v: &str| url::form_urlencoded::byte_serialize(v.as_bytes()).collect::<String>();
    let x = |n: usize| "x".repeat(n);

    // Audit: every 400 is about the query.
    let audit = op("/v1/admin/audit", "get");
    let cases: Vec<(&str, Vec<String>)> = vec![
        ("after", strings(&["0", "-5", "9223372036854775807", "9223372036854775808", "1.5", "x", ""])),
        ("limit", strings(&["1", "1000", "0", "1001", "-1", "x", ""])),
        ("connection", strings(&["crm", "Crm", "", &x(64)])),
        ("agent", strings(&["svc", "-svc", ""])),
        ("owner", strings(&["user:alice", "alice", "user:a b", ""])),
        ("decision", strings(&["allow", "deny", "failed", "ok", "denied", "maybe", ""])),
    ];
    for (name, values) in cases {
        for v in values {
            let r = app.get(&format!("/v1/admin/audit?{name}={}", enc(&v))).await;
            let schema = param(&audit, name);
            let doc = s.valid(&schema, &query_value(&schema, &v));
            assert_eq!(doc, r.status() != 400, "audit {name}={v:?}: the document {}, the route answered {}", verdict(doc), r.status());
        }
    }
    let r = app.get("/v1/admin/audit?colour=red").await;
    assert_eq!(r.status(), 400, "unknown query parameters are refused");

    // Credentials of a connection.
    let list = op("/v1/admin/connections/{id}/credentials", "get");
    for (name, values) in [("after", strings(&["user:alice", "alice", "user:", ""])), ("limit", strings(&["1", "1000", "0", "1001", "x"]))]
    {
        for v in values {
            let r = app.get(&format!("/v1/admin/connections/k/credentials?{name}={}", enc(&v))).await;
            let schema = param(&list, name);
            let doc = s.valid(&schema, &query_value(&schema, &v));
            assert_eq!(
                doc,
                r.status() != 400,
                "credentials {name}={v:?}: the document {}, the route answered {}",
                verdict(doc),
                r.status()
            );
        }
    }

    // Release: with user_id=alice (the grant is `any`), each parameter on its own.
    let release = op("/v1/connections/{id}/token", "get");
    let cases: Vec<(&str, Vec<String>)> = vec![
        ("scope", strings(&["", "a", "a b", "  a  ", "a\"b", "a\\b", "é", &x(256), &x(257)])),
        ("min_ttl", strings(&["0", "60", "86400", "86401", "-1", "1.5", "x", ""])),
        ("user_id", strings(&["alice", "auth0|abc", "a b", "a/b", "", &x(300), &x(301)])),
    ];
    for (name, values) in cases {
        for v in values {
            let q = if name == "user_id" { format!("user_id={}", enc(&v)) } else { format!("user_id=alice&{name}={}", enc(&v)) };
            let r = app.http.get(app.url(&format!("/v1/connections/k/token?{q}"))).bearer_auth(&agent).send().await.unwrap();
            let schema = param(&release, name);
            let doc = s.valid(&schema, &query_value(&schema, &v));
            assert_eq!(doc, r.status() != 400, "release {name}={v:?}: the document {}, the route answered {}", verdict(doc), r.status());
        }
    }
    for id in ["x", "k", "Bad", "a.b"] {
        let r = app.http.get(app.url(&format!("/v1/connections/{id}/token?tenant_id=acme"))).bearer_auth(&agent).send().await.unwrap();
        assert_eq!(s.valid(&param(&release, "id"), &json!(id)), r.status() != 400, "release of {id}");
    }

    // Connect-session bodies: 400 "invalid JSON body" is the parser's verdict.
    let body_schema = s.named("ConnectSessionInput");
    let base = json!({"connection_id": "k", "owner": "user:alice"});
    let bodies = mutations(
        &base,
        &[
            ("/connection_id", vec![Some(json!("Crm")), Some(json!("")), None, Some(Value::Null), Some(json!(5))]),
            ("/owner", vec![Some(json!("alice")), Some(json!("tenant:acme")), Some(json!("user:a b")), None, Some(Value::Null)]),
            ("/return_to", vec![Some(json!("https://app.example/")), Some(json!("")), Some(Value::Null), Some(json!(5))]),
            ("/colour", vec![Some(json!("red"))]),
        ],
    );
    for b in bodies {
        let r = app.post_json("/v1/connect/sessions", b.clone()).await;
        let status = r.status();
        let text = r.text().await.unwrap();
        let parsed = !(status == 400 && text.contains("invalid JSON body"));
        let doc = s.valid(body_schema, &b);
        assert_eq!(doc, parsed, "connect session {b}: the document {}, the route answered {status} {text}", verdict(doc));
    }
}

/// A query value as the document types it: integers as numbers when they parse as such.
fn query_value(schema: &Value, v: &str) -> Value {
    let integer = schema.get("type") == Some(&json!("integer"));
    match v.parse::<i128>() {
        Ok(n) if integer => serde_json::from_str(&n.to_string()).unwrap_or(json!(v)),
        _ if integer => json!(format!("not an integer: {v}")),
        _ => json!(v),
    }
}

// ---------------------------------------------------------------------------------------
// Real responses validate against the document.
// ---------------------------------------------------------------------------------------

/// Checks responses against the document and records which operations and statuses were seen.
struct Responses {
    s: Schemas,
    seen: BTreeSet<(String, String, u16)>,
}

impl Responses {
    fn new() -> Responses {
        Responses { s: Schemas::new(), seen: BTreeSet::new() }
    }

    /// Validates `r` as an answer of `METHOD path` (the document's path template); returns
    /// its status and body (JSON, or text as a string).
    async fn check(&mut self, method: &str, path: &str, r: reqwest::Response) -> (u16, Value) {
        let status = r.status().as_u16();
        let headers: Vec<(String, String)> =
            r.headers().iter().map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap_or("(not text)").to_owned())).collect();
        let text = r.text().await.unwrap();
        self.check_parts(method, path, status, &headers, &text)
    }

    fn check_parts(&mut self, method: &str, path: &str, status: u16, headers: &[(String, String)], text: &str) -> (u16, Value) {
        let header = |name: &str| headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str());
        let name = format!("{method} {path} -> {status}");
        let op = &self.s.doc["paths"][path][method.to_lowercase()];
        assert!(op.is_object(), "{name}: not a documented operation");
        let documented = op["responses"].get(status.to_string()).unwrap_or_else(|| panic!("{name}: undocumented status; body {text}"));
        let documented = self.s.resolve(documented).clone();
        for (h, spec) in documented["headers"].as_object().into_iter().flatten() {
            let spec = self.s.resolve(spec);
            match header(h) {
                Some(v) => {
                    let v = json!(v);
                    if let Err(e) = self.s.check(&spec["schema"], &v, h) {
                        panic!("{name}: header {h}: {e}");
                    }
                }
                None => assert!(spec["required"] != true, "{name}: no {h} header"),
            }
        }
        let body = match documented.get("content").and_then(Value::as_object) {
            None => {
                assert!(text.is_empty(), "{name}: a body where the document has none: {text}");
                Value::Null
            }
            Some(content) => {
                let ctype = header("content-type").map(|v| v.split(';').next().unwrap().trim().to_owned()).unwrap_or_default();
                let media = content
                    .get(&ctype)
                    .or_else(|| content.get("*/*"))
                    .unwrap_or_else(|| panic!("{name}: content type {ctype:?} is not documented; body {text}"));
                let body = if ctype == "application/json" { serde_json::from_str(text).expect("a JSON body") } else { json!(text) };
                // `*/*` without a schema: whatever an upstream answers (proxy mode).
                if media.get("schema").is_some() {
                    if let Err(e) = self.s.check(&media["schema"], &body, "") {
                        panic!("{name}: the body does not match the document: {e}\nbody: {body}");
                    }
                }
                body
            }
        };
        self.seen.insert((method.to_owned(), path.to_owned(), status));
        (status, body)
    }
}

/// Proxy mode: every documented answer, for every documented method, against a real upstream.
async fn proxy_calls(v: &mut Responses, app: &TestApp) {
    let up = crate::helpers::upstream::start(("x-api-key", "proxy-key-1".to_owned())).await;
    let base = format!("{}/api", up.url);
    let conns = [
        ("px", json!({"base_url": base, "allow_private": true, "timeout": 1, "max_body": 1024})),
        ("pxget", json!({"base_url": base, "allow_private": true, "allowed_methods": ["GET"], "allowed_paths": ["/whoami"]})),
        ("pxmeta", json!({"base_url": "https://169.254.169.254/latest"})),
        ("pxnone", Value::Null),
    ];
    let mut grants = vec![];
    for (id, proxy) in conns {
        let body = json!({"id": id, "kind": "api_key", "api_key": {"header": "X-API-Key"}, "proxy": proxy});
        assert_eq!(app.admin(Method::POST, "/v1/admin/connections").json(&body).send().await.unwrap().status(), 201);
        let r =
            app.admin(Method::PUT, &format!("/v1/admin/connections/{id}/credentials/user:alice")).json(&json!({"api_key": "proxy-key-1"}));
        assert_eq!(r.send().await.unwrap().status(), 200);
        grants.push(json!({"connection": id, "owners": "any", "modes": ["proxy"]}));
    }
    // A connection as returned with every proxy member and a query-parameter key.
    let full = json!({"id": "pxfull", "kind": "api_key", "api_key": {"header": "X-API-Key", "query_param": "api_key"},
        "proxy": {"base_url": base, "allowed_methods": ["GET"], "allowed_paths": ["/a/**"], "timeout": 5, "max_body": 1024,
                  "allow_private": true, "pass_cookies": true}});
    let r = app.admin(Method::POST, "/v1/admin/connections").json(&full).send().await.unwrap();
    assert_eq!(v.check("POST", "/v1/admin/connections", r).await.0, 201);
    let token = app.agent_token("proxier", json!(grants)).await;
    let path = "/v1/proxy/{connection}/{path}";
    for m in ["GET", "POST", "PUT", "PATCH", "DELETE"] {
        let method = Method::from_bytes(m.as_bytes()).unwrap();
        let call = |p: &str, user: &str| app.http.request(method.clone(), app.url(p)).bearer_auth(&token).header("x-latchkey-user", user);
        let cases = [
            (call("/v1/proxy/px/whoami?q=1", "alice"), 200),
            (call("/v1/proxy/px/a%2fb", "alice"), 400),
            (app.http.request(method.clone(), app.url("/v1/proxy/px/whoami")).bearer_auth("forged"), 401),
            (call("/v1/proxy/crm/whoami", "alice"), 403),
            (call("/v1/proxy/px/whoami", "bob"), 404),
            (call("/v1/proxy/pxnone/whoami", "alice"), 409),
            (call("/v1/proxy/px/upload", "alice").body(vec![b'x'; 2048]), 413),
            (call("/v1/proxy/pxmeta/whoami", "alice"), 502),
            (call("/v1/proxy/px/slow?s=3", "alice"), 504),
        ];
        for (request, status) in cases {
            assert_eq!(v.check(m, path, request.send().await.unwrap()).await.0, status, "{m} {status}");
        }
        let other = if m == "GET" { call("/v1/proxy/pxget/other", "alice") } else { call("/v1/proxy/pxget/whoami", "alice") };
        assert_eq!(v.check(m, path, other.send().await.unwrap()).await.0, if m == "GET" { 403 } else { 405 }, "{m}");
    }
}

#[tokio::test]
async fn real_responses_match_the_document() {
    let mut v = Responses::new();
    let app = TestApp::spawn().await;
    let get = |p: &str| app.http.get(app.url(p)).send();
    let admin = |m: Method, p: &str| app.admin(m, p);
    let x = |n: usize| "x".repeat(n);

    // Operations.
    for p in [
        "/healthz",
        "/readyz",
        "/openapi.json",
        "/.well-known/jwks.json",
        "/.well-known/latchkey-audit-key",
        "/.well-known/oauth-authorization-server",
        "/metrics",
    ] {
        let (status, _) = v.check("GET", p, get(p).await.unwrap()).await;
        assert_eq!(status, 200, "{p}");
    }
    let served = get("/openapi.json").await.unwrap().text().await.unwrap();
    assert_eq!(served, DOC, "the server publishes the repository's document as it is");

    // Connections.
    let conns = "/v1/admin/connections";
    let crm = json!({"id": "crm", "kind": "oauth2", "display_name": "CRM", "oauth2": {
        "authorization_endpoint": "http://127.0.0.1:9/authorize", "token_endpoint": "http://127.0.0.1:9/token",
        "client_id": "abc", "client_secret": "client-secret-1", "scopes": ["crm:read", "crm:write"], "tenant": "common",
        "extra_authorize_params": {"prompt": "consent"}, "return_to_allowlist": ["https://app.example/"], "owner_proof": false},
        "scope_roles": {"crm:admin": ["sales-admin"]}});
    let k = json!({"id": "k", "kind": "api_key", "api_key": {"header": "X-API-Key", "format": "Bearer {key}"}});
    let c = |m: Method, p: &str, b: Value| admin(m, p).json(&b).send();
    assert_eq!(v.check("POST", conns, c(Method::POST, conns, crm.clone()).await.unwrap()).await.0, 201);
    assert_eq!(v.check("POST", conns, c(Method::POST, conns, k).await.unwrap()).await.0, 201);
    assert_eq!(v.check("POST", conns, c(Method::POST, conns, crm.clone()).await.unwrap()).await.0, 409);
    assert_eq!(v.check("POST", conns, c(Method::POST, conns, json!({"id": "x"})).await.unwrap()).await.0, 400);
    let r = admin(Method::POST, conns).header("content-type", "text/plain").body("{}").send().await.unwrap();
    assert_eq!(v.check("POST", conns, r).await.0, 415);
    let r = admin(Method::POST, conns).json(&json!({"id": x(70_000)})).send().await.unwrap();
    assert_eq!(v.check("POST", conns, r).await.0, 413);
    let r = app.http.post(app.url(conns)).json(&crm).send().await.unwrap();
    assert_eq!(v.check("POST", conns, r).await.0, 401);
    assert_eq!(v.check("GET", conns, admin(Method::GET, conns).send().await.unwrap()).await.0, 200);
    let one = "/v1/admin/connections/{id}";
    for (p, status) in [("/v1/admin/connections/crm", 200), ("/v1/admin/connections/nope", 404), ("/v1/admin/connections/Nope", 400)] {
        assert_eq!(v.check("GET", one, admin(Method::GET, p).send().await.unwrap()).await.0, status, "{p}");
    }
    for (p, b, status) in [
        ("/v1/admin/connections/crm", json!({"display_name": "CRM 2", "oauth2": {"scope_enforcement": "label"}}), 200),
        ("/v1/admin/connections/crm", json!({"api_key": {"header": "X"}}), 400),
        ("/v1/admin/connections/nope", json!({}), 404),
    ] {
        assert_eq!(v.check("PATCH", one, c(Method::PATCH, p, b).await.unwrap()).await.0, status, "{p}");
    }
    let r =
        admin(Method::PATCH, "/v1/admin/connections/crm").json(&json!({"oauth2": {"scope_enforcement": "strict"}})).send().await.unwrap();
    let (_, body) = v.check("PATCH", one, r).await;
    assert_eq!(body["client_secret_set"], true);

    // Credentials.
    let cred = "/v1/admin/connections/{id}/credentials/{owner}";
    for (p, b, status) in [
        ("/v1/admin/connections/k/credentials/user:alice", json!({"api_key": "sk-live-1"}), 200),
        (
            "/v1/admin/connections/crm/credentials/user:alice",
            json!({"access_token": "at-1", "refresh_token": "rt-1", "expires_in": 3600, "scope": "crm:read crm:write", "instance_url": "https://acme.example"}),
            200,
        ),
        ("/v1/admin/connections/crm/credentials/tenant:acme", json!({"access_token": "at-2"}), 200),
        ("/v1/admin/connections/crm/credentials/user:bob", json!({"api_key": "sk"}), 400),
        ("/v1/admin/connections/nope/credentials/user:bob", json!({"api_key": "sk"}), 404),
    ] {
        assert_eq!(v.check("PUT", cred, c(Method::PUT, p, b).await.unwrap()).await.0, status, "{p}");
    }
    for (p, status) in [
        ("/v1/admin/connections/crm/credentials/user:alice", 200),
        ("/v1/admin/connections/crm/credentials/tenant:acme", 200),
        ("/v1/admin/connections/crm/credentials/user:bob", 404),
        ("/v1/admin/connections/crm/credentials/bob", 400),
    ] {
        assert_eq!(v.check("GET", cred, admin(Method::GET, p).send().await.unwrap()).await.0, status, "{p}");
    }
    let list = "/v1/admin/connections/{id}/credentials";
    for (p, status) in [
        ("/v1/admin/connections/crm/credentials?limit=1", 200),
        ("/v1/admin/connections/crm/credentials?after=tenant:acme", 200),
        ("/v1/admin/connections/crm/credentials?limit=0", 400),
        ("/v1/admin/connections/nope/credentials", 404),
    ] {
        let (status_got, body) = v.check("GET", list, admin(Method::GET, p).send().await.unwrap()).await;
        assert_eq!(status_got, status, "{p}");
        if p.ends_with("limit=1") {
            assert!(body["next_after"].is_string(), "{body}");
        }
    }

    // Agents.
    let agents = "/v1/admin/agents";
    let grants = json!([{"connection": "crm", "owners": "any", "scopes": ["crm:read", "crm:write"], "max_ttl": 600, "connect": true},
        {"connection": "k", "owners": "any"}]);
    let (status, created) = v
        .check(
            "POST",
            agents,
            c(Method::POST, agents, json!({"id": "svc", "name": "Service", "policy": {"grants": grants}})).await.unwrap(),
        )
        .await;
    assert_eq!(status, 201);
    assert_eq!(v.check("POST", agents, c(Method::POST, agents, json!({"id": "svc", "name": "Again"})).await.unwrap()).await.0, 409);
    assert_eq!(
        v.check(
            "POST",
            agents,
            c(
                Method::POST,
                agents,
                json!({"id": "narrow", "name": "Narrow", "policy": {"grants": [
        {"connection": "crm", "owners": "any", "scopes": ["crm:read"]}]}})
            )
            .await
            .unwrap()
        )
        .await
        .0,
        201
    );
    assert_eq!(v.check("POST", agents, c(Method::POST, agents, json!({"id": "gone", "name": "Gone"})).await.unwrap()).await.0, 201);
    assert_eq!(v.check("POST", agents, c(Method::POST, agents, json!({"id": "x", "name": ""})).await.unwrap()).await.0, 400);
    assert_eq!(v.check("GET", agents, admin(Method::GET, agents).send().await.unwrap()).await.0, 200);
    let agent = "/v1/admin/agents/{id}";
    for (p, status) in [("/v1/admin/agents/svc", 200), ("/v1/admin/agents/nope", 404), ("/v1/admin/agents/Nope", 400)] {
        assert_eq!(v.check("GET", agent, admin(Method::GET, p).send().await.unwrap()).await.0, status, "{p}");
    }
    for (p, status) in [("/v1/admin/agents/gone", 204), ("/v1/admin/agents/gone", 404), ("/v1/admin/agents/-", 400)] {
        assert_eq!(v.check("DELETE", agent, admin(Method::DELETE, p).send().await.unwrap()).await.0, status, "{p}");
    }
    let policy = "/v1/admin/agents/{id}/policy";
    for (p, b, status) in [
        ("/v1/admin/agents/svc/policy", json!({"grants": grants}), 200),
        ("/v1/admin/agents/svc/policy", json!({"grants": [{"connection": "crm", "owners": "any", "max_ttl": 0}]}), 400),
        ("/v1/admin/agents/nope/policy", json!({}), 404),
    ] {
        assert_eq!(v.check("PUT", policy, c(Method::PUT, p, b).await.unwrap()).await.0, status, "{p}");
    }
    for (op, p, status) in [
        ("/v1/admin/agents/{id}/disable", "/v1/admin/agents/svc/disable", 200),
        ("/v1/admin/agents/{id}/enable", "/v1/admin/agents/svc/enable", 200),
        ("/v1/admin/agents/{id}/disable", "/v1/admin/agents/nope/disable", 404),
        ("/v1/admin/agents/{id}/enable", "/v1/admin/agents/Nope/enable", 400),
        ("/v1/admin/agents/{id}/secret", "/v1/admin/agents/nope/secret", 404),
        ("/v1/admin/agents/{id}/enable", "/v1/admin/agents/nope/enable", 404),
        ("/v1/admin/agents/{id}/disable", "/v1/admin/agents/Nope/disable", 400),
        ("/v1/admin/agents/{id}/secret", "/v1/admin/agents/Nope/secret", 400),
    ] {
        assert_eq!(v.check("POST", op, admin(Method::POST, p).send().await.unwrap()).await.0, status, "{p}");
    }
    let (status, rotated) =
        v.check("POST", "/v1/admin/agents/{id}/secret", admin(Method::POST, "/v1/admin/agents/svc/secret").send().await.unwrap()).await;
    assert_eq!(status, 200);
    assert_ne!(rotated["client_secret"], created["client_secret"]);
    let secret = rotated["client_secret"].as_str().unwrap().to_owned();

    // Agent tokens.
    let token = "/oauth2/token";
    let form = |who: &str, pass: &str, grant: &str| {
        app.http.post(app.url(token)).basic_auth(who, Some(pass)).form(&[("grant_type", grant)]).send()
    };
    let (status, t) = v.check("POST", token, form("svc", &secret, "client_credentials").await.unwrap()).await;
    assert_eq!(status, 200);
    let svc = t["access_token"].as_str().unwrap().to_owned();
    let secret_narrow = v
        .check("POST", "/v1/admin/agents/{id}/secret", admin(Method::POST, "/v1/admin/agents/narrow/secret").send().await.unwrap())
        .await
        .1;
    let narrow = form("narrow", secret_narrow["client_secret"].as_str().unwrap(), "client_credentials")
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap();
    let narrow = narrow["access_token"].as_str().unwrap().to_owned();
    assert_eq!(v.check("POST", token, form("svc", "wrong", "client_credentials").await.unwrap()).await.0, 401);
    assert_eq!(v.check("POST", token, form("svc", &secret, "password").await.unwrap()).await.0, 400);
    let exchange = "urn:ietf:params:oauth:grant-type:token-exchange";
    let r = app
        .http
        .post(app.url(token))
        .basic_auth("svc", Some(&secret))
        .form(&[("grant_type", exchange), ("subject_token", "not-a-jwt"), ("subject_token_type", "urn:ietf:params:oauth:token-type:jwt")])
        .send()
        .await
        .unwrap();
    assert_eq!(v.check("POST", token, r).await.0, 400);
    let r = app
        .http
        .post(app.url(token))
        .basic_auth("svc", Some(&secret))
        .form(&[("grant_type", "client_credentials"), ("client_secret", "s")])
        .send()
        .await
        .unwrap();
    assert_eq!(v.check("POST", token, r).await.0, 400);
    let r = app.http.post(app.url(token)).body(x(70_000)).header("content-type", "application/x-www-form-urlencoded").send().await.unwrap();
    assert_eq!(v.check("POST", token, r).await.0, 413);

    // Releases.
    let rel = "/v1/connections/{id}/token";
    let release = |tok: &str, q: &str| app.http.get(app.url(&format!("/v1/connections/{q}"))).bearer_auth(tok).send();
    for (tok, q, status) in [
        (&svc, "k/token?user_id=alice", 200),
        (&svc, "crm/token?user_id=alice&scope=crm:read", 200),
        (&svc, "crm/token?tenant_id=acme", 403),
        (&svc, "crm/token?user_id=alice&scope=crm:admin", 403),
        (&narrow, "crm/token?user_id=alice", 403),
        (&svc, "nope/token?user_id=alice", 403),
        (&svc, "crm/token?user_id=bob", 404),
        (&svc, "crm/token", 400),
        // The imported token lives an hour and its refresh endpoint is a closed port.
        (&svc, "crm/token?user_id=alice&min_ttl=86400", 503),
        (&svc, "crm/token?user_id=alice&colour=red", 400),
        (&"not-a-token".to_owned(), "crm/token?user_id=alice", 401),
    ] {
        let (got, body) = v.check("GET", rel, release(tok, q).await.unwrap()).await;
        assert_eq!(got, status, "{q}: {body}");
        if q.ends_with("min_ttl=86400") {
            assert_eq!(body["error"], "provider_unavailable");
        }
        if tok == &narrow {
            assert!(body["excess_scopes"].is_array(), "{body}");
        }
    }

    // Connect links.
    let sessions = "/v1/connect/sessions";
    let link = |tok: &str, b: Value| app.http.post(app.url(sessions)).bearer_auth(tok).json(&b).send();
    let (status, created) = v
        .check(
            "POST",
            sessions,
            link(&app.token, json!({"connection_id": "crm", "owner": "user:alice", "return_to": "https://app.example/done"}))
                .await
                .unwrap(),
        )
        .await;
    assert_eq!(status, 201);
    let with_return = created["connect_url"].as_str().unwrap().to_owned();
    let (_, created) = v.check("POST", sessions, link(&svc, json!({"connection_id": "crm", "owner": "user:bob"})).await.unwrap()).await;
    let plain = created["connect_url"].as_str().unwrap().to_owned();
    for (tok, b, status) in [
        (&app.token, json!({"connection_id": "k", "owner": "user:alice"}), 400),
        (&app.token, json!({"connection_id": "nope", "owner": "user:alice"}), 404),
        (&narrow, json!({"connection_id": "crm", "owner": "user:alice"}), 403),
        (&"nope".to_owned(), json!({}), 401),
    ] {
        assert_eq!(v.check("POST", sessions, link(tok, b).await.unwrap()).await.0, status);
    }
    let r = app.http.post(app.url(sessions)).bearer_auth(&app.token).body("{}").send().await.unwrap();
    assert_eq!(v.check("POST", sessions, r).await.0, 415);

    let page = "/v1/connect/s/{session}";
    let browser = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let mut states = vec![];
    for url in [&with_return, &plain] {
        let r = browser.get(url).send().await.unwrap();
        let cookie = r.headers()["set-cookie"].to_str().unwrap().split(';').next().unwrap().to_owned();
        let (status, html) = v.check("GET", page, r).await;
        assert_eq!(status, 200);
        let csrf = crate::helpers::provider::csrf_of(html.as_str().unwrap());
        let post = |form: Vec<(&'static str, String)>| browser.post(url.as_str()).header("cookie", &cookie).form(&form).send();
        assert_eq!(v.check("POST", page, post(vec![("csrf", "wrong".into())]).await.unwrap()).await.0, 403);
        assert_eq!(v.check("POST", page, post(vec![("nothing", "here".into())]).await.unwrap()).await.0, 400);
        let r = post(vec![("csrf", csrf.clone())]).await.unwrap();
        let binding = r.headers()["set-cookie"].to_str().unwrap().split(';').next().unwrap().to_owned();
        let location = r.headers()["location"].to_str().unwrap().to_owned();
        assert_eq!(v.check("POST", page, r).await.0, 302);
        assert_eq!(v.check("POST", page, post(vec![("csrf", csrf)]).await.unwrap()).await.0, 404, "a link continues once");
        let state = url::Url::parse(&location).unwrap().query_pairs().find(|(k, _)| k == "state").unwrap().1.into_owned();
        states.push((state, binding));
    }
    let missing = format!("{}/v1/connect/s/cs_nope", app.addr);
    assert_eq!(v.check("GET", page, browser.get(&missing).send().await.unwrap()).await.0, 404);

    let callback = "/v1/connect/callback";
    let cb = |q: String, cookie: Option<&str>| {
        let mut r = browser.get(app.url(&format!("{callback}?{q}")));
        if let Some(c) = cookie {
            r = r.header("cookie", c);
        }
        r.send()
    };
    let (with_return_state, with_return_cookie) = &states[0];
    let (plain_state, plain_cookie) = &states[1];
    assert_eq!(
        v.check("GET", callback, cb(format!("state={with_return_state}&code=c"), None).await.unwrap()).await.0,
        403,
        "another browser"
    );
    assert_eq!(
        v.check("GET", callback, cb(format!("state={with_return_state}&error=access_denied"), Some(with_return_cookie)).await.unwrap())
            .await
            .0,
        302
    );
    // The provider's token endpoint is a closed port: the code exchange fails.
    assert_eq!(v.check("GET", callback, cb(format!("state={plain_state}&code=c"), Some(plain_cookie)).await.unwrap()).await.0, 502);
    assert_eq!(v.check("GET", callback, cb("code=c".into(), None).await.unwrap()).await.0, 400);
    assert_eq!(v.check("GET", callback, cb("state=forged&code=c".into(), None).await.unwrap()).await.0, 400);
    assert_eq!(v.check("GET", callback, cb("state=a&state=b".into(), None).await.unwrap()).await.0, 400);
    let proof = "/v1/connect/proof";
    for q in ["code=c", "state=forged&code=c", "state=a&state=b"] {
        assert_eq!(v.check("GET", proof, browser.get(app.url(&format!("{proof}?{q}"))).send().await.unwrap()).await.0, 400, "{q}");
    }
    // The declined-without-return_to page.
    let (_, created) =
        v.check("POST", sessions, link(&app.token, json!({"connection_id": "crm", "owner": "user:carol"})).await.unwrap()).await;
    let url = created["connect_url"].as_str().unwrap();
    let r = browser.get(url).send().await.unwrap();
    let cookie = r.headers()["set-cookie"].to_str().unwrap().split(';').next().unwrap().to_owned();
    let csrf = crate::helpers::provider::csrf_of(&r.text().await.unwrap());
    let r = browser.post(url).header("cookie", &cookie).form(&[("csrf", csrf)]).send().await.unwrap();
    let binding = r.headers()["set-cookie"].to_str().unwrap().split(';').next().unwrap().to_owned();
    let state = url::Url::parse(r.headers()["location"].to_str().unwrap())
        .unwrap()
        .query_pairs()
        .find(|(k, _)| k == "state")
        .unwrap()
        .1
        .into_owned();
    assert_eq!(v.check("GET", callback, cb(format!("state={state}&error=access_denied"), Some(&binding)).await.unwrap()).await.0, 200);

    // Issuers.
    let issuers = "/v1/admin/issuers";
    let okp = json!({"kty": "OKP", "crv": "Ed25519", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo", "kid": "k1"});
    let idp = json!({"issuer": "https://idp.example.com", "subject_prefix": "acme", "display_name": "Acme SSO", "audience": "latchkey",
        "jwks": {"keys": [okp]}, "tenant_claim": "org", "roles_claim": "roles", "owner_proof": {"client_id": "latchkey", "client_secret": "proof-secret"}});
    assert_eq!(v.check("POST", issuers, c(Method::POST, issuers, idp).await.unwrap()).await.0, 201);
    let other = json!({"issuer": "https://other.example.com", "subject_prefix": "acme", "audience": "a", "jwks_uri": "https://other.example.com/jwks"});
    assert_eq!(v.check("POST", issuers, c(Method::POST, issuers, other.clone()).await.unwrap()).await.0, 409);
    assert_eq!(
        v.check("POST", issuers, c(Method::POST, issuers, with(&other, "/subject_prefix", Some(json!("other")))).await.unwrap()).await.0,
        201
    );
    assert_eq!(v.check("POST", issuers, c(Method::POST, issuers, json!({"issuer": "http://evil.example"})).await.unwrap()).await.0, 400);
    assert_eq!(v.check("GET", issuers, admin(Method::GET, issuers).send().await.unwrap()).await.0, 200);
    for (q, status) in
        [("?issuer=https://other.example.com", 204), ("?issuer=https://other.example.com", 404), ("", 400), ("?issuer=x&colour=red", 400)]
    {
        assert_eq!(
            v.check("DELETE", issuers, admin(Method::DELETE, &format!("{issuers}{q}")).send().await.unwrap()).await.0,
            status,
            "{q}"
        );
    }

    // Audit.
    let audit = "/v1/admin/audit";
    for (q, status) in
        [("?limit=2", 200), ("?decision=deny&connection=crm", 200), ("?owner=user:alice&agent=svc", 200), ("?decision=maybe", 400)]
    {
        let (got, body) = v.check("GET", audit, admin(Method::GET, &format!("{audit}{q}")).send().await.unwrap()).await;
        assert_eq!(got, status, "{q}: {body}");
        if q == "?limit=2" {
            assert!(body["next_after"].is_i64(), "{body}");
        }
    }

    // Deletions.
    for (p, status) in [
        ("/v1/admin/connections/crm/credentials/tenant:acme", 204),
        ("/v1/admin/connections/crm/credentials/tenant:acme", 404),
        ("/v1/admin/connections/crm/credentials/acme", 400),
    ] {
        assert_eq!(v.check("DELETE", cred, admin(Method::DELETE, p).send().await.unwrap()).await.0, status, "{p}");
    }
    for (p, status) in [
        ("/v1/admin/connections/crm", 409),
        ("/v1/admin/connections/crm?cascade=maybe", 400),
        ("/v1/admin/connections/crm?cascade=true", 200),
        ("/v1/admin/connections/crm", 404),
        ("/v1/admin/connections/-crm", 400),
    ] {
        assert_eq!(v.check("DELETE", one, admin(Method::DELETE, p).send().await.unwrap()).await.0, status, "{p}");
    }

    // Every operation that needs a token refuses a call without one; every JSON body is
    // refused when it is not JSON, and every body over the limit.
    let s = Schemas::new();
    let concrete = |path: &str| path.replace("{id}", "crm").replace("{owner}", "user:alice").replace("{session}", "cs_nope");
    for (method, path, op) in operations(&s.doc) {
        let m = Method::from_bytes(method.as_bytes()).unwrap();
        let security = op["security"].as_array().unwrap();
        if !security.is_empty() && security.iter().all(|alt| !alt.as_object().unwrap().is_empty()) {
            let r = app.http.request(m.clone(), app.url(&concrete(&path))).json(&json!({})).send().await.unwrap();
            assert_eq!(v.check(&method, &path, r).await.0, 401, "{method} {path} without a token");
        }
        let Some(content) = op["requestBody"]["content"].as_object() else { continue };
        let big = if content.contains_key("application/json") {
            let r = admin(m.clone(), &concrete(&path)).header("content-type", "text/plain").body("{}").send().await.unwrap();
            assert_eq!(v.check(&method, &path, r).await.0, 415, "{method} {path} with a text body");
            admin(m.clone(), &concrete(&path)).json(&json!({"padding": x(70_000)}))
        } else {
            app.http.request(m.clone(), app.url(&concrete(&path))).form(&[("padding", x(70_000))])
        };
        assert_eq!(v.check(&method, &path, big.send().await.unwrap()).await.0, 413, "{method} {path} with a large body");
    }
    // ... and every body that does not arrive in time.
    let slow = TestApp::spawn_configured(None, |o| o.limits.request_timeout = std::time::Duration::from_millis(500)).await;
    let mut pending = vec![];
    for (method, path, op) in operations(&s.doc) {
        let Some(content) = op["requestBody"]["content"].as_object() else { continue };
        let ctype = content.keys().next().unwrap().clone();
        let head = format!(
            "{method} {} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Type: {ctype}\r\nContent-Length: 100\r\n\r\n",
            concrete(&path),
            slow.token
        );
        let addr = slow.addr.trim_start_matches("http://").to_owned();
        pending.push((method, path, tokio::task::spawn_blocking(move || raw_exchange(&addr, &head, b"{\"a"))));
    }
    for (method, path, answer) in pending {
        let (status, headers, body) = answer.await.unwrap();
        assert_eq!(v.check_parts(&method, &path, status, &headers, &body).0, 408, "{method} {path} with a body that never ends");
    }
    // Too many failed client authentications.
    let limited = TestApp::spawn().await;
    let mut last = None;
    for _ in 0..=latchkey::service::limits::FAILURES_PER_WINDOW {
        last = Some(
            limited
                .http
                .post(limited.url(token))
                .basic_auth("nobody", Some("wrong"))
                .form(&[("grant_type", "client_credentials")])
                .send()
                .await
                .unwrap(),
        );
    }
    assert_eq!(v.check("POST", token, last.unwrap()).await.0, 429);
    // Metrics on their own listener.
    let elsewhere = TestApp::spawn_configured(None, |o| {
        o.metrics_listener = Some(std::sync::Arc::new(std::net::TcpListener::bind("127.0.0.1:0").unwrap()));
    })
    .await;
    assert_eq!(v.check("GET", "/metrics", elsewhere.http.get(elsewhere.url("/metrics")).send().await.unwrap()).await.0, 404);

    // Metrics behind a token.
    let guarded =
        TestApp::spawn_configured(None, |o| o.metrics_token = Some(latchkey::secret::Secret::new("metrics-token-1".into()))).await;
    let r = guarded.http.get(guarded.url("/metrics")).send().await.unwrap();
    assert_eq!(v.check("GET", "/metrics", r).await.0, 401);

    proxy_calls(&mut v, &app).await;
    provider_flows(&mut v).await;

    // Every operation was seen, and every documented status of the ones this test can cause.
    for (method, path, _) in operations(&s.doc) {
        assert!(v.seen.iter().any(|(m, p, _)| *m == method && *p == path), "{method} {path} was not exercised");
    }
    // Statuses no test can cause on purpose: a failing store (500), a busy database (503), a
    // row changed between read and write (409 on PATCH and PUT), a master key that is not
    // loaded (`/readyz` 503), an audit trail that cannot be written (the token endpoint's 503).
    // And a confirmation page without randomness for its CSRF value (502).
    let cannot_cause = |method: &str, path: &str, status: u16| {
        status == 500
            || (method == "GET" && path == "/v1/connect/s/{session}" && status == 502)
            || (status == 503 && path != "/v1/connections/{id}/token")
            // Every proxied method but GET may be limited to GET.
            || (method == "GET" && path == "/v1/proxy/{connection}/{path}" && status == 405)
            || (status == 409 && (method == "PATCH" || method == "PUT") && path.starts_with("/v1/admin/connections/"))
    };
    let mut unseen = vec![];
    for (method, path, op) in operations(&s.doc) {
        for status in op["responses"].as_object().unwrap().keys() {
            let status: u16 = status.parse().unwrap();
            if !v.seen.contains(&(method.clone(), path.clone(), status)) && !cannot_cause(&method, &path, status) {
                unseen.push(format!("{method} {path} {status}"));
            }
        }
    }
    assert!(unseen.is_empty(), "documented answers no call here produced (cause them, or say why they cannot be):\n{}", unseen.join("\n"));
}

/// Sends `head` and the start of a body over a raw connection and reads the answer: status,
/// headers and body.
fn raw_exchange(addr: &str, head: &str, body: &[u8]) -> (u16, Vec<(String, String)>, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(std::time::Duration::from_secs(10))).expect("timeout");
    s.write_all(head.as_bytes()).and_then(|_| s.write_all(body)).expect("send");
    let mut raw = vec![];
    let mut buf = [0u8; 4096];
    loop {
        let n = s.read(&mut buf).expect("the server answered in time");
        raw.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&raw).to_string();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let mut lines = head.lines();
            let status = lines.next().and_then(|l| l.split(' ').nth(1)).and_then(|c| c.parse().ok()).expect("a status line");
            let headers: Vec<(String, String)> =
                lines.filter_map(|l| l.split_once(':')).map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned())).collect();
            let length: usize =
                headers.iter().find(|(k, _)| k.eq_ignore_ascii_case("content-length")).map_or(0, |(_, v)| v.parse().unwrap());
            if body.len() >= length || n == 0 {
                return (status, headers, body.to_owned());
            }
        }
        assert!(n > 0, "the connection closed mid-answer");
    }
}

/// Connect flows through the test provider (tests/provider) and a trusted issuer with owner
/// proof, releases of connected tokens, and a provider that forgets its grant.
async fn provider_flows(v: &mut Responses) {
    use crate::helpers::provider::{csrf_of, Browser, OAuthWorld, Provider};
    let w = OAuthWorld::new(300).await;
    let app = &w.app;

    // Press Continue on a link in `b`; returns where the browser goes next.
    async fn continue_link(v: &mut Responses, b: &mut Browser, url: &str, status: u16) -> Option<String> {
        let (got, html) = v.check("GET", "/v1/connect/s/{session}", b.get(url).await).await;
        assert_eq!(got, 200);
        let r = b.post_form(url, &[("csrf", &csrf_of(html.as_str().unwrap()))]).await;
        let next = r.headers().get("location").map(|l| l.to_str().unwrap().to_owned());
        assert_eq!(v.check("POST", "/v1/connect/s/{session}", r).await.0, status);
        next
    }

    // A connection, and its callback without and with return_to.
    for (owner, return_to, status) in [("user:alice", None, 200), ("user:dave", Some("http://127.0.0.1:9/done"), 302)] {
        let url = w.connect_url(owner, return_to).await;
        let mut b = Browser::new();
        b.sign_in_at(&w.provider.url, &owner[5..]);
        let next = continue_link(v, &mut b, &url, 302).await.unwrap();
        let cb = b.follow(next, &w.callback_prefix()).await;
        assert_eq!(v.check("GET", "/v1/connect/callback", b.get(&cb).await).await.0, status, "{owner}");
    }
    let cred = "/v1/admin/connections/{id}/credentials/{owner}";
    let (_, meta) = v.check("GET", cred, app.get("/v1/admin/connections/crm/credentials/user:alice").await).await;
    assert!(meta["account"].is_object() && meta["expires_at"].is_string(), "{meta}");
    let rel = "/v1/connections/{id}/token";
    let (status, released) = v.check("GET", rel, w.release("alice", 60).await).await;
    assert_eq!(status, 200);
    assert!(released["expires_in"].is_i64() && released["expires_at"].is_string(), "{released}");
    let (status, refused) = v.check("GET", rel, w.release("alice", 3600).await).await;
    assert_eq!((status, &refused["error"]), (400, &json!("min_ttl_unsatisfiable")), "{refused}");
    w.provider.forget("alice").await;
    app.advance(280);
    let (status, refused) = v.check("GET", rel, w.release("alice", 60).await).await;
    assert_eq!((status, &refused["error"]), (409, &json!("reauth_required")), "{refused}");

    // A provider whose configuration cannot be loaded.
    let dead = json!({"id": "dead", "kind": "oauth2", "oauth2": {"discovery_url": "http://127.0.0.1:9/.well-known/openid-configuration", "client_id": "c"}});
    assert_eq!(v.check("POST", "/v1/admin/connections", app.post_json("/v1/admin/connections", dead).await).await.0, 201);
    let (_, link) = v
        .check(
            "POST",
            "/v1/connect/sessions",
            app.post_json("/v1/connect/sessions", json!({"connection_id": "dead", "owner": "user:erin"})).await,
        )
        .await;
    continue_link(v, &mut Browser::new(), link["connect_url"].as_str().unwrap(), 502).await;

    // Owner proof at a trusted issuer, for links made by an agent.
    let proof_uri = format!("{}/v1/connect/proof", app.addr);
    let client = json!([{"client_id": "latchkey-proof", "client_secret": "proof-secret-1", "redirect_uris": [proof_uri],
        "grant_types": ["authorization_code"], "response_types": ["code"], "token_endpoint_auth_method": "client_secret_basic"}]);
    let idp = Provider::start_with(client, 300, json!({"alice": {}, "mallory": {}}));
    let issuer = json!({"issuer": idp.url, "subject_prefix": "idp", "jwks_uri": format!("{}/jwks", idp.url), "audience": "latchkey",
        "owner_proof": {"client_id": "latchkey-proof", "client_secret": "proof-secret-1"}});
    assert_eq!(v.check("POST", "/v1/admin/issuers", app.post_json("/v1/admin/issuers", issuer).await).await.0, 201);
    let grants = json!([{"connection": "crm", "owners": "any", "connect": true}, {"connection": "dead", "owners": "any", "connect": true}]);
    let (_, agent) = v
        .check(
            "POST",
            "/v1/admin/agents",
            app.post_json("/v1/admin/agents", json!({"id": "linker", "name": "Linker", "policy": {"grants": grants}})).await,
        )
        .await;
    let r = app
        .http
        .post(app.url("/oauth2/token"))
        .basic_auth("linker", agent["client_secret"].as_str())
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .unwrap();
    let token = v.check("POST", "/oauth2/token", r).await.1["access_token"].as_str().unwrap().to_owned();
    let link = |connection: &str| {
        let body = json!({"connection_id": connection, "owner": "user:idp:alice"});
        app.http.post(app.url("/v1/connect/sessions")).bearer_auth(&token).json(&body).send()
    };
    let proof = "/v1/connect/proof";
    // Proven: on to the provider (302); proven, but the provider cannot be reached (502).
    for (connection, status) in [("crm", 302), ("dead", 502)] {
        let (_, created) = v.check("POST", "/v1/connect/sessions", link(connection).await.unwrap()).await;
        assert_eq!(created["owner_proof"], true);
        let mut b = Browser::new();
        b.sign_in_at(&idp.url, "alice");
        let next = continue_link(v, &mut b, created["connect_url"].as_str().unwrap(), 302).await.unwrap();
        let back = b.follow(next, &proof_uri).await;
        assert_eq!(v.check("GET", proof, b.get(&back).await).await.0, status, "{connection}");
    }
    // Another browser (403, the link is not spent); the issuer signed nobody in (403).
    let (_, created) = v.check("POST", "/v1/connect/sessions", link("crm").await.unwrap()).await;
    let mut b = Browser::new();
    let next = continue_link(v, &mut b, created["connect_url"].as_str().unwrap(), 302).await.unwrap();
    let state = url::Url::parse(&next).unwrap().query_pairs().find(|(k, _)| k == "state").unwrap().1.into_owned();
    let elsewhere = app.http.get(app.url(&format!("{proof}?state={state}&code=c"))).send().await.unwrap();
    assert_eq!(v.check("GET", proof, elsewhere).await.0, 403);
    let declined = b.get(&app.url(&format!("{proof}?state={state}&error=access_denied"))).await;
    assert_eq!(v.check("GET", proof, declined).await.0, 403);
}
