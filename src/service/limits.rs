//! Abuse limits at the token endpoint: failed client authentications are counted per
//! source address (never per `client_id`: ids are not secret, so anyone could lock any
//! agent out), and past a limit further attempts from that address are refused before any
//! work is done. Repeated failures are audited as one record per client per minute, so a
//! flood cannot grow the audit trail without bound.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Failed authentications one address may make per window.
pub const FAILURES_PER_WINDOW: u32 = 20;
/// The window failures are counted in.
pub const WINDOW: Duration = Duration::from_secs(60);
/// Addresses tracked at once; beyond it, stale entries go first.
const MAX_TRACKED: usize = 100_000;

/// Counts failures per source address (IPv6 per /64: one host holds many addresses).
#[derive(Debug, Default)]
pub struct FailureLimiter {
    windows: Mutex<HashMap<IpAddr, (Instant, u32)>>,
}

fn bucket(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let s = v6.segments();
            IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
        }
        v4 => v4,
    }
}

impl FailureLimiter {
    /// `Err(seconds)` if `ip` is over the limit: refuse without doing any work.
    pub fn check(&self, ip: IpAddr, now: Instant) -> Result<(), u64> {
        let windows = self.windows.lock().unwrap_or_else(|p| p.into_inner());
        match windows.get(&bucket(ip)) {
            Some((start, n)) if *n >= FAILURES_PER_WINDOW && now.duration_since(*start) < WINDOW => {
                Err((WINDOW - now.duration_since(*start)).as_secs().max(1))
            }
            _ => Ok(()),
        }
    }

    /// Records a failed authentication from `ip`.
    pub fn failed(&self, ip: IpAddr, now: Instant) {
        let mut windows = self.windows.lock().unwrap_or_else(|p| p.into_inner());
        if windows.len() >= MAX_TRACKED {
            windows.retain(|_, (start, _)| now.duration_since(*start) < WINDOW);
            if windows.len() >= MAX_TRACKED {
                // Still full of live entries: forget them rather than grow without bound.
                windows.clear();
            }
        }
        let entry = windows.entry(bucket(ip)).or_insert((now, 0));
        if now.duration_since(entry.0) >= WINDOW {
            *entry = (now, 0);
        }
        entry.1 += 1;
    }
}

/// Failed authentications per client per minute: the first of each is audited at once,
/// the rest are counted and written as one record when the minute is over.
#[derive(Debug, Default)]
pub struct FailureAudit {
    /// (client id as audited, minute) → failures after the first.
    repeats: Mutex<HashMap<(String, i64), u64>>,
}

/// Clients tracked per minute; beyond it, further ones are counted together under "*".
const MAX_CLIENTS: usize = 10_000;

impl FailureAudit {
    /// Records a failure of `client` at unix second `now`; `true` if it is the first of
    /// its minute (audit it now).
    pub fn record(&self, client: &str, now: i64) -> bool {
        let minute = now.div_euclid(60);
        let mut repeats = self.repeats.lock().unwrap_or_else(|p| p.into_inner());
        let key = (client.to_owned(), minute);
        if let Some(n) = repeats.get_mut(&key) {
            *n += 1;
            return false;
        }
        if repeats.len() >= MAX_CLIENTS {
            *repeats.entry(("*".to_owned(), minute)).or_insert(0) += 1;
            return false;
        }
        repeats.insert(key, 0);
        true
    }

    /// The repeats of minutes that ended before `now`: (client, minute start, count).
    pub fn take_finished(&self, now: i64) -> Vec<(String, i64, u64)> {
        let current = now.div_euclid(60);
        let mut repeats = self.repeats.lock().unwrap_or_else(|p| p.into_inner());
        let done: Vec<(String, i64)> = repeats.keys().filter(|(_, m)| *m < current).cloned().collect();
        done.into_iter().filter_map(|k| repeats.remove(&k).map(|n| (k.0, k.1 * 60, n))).filter(|(_, _, n)| *n > 0).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_are_limited_per_address_and_window() {
        let l = FailureLimiter::default();
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let t0 = Instant::now();
        for _ in 0..FAILURES_PER_WINDOW {
            assert!(l.check(a, t0).is_ok());
            l.failed(a, t0);
        }
        let wait = l.check(a, t0).unwrap_err();
        assert!((1..=60).contains(&wait));
        assert!(l.check(b, t0).is_ok(), "another address is not affected");
        assert!(l.check(a, t0 + WINDOW).is_ok(), "the window ends");
        // IPv6 addresses of one /64 share a bucket.
        let v6 = |s: &str| s.parse::<IpAddr>().unwrap();
        for i in 0..FAILURES_PER_WINDOW {
            l.failed(v6(&format!("2001:db8::{i:x}")), t0);
        }
        assert!(l.check(v6("2001:db8::ffff"), t0).is_err());
        assert!(l.check(v6("2001:db8:0:1::1"), t0).is_ok());
    }

    #[test]
    fn repeated_failures_are_audited_once_per_client_and_minute() {
        let a = FailureAudit::default();
        assert!(a.record("svc", 120));
        for _ in 0..99 {
            assert!(!a.record("svc", 150));
        }
        assert!(a.record("other", 150));
        assert!(a.take_finished(170).is_empty(), "the minute is not over");
        assert_eq!(a.take_finished(180), vec![("svc".to_owned(), 120, 99)]);
        assert!(a.take_finished(240).is_empty(), "taken once");
        assert!(a.record("svc", 181), "a new minute starts with an audited record");
    }
}
