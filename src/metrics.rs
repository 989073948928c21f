//! Prometheus metrics, kept as plain counters and rendered as text at `/metrics`. The OAuth
//! service counts refreshes; the release path counts releases.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::time::Duration;

const BUCKETS: [f64; 9] = [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0];

#[derive(Default)]
pub struct Metrics {
    refreshes: Mutex<BTreeMap<(String, &'static str), u64>>,
    latency: Mutex<([u64; BUCKETS.len() + 1], f64, u64)>,
    releases: Mutex<BTreeMap<&'static str, u64>>,
}

impl Metrics {
    pub fn refresh(&self, connection: &str, outcome: &'static str) {
        *self.refreshes.lock().unwrap_or_else(|p| p.into_inner()).entry((connection.to_owned(), outcome)).or_default() += 1;
    }

    pub fn refresh_latency(&self, d: Duration) {
        let s = d.as_secs_f64();
        let mut l = self.latency.lock().unwrap_or_else(|p| p.into_inner());
        let i = BUCKETS.iter().position(|b| s <= *b).unwrap_or(BUCKETS.len());
        l.0[i] += 1;
        l.1 += s;
        l.2 += 1;
    }

    pub fn release(&self, decision: &'static str) {
        *self.releases.lock().unwrap_or_else(|p| p.into_inner()).entry(decision).or_default() += 1;
    }

    /// Prometheus text exposition; `by_status` is read from the store at scrape time.
    pub fn render(&self, by_status: &[(crate::model::CredentialStatus, u64)], integrity_violations: u64) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# HELP latchkey_integrity_violations_total Stored rows, digests or generations found changed outside latchkey.\n# TYPE latchkey_integrity_violations_total counter\nlatchkey_integrity_violations_total {integrity_violations}"
        );
        let _ = writeln!(
            out,
            "# HELP latchkey_refresh_total OAuth refresh attempts by connection and outcome.\n# TYPE latchkey_refresh_total counter"
        );
        for ((conn, outcome), n) in self.refreshes.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            let _ = writeln!(out, "latchkey_refresh_total{{connection=\"{conn}\",outcome=\"{outcome}\"}} {n}");
        }
        let _ = writeln!(out, "# HELP latchkey_refresh_duration_seconds Provider token-endpoint latency of refreshes.\n# TYPE latchkey_refresh_duration_seconds histogram");
        let (buckets, sum, count) = *self.latency.lock().unwrap_or_else(|p| p.into_inner());
        let mut acc = 0;
        for (i, b) in BUCKETS.iter().enumerate() {
            acc += buckets[i];
            let _ = writeln!(out, "latchkey_refresh_duration_seconds_bucket{{le=\"{b}\"}} {acc}");
        }
        let _ = writeln!(out, "latchkey_refresh_duration_seconds_bucket{{le=\"+Inf\"}} {count}\nlatchkey_refresh_duration_seconds_sum {sum}\nlatchkey_refresh_duration_seconds_count {count}");
        let _ = writeln!(out, "# HELP latchkey_credentials Stored credentials by status.\n# TYPE latchkey_credentials gauge");
        for (status, n) in by_status {
            let _ = writeln!(out, "latchkey_credentials{{status=\"{status}\"}} {n}");
        }
        let _ = writeln!(out, "# HELP latchkey_releases_total Token-release decisions.\n# TYPE latchkey_releases_total counter");
        for (decision, n) in self.releases.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            let _ = writeln!(out, "latchkey_releases_total{{decision=\"{decision}\"}} {n}");
        }
        out
    }
}
