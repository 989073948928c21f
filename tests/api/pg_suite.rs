//! The whole suite again, on PostgreSQL: this binary re-runs itself with
//! `LATCHKEY_TEST_BACKEND=postgres`, so that `cargo test` covers both backends in one
//! command. Each test then gets a fresh database on the server the harness finds
//! (`LATCHKEY_TEST_DATABASE_URL`, the local server, or a throwaway cluster) and never
//! skips: no server is a failure with a message saying how to get one.

use std::process::Command;

use crate::helpers::pg;

#[test]
fn the_whole_suite_passes_on_postgresql() {
    // Fails here, with the harness's message, when there is no server at all.
    let _ = pg::server();
    let exe = std::env::current_exe().expect("the test binary");
    let out = Command::new(exe)
        .args(["--skip", "pg_suite::", "--skip", "pg::", "--skip", "replicas::"])
        .env("LATCHKEY_TEST_BACKEND", "postgres")
        .output()
        .expect("re-run the test binary");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let summary = stdout.lines().filter(|l| l.starts_with("test result") || l.contains("FAILED")).collect::<Vec<_>>().join("\n");
    assert!(
        out.status.success(),
        "the suite fails on PostgreSQL:\n{summary}\n--- output ---\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let passed: usize = summary.split_whitespace().skip_while(|w| *w != "ok.").nth(1).and_then(|n| n.parse().ok()).expect("a test summary");
    assert!(passed >= 70, "only {passed} tests ran on PostgreSQL:\n{summary}");
    eprintln!("on PostgreSQL: {summary}");
}
