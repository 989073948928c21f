//! Master-key files: `keyfile::header` (read before any passphrase, with the production and
//! the test limits) and `keyfile::decode`. The input is a key file ([`FILE_LEN`] bytes; a
//! shorter or longer input is tried whole as well), then the passphrase.
//!
//! `decode` of a protected file runs argon2id with the parameters from the header, which
//! the limits bound; the production and test limits admit up to 1 GiB, far too slow to fuzz,
//! so `decode` runs under [`FUZZ_LIMITS`] (at most 256 KiB, 2 passes, 2 lanes). That the
//! real limits bound memory is checked on every header: whatever a header names, an
//! admitted one never exceeds the limits' maximum.
#![no_main]

use latchkey::crypto::keyfile::{decode, header, KdfLimits, KdfParams, Protection, FILE_LEN};
use libfuzzer_sys::fuzz_target;

const FUZZ_LIMITS: KdfLimits = KdfLimits { min: KdfParams::INSECURE_FOR_TESTS, max: KdfParams { m_cost_kib: 256, t_cost: 2, p_cost: 2 } };

fn within(p: &KdfParams, l: &KdfLimits) -> bool {
    (l.min.m_cost_kib..=l.max.m_cost_kib).contains(&p.m_cost_kib)
        && (l.min.t_cost..=l.max.t_cost).contains(&p.t_cost)
        && (l.min.p_cost..=l.max.p_cost).contains(&p.p_cost)
}

fuzz_target!(|data: &[u8]| {
    let (file, passphrase) = if data.len() >= FILE_LEN { data.split_at(FILE_LEN) } else { (data, &[][..]) };
    for limits in [KdfLimits::PRODUCTION, KdfLimits::TESTS, FUZZ_LIMITS] {
        for bytes in [file, data] {
            if let Ok(h) = header(bytes, &limits) {
                assert_eq!(bytes.len(), FILE_LEN);
                if let Protection::Passphrase(p) = h.protection {
                    assert!(within(&p, &limits), "a header outside the limits was admitted: {p:?}");
                    assert!(p.m_cost_kib <= 1024 * 1024, "more than 1 GiB admitted");
                }
            }
        }
    }
    let Ok(h) = header(file, &FUZZ_LIMITS) else { return };
    for pass in [Some(passphrase), None] {
        for version in [h.version, h.version.wrapping_add(1)] {
            if let Ok(key) = decode(file, version, pass, &FUZZ_LIMITS) {
                assert_eq!(key.version(), h.version);
                assert_eq!(version, h.version);
            }
        }
    }
});
