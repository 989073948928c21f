//! The architecture as a test: every `crate::…` path in `src/` points to the same layer or
//! a lower one (the table is the crate doc in src/lib.rs), the HTTP layer sees no database
//! type, the vault takes no untyped JSON, and handlers stay short.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Module → layer, bottom (0) to top. Keep in step with the table in src/lib.rs.
const LAYERS: &[(&str, u8)] = &[
    ("crypto", 0),
    ("keys", 0),
    ("model", 0),
    ("audit", 0),
    ("metrics", 0),
    ("secret", 0),
    ("time", 0),
    ("config", 0),
    ("telemetry", 0),
    ("egress", 0),
    ("store", 1),
    ("policy", 2),
    ("auth", 2),
    ("vault", 3),
    ("oauth", 4),
    ("service", 5),
    ("api", 6),
    ("startup", 7),
    ("cli", 8),
];

/// Longest handler in `src/api`, in lines.
const MAX_HANDLER_LINES: usize = 40;

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

fn src_files() -> Vec<(String, PathBuf, String)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&root, &mut files);
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let rel = p.strip_prefix(&root).unwrap().to_string_lossy().into_owned();
            let module = rel.split(['/', '.']).next().unwrap().to_owned();
            let text = std::fs::read_to_string(&p).unwrap();
            (module, p, text)
        })
        .collect()
}

/// The top-level module of every `crate::name` path in `text`.
fn crate_paths(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let code = line.split("//").next().unwrap_or("");
        let mut rest = code;
        while let Some(i) = rest.find("crate::") {
            let after = &rest[i + "crate::".len()..];
            let name: String = after.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
            if !name.is_empty() {
                out.push((n + 1, name));
            }
            rest = after;
        }
        // `use crate::{a, b}` groups.
        if let Some(i) = code.find("crate::{") {
            for part in code[i + "crate::{".len()..].split([',', '}']) {
                let name: String = part.trim().chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
                if !name.is_empty() {
                    out.push((n + 1, name));
                }
            }
        }
    }
    out
}

#[test]
fn imports_point_down_only() {
    let layers: BTreeMap<&str, u8> = LAYERS.iter().copied().collect();
    let mut violations = Vec::new();
    for (module, path, text) in src_files() {
        let Some(&own) = layers.get(module.as_str()) else {
            assert!(matches!(module.as_str(), "lib" | "main"), "{} is not in the layer table", path.display());
            continue;
        };
        for (line, target) in crate_paths(&text) {
            match layers.get(target.as_str()) {
                Some(&l) if l > own => {
                    violations.push(format!("{}:{line}: {module} (layer {own}) uses {target} (layer {l})", path.display()))
                }
                Some(_) => {}
                None => violations.push(format!("{}:{line}: unknown module crate::{target}", path.display())),
            }
        }
    }
    assert!(violations.is_empty(), "imports of a higher layer:\n{}", violations.join("\n"));
}

#[test]
fn http_sees_no_database_and_the_vault_no_untyped_json() {
    for (module, path, text) in src_files() {
        if module == "api" {
            assert!(!text.contains("rusqlite"), "{} names a database type", path.display());
        }
        if module == "vault" {
            for (n, line) in text.lines().enumerate() {
                let sig = line.trim_start();
                if (sig.starts_with("pub fn") || sig.starts_with("pub(crate) fn") || sig.starts_with("fn")) && sig.contains("Value") {
                    panic!("{}:{}: a vault function takes untyped JSON: {sig}", path.display(), n + 1);
                }
            }
        }
    }
}

#[test]
fn handlers_are_short() {
    for (module, path, text) in src_files() {
        if module != "api" {
            continue;
        }
        let lines: Vec<&str> = text.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            if !line.starts_with("async fn ") && !line.starts_with("pub async fn ") {
                continue;
            }
            let end = lines[i..].iter().position(|l| *l == "}").map(|e| i + e).unwrap_or(lines.len());
            let len = end - i + 1;
            assert!(len <= MAX_HANDLER_LINES, "{}:{}: a handler of {len} lines (at most {MAX_HANDLER_LINES})", path.display(), i + 1);
        }
    }
}
