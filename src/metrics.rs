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
    /// PostgreSQL: where release decisions read their credential (`worker`, `pool`).
    release_reads: Mutex<BTreeMap<&'static str, u64>>,
    /// Proxied calls by connection and upstream status class (or `refused`, `error`).
    proxy_calls: Mutex<BTreeMap<(String, &'static str), u64>>,
    /// Upstream latency of proxied calls by connection (to the response headers).
    proxy_latency: Mutex<BTreeMap<String, Histogram>>,
}

type Histogram = ([u64; BUCKETS.len() + 1], f64, u64);

/// The status class of an upstream answer.
pub fn status_class(status: u16) -> &'static str {
    match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}

fn observe(h: &mut Histogram, d: Duration) {
    let s = d.as_secs_f64();
    let i = BUCKETS.iter().position(|b| s <= *b).unwrap_or(BUCKETS.len());
    h.0[i] += 1;
    h.1 += s;
    h.2 += 1;
}

fn render_histogram(out: &mut String, name: &str, labels: &str, h: &Histogram) {
    let sep = if labels.is_empty() { "" } else { "," };
    let mut acc = 0;
    for (i, b) in BUCKETS.iter().enumerate() {
        acc += h.0[i];
        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{b}\"}} {acc}");
    }
    let braces = if labels.is_empty() { String::new() } else { format!("{{{labels}}}") };
    let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {}\n{name}_sum{braces} {}\n{name}_count{braces} {}", h.2, h.1, h.2);
}

impl Metrics {
    pub fn refresh(&self, connection: &str, outcome: &'static str) {
        *self.refreshes.lock().unwrap_or_else(|p| p.into_inner()).entry((connection.to_owned(), outcome)).or_default() += 1;
    }

    pub fn refresh_latency(&self, d: Duration) {
        observe(&mut self.latency.lock().unwrap_or_else(|p| p.into_inner()), d);
    }

    /// A proxied call's outcome (`2xx`…, `refused`, `error`).
    pub fn proxy_call(&self, connection: &str, class: &'static str) {
        *self.proxy_calls.lock().unwrap_or_else(|p| p.into_inner()).entry((connection.to_owned(), class)).or_default() += 1;
    }

    /// A proxied call's upstream latency, to the response headers.
    pub fn proxy_latency(&self, connection: &str, d: Duration) {
        let mut map = self.proxy_latency.lock().unwrap_or_else(|p| p.into_inner());
        match map.get_mut(connection) {
            Some(h) => observe(h, d),
            None => {
                let mut h = ([0; BUCKETS.len() + 1], 0.0, 0);
                observe(&mut h, d);
                map.insert(connection.to_owned(), h);
            }
        }
    }

    pub fn release(&self, decision: &'static str) {
        *self.releases.lock().unwrap_or_else(|p| p.into_inner()).entry(decision).or_default() += 1;
    }

    /// PostgreSQL: a release decision read its credential on the HTTP worker's own
    /// connection (`worker`) or was made on the blocking pool (`pool`).
    pub fn release_read(&self, path: &'static str) {
        *self.release_reads.lock().unwrap_or_else(|p| p.into_inner()).entry(path).or_default() += 1;
    }

    /// Prometheus text exposition; `by_status` is read from the store at scrape time.
    pub fn render(&self, by_status: &[(crate::model::CredentialStatus, u64)], integrity_violations: u64, read_statements: u64) -> String {
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
        let latency = *self.latency.lock().unwrap_or_else(|p| p.into_inner());
        render_histogram(&mut out, "latchkey_refresh_duration_seconds", "", &latency);
        let _ = writeln!(out, "# HELP latchkey_credentials Stored credentials by status.\n# TYPE latchkey_credentials gauge");
        for (status, n) in by_status {
            let _ = writeln!(out, "latchkey_credentials{{status=\"{status}\"}} {n}");
        }
        let _ = writeln!(out, "# HELP latchkey_releases_total Token-release decisions.\n# TYPE latchkey_releases_total counter");
        for (decision, n) in self.releases.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            let _ = writeln!(out, "latchkey_releases_total{{decision=\"{decision}\"}} {n}");
        }
        let reads = self.release_reads.lock().unwrap_or_else(|p| p.into_inner());
        if !reads.is_empty() {
            let _ = writeln!(
                out,
                "# HELP latchkey_release_reads_total PostgreSQL: release decisions by where their credential was read (worker: the HTTP worker's own connection; pool: the blocking pool).\n# TYPE latchkey_release_reads_total counter"
            );
            for (path, n) in reads.iter() {
                let _ = writeln!(out, "latchkey_release_reads_total{{path=\"{path}\"}} {n}");
            }
            let _ = writeln!(
                out,
                "# HELP latchkey_release_read_statements_total PostgreSQL: statements that read credentials on the HTTP workers' connections; reads that wait for one in flight are sent together in the next.\n# TYPE latchkey_release_read_statements_total counter\nlatchkey_release_read_statements_total {read_statements}"
            );
        }
        drop(reads);
        let _ = writeln!(
            out,
            "# HELP latchkey_proxy_requests_total Proxied calls by connection and upstream status class (refused: not forwarded; error: no upstream answer).\n# TYPE latchkey_proxy_requests_total counter"
        );
        for ((conn, class), n) in self.proxy_calls.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            let _ = writeln!(out, "latchkey_proxy_requests_total{{connection=\"{conn}\",status=\"{class}\"}} {n}");
        }
        let _ = writeln!(
            out,
            "# HELP latchkey_proxy_upstream_duration_seconds Upstream latency of proxied calls, to the response headers.\n# TYPE latchkey_proxy_upstream_duration_seconds histogram"
        );
        for (conn, h) in self.proxy_latency.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            render_histogram(&mut out, "latchkey_proxy_upstream_duration_seconds", &format!("connection=\"{conn}\""), h);
        }
        out
    }
}
