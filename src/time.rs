//! Time as a value passed in: `Clock` lets tests pin "now"; formatting to RFC 3339.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

/// Unix time in seconds.
pub type Timestamp = i64;

/// The source of "now". The system clock in production — corrected to a reference
/// clock (the shared database's) when one is set — and fixed in tests.
#[derive(Clone, Debug, Default)]
pub struct Clock {
    fixed: Option<Arc<AtomicI64>>,
    /// Milliseconds added to this host's clock (shared by clones).
    offset: Arc<AtomicI64>,
}

fn system_millis() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

impl Clock {
    pub fn system() -> Self {
        Clock::default()
    }

    pub fn fixed(at: Timestamp) -> Self {
        Clock { fixed: Some(Arc::new(AtomicI64::new(at * 1000))), offset: Arc::default() }
    }

    pub fn advance(&self, secs: i64) {
        if let Some(t) = &self.fixed {
            t.fetch_add(secs * 1000, Ordering::SeqCst);
        }
    }

    /// Follows a reference clock that reads `reference_ms` now (a fixed clock ignores it):
    /// replicas on several hosts then agree on times they write for each other.
    pub fn set_reference_millis(&self, reference_ms: i64) {
        if self.fixed.is_none() {
            self.offset.store(reference_ms - system_millis(), Ordering::SeqCst);
        }
    }

    /// Milliseconds this clock is ahead of this host's.
    pub fn offset_millis(&self) -> i64 {
        self.offset.load(Ordering::SeqCst)
    }

    pub fn now_millis(&self) -> i64 {
        match &self.fixed {
            Some(t) => t.load(Ordering::SeqCst),
            None => system_millis() + self.offset.load(Ordering::Relaxed),
        }
    }

    pub fn now(&self) -> Timestamp {
        self.now_millis().div_euclid(1000)
    }
}

/// The first and last second with a four-digit year (0001-01-01, 9999-12-31T23:59:59).
pub const EARLIEST: Timestamp = -62_135_596_800;
pub const LATEST: Timestamp = 253_402_300_799;

/// Formats unix seconds as RFC 3339 UTC (`2026-11-23T10:00:00Z`).
pub fn rfc3339(ts: Timestamp) -> String {
    let millis = rfc3339_millis(ts.clamp(EARLIEST, LATEST) * 1000);
    // Drop the ".000" added by the millisecond form.
    format!("{}Z", &millis[..19])
}

/// Formats unix milliseconds as RFC 3339 UTC with milliseconds.
pub fn rfc3339_millis(ms: i64) -> String {
    // Four-digit years only: anything outside prints as the nearest end of that range.
    let ms = ms.clamp(EARLIEST * 1000, LATEST * 1000 + 999);
    let secs = ms.div_euclid(1000);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, d) = civil_from_days(days);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z", rem / 3600, rem % 3600 / 60, rem % 60, ms.rem_euclid(1000))
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_system_clock_follows_its_reference_and_a_fixed_one_does_not() {
        let c = Clock::system();
        let shared = c.clone();
        c.set_reference_millis(system_millis() + 3_600_000);
        assert!((shared.now_millis() - system_millis() - 3_600_000).abs() < 1_000, "clones share the offset");
        let f = Clock::fixed(100);
        f.set_reference_millis(5);
        assert_eq!(f.now(), 100);
    }

    #[test]
    fn formats_known_instants() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_795_435_200), "2026-11-23T12:00:00Z");
        assert_eq!(rfc3339_millis(1_795_435_200_123), "2026-11-23T12:00:00.123Z");
        // Out of range: clamped, never garbled and never an overflow.
        assert_eq!(rfc3339(LATEST), "9999-12-31T23:59:59Z");
        assert_eq!(rfc3339(i64::MAX), "9999-12-31T23:59:59Z");
        assert_eq!(rfc3339(i64::MIN), "0001-01-01T00:00:00Z");
        assert_eq!(rfc3339_millis(i64::MAX), "9999-12-31T23:59:59.999Z");
    }

    #[test]
    fn fixed_clock_advances() {
        let c = Clock::fixed(100);
        c.advance(5);
        assert_eq!(c.now(), 105);
    }
}
