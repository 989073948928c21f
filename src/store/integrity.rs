//! Row integrity: the rows that grant access or say where secrets go are sealed with a
//! MAC, so that a database writer can neither forge nor alter them unnoticed.
//!
//! - **A row's MAC** (HMAC-SHA256 under the long-lived `row_mac` vault key) covers its
//!   table, its row version and every column listed for the table below, in one encoding
//!   for both backends ([`super::sql::Row::encode`]). Rows cannot be swapped (the key
//!   column is covered) or edited; an old version carries an older row version.
//! - **Row versions** come from one counter in `integrity_state` that only grows, bumped by
//!   every sealed write, so every write is ordered and a row can never carry a version the
//!   state has not reached.
//! - **The digest** in `integrity_state` is the XOR of the MACs of every sealed row: a
//!   deleted row, a re-inserted one (a revoked admin token brought back) or an old version
//!   of a row (an agent as it was before it was disabled) changes it. Checking it takes a
//!   scan ([`verify_all`]: at start, by `keys verify` and periodically); each read checks
//!   its own row's MAC.
//! - **The state row** is MACed too and records the configuration generation of the last
//!   sealed write: the generation going back is a violation. A consistent rollback of the
//!   whole state to an earlier point is what checkpoints outside the database catch.
//!
//! Every statement that changes a sealed row verifies the row first ([`check`]: a forged
//! row is never re-sealed) and seals it after ([`seal`]), in the same transaction.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};

use zeroize::Zeroizing;

use super::sql::{params, Conn, Row};
use super::StoreError;
use crate::crypto::{ct_eq, CheckpointSigner, MacKey, KEY_LEN};

type Result<T> = std::result::Result<T, StoreError>;

/// The vault key (see `vault_keys`) that seals rows.
pub const ROW_KEY_PURPOSE: &str = "row_mac";
/// The vault key of the audit trail's keyed hash chain.
pub const AUDIT_CHAIN_PURPOSE: &str = "audit_chain";
/// The vault key that is the seed of the audit checkpoints' Ed25519 key.
pub const AUDIT_SIGNING_PURPOSE: &str = "audit_signing";

/// Opens a sealed vault key for a purpose (the vault holds the master keys).
pub type Loader = Box<dyn Fn(&str, &super::rows::SealedSecret) -> Result<Zeroizing<[u8; KEY_LEN]>> + Send + Sync>;

/// A sealed table: its name, the alias its statements use, and the columns its MAC
/// covers (the first is the row's key).
pub struct Table {
    pub name: &'static str,
    /// Position in [`TABLES`] (and of the table's digest in the state).
    index: usize,
    alias: &'static str,
    cols: &'static [&'static str],
    /// The key is a bearer secret (a connect link's id): never named in messages.
    secret_key: bool,
    select: OnceLock<String>,
}

impl Table {
    const fn new(index: usize, name: &'static str, alias: &'static str, cols: &'static [&'static str], secret_key: bool) -> Self {
        Table { index, name, alias, cols, secret_key, select: OnceLock::new() }
    }

    /// `a.row_version, a.mac, a.<col>, …`: append to a statement's columns and pass the
    /// offset to [`verify`].
    pub fn columns(&self) -> &str {
        self.select.get_or_init(|| {
            let mut parts = vec![format!("{}.row_version", self.alias), format!("{}.mac", self.alias)];
            parts.extend(self.cols.iter().map(|c| format!("{}.{c}", self.alias)));
            parts.join(", ")
        })
    }

    fn key_col(&self) -> &'static str {
        self.cols[0]
    }

    fn describe(&self, r: &Row<'_>, at: usize) -> String {
        if self.secret_key {
            return format!("a {} row", self.name);
        }
        match r.get::<String>(at + 2) {
            Ok(key) => format!("{} row '{key}'", self.name),
            Err(_) => format!("a {} row", self.name),
        }
    }
}

pub static ADMIN_TOKENS: Table =
    Table::new(0, "admin_tokens", "a", &["id", "secret_hash", "label", "created_at", "created_by", "revoked_at"], false);
pub static AGENTS: Table = Table::new(
    1,
    "agents",
    "a",
    &["id", "name", "secret_hash", "policy", "disabled", "generation", "token_epoch", "created_at", "updated_at"],
    false,
);
pub static ISSUERS: Table = Table::new(
    2,
    "issuers",
    "i",
    &[
        "issuer",
        "subject_prefix",
        "display_name",
        "jwks_uri",
        "jwks",
        "audience",
        "tenant_claim",
        "roles_claim",
        "proof_client_id",
        "proof_dek_id",
        "created_at",
    ],
    false,
);
pub static CONNECTIONS: Table =
    Table::new(3, "connections", "c", &["id", "kind", "spec", "secret_version", "dek_id", "created_at", "updated_at"], false);
pub static CREDENTIALS: Table = Table::new(
    4,
    "credentials",
    "k",
    &[
        "id",
        "connection_id",
        "owner",
        "kind",
        "status",
        "secret_version",
        "dek_id",
        "token_type",
        "scopes",
        "scopes_known",
        "expires_at",
        "instance_url",
        "account_iss",
        "account_sub",
        "created_at",
    ],
    false,
);
pub static SIGNING_KEYS: Table = Table::new(5, "signing_keys", "s", &["kid", "alg", "public_key", "dek_id", "state", "created_at"], false);
pub static CONNECT_SESSIONS: Table = Table::new(
    6,
    "connect_sessions",
    "s",
    &[
        "id",
        "connection_id",
        "owner",
        "return_to",
        "created_by",
        "created_at",
        "expires_at",
        "state_hash",
        "dek_id",
        "opened_at",
        "finished_at",
        "proof_issuer",
        "proof_role",
        "binding_hash",
        "proof_state_hash",
        "nonce_hash",
        "proven_at",
    ],
    true,
);

/// Every sealed table.
pub static TABLES: [&Table; 7] = [&ADMIN_TOKENS, &AGENTS, &ISSUERS, &CONNECTIONS, &CREDENTIALS, &SIGNING_KEYS, &CONNECT_SESSIONS];

/// The row key of a store, and the violations its statements found (for the audit trail
/// and the metric).
pub struct Sealer {
    key: OnceLock<MacKey>,
    chain: OnceLock<MacKey>,
    signer: OnceLock<CheckpointSigner>,
    loader: OnceLock<Loader>,
    /// Where checkpoints go after their transaction commits.
    sink: OnceLock<super::checkpoint::Sink>,
    /// Audit records were appended since the last checkpoint.
    audit_dirty: std::sync::atomic::AtomicBool,
    violations: Mutex<Vec<String>>,
    count: AtomicU64,
}

impl Default for Sealer {
    fn default() -> Self {
        Self::empty()
    }
}

/// Violations kept until the vault records them (a flood keeps the count, not every message).
const MAX_PENDING: usize = 64;

impl Sealer {
    const fn empty() -> Self {
        Sealer {
            key: OnceLock::new(),
            chain: OnceLock::new(),
            signer: OnceLock::new(),
            loader: OnceLock::new(),
            sink: OnceLock::new(),
            audit_dirty: std::sync::atomic::AtomicBool::new(false),
            violations: Mutex::new(Vec::new()),
            count: AtomicU64::new(0),
        }
    }

    /// A sealer without a key, for connections that never touch sealed rows.
    pub fn none() -> &'static Sealer {
        static NONE: Sealer = Sealer::empty();
        &NONE
    }

    /// How the key is opened when first needed.
    pub fn set_loader(&self, loader: Loader) {
        let _ = self.loader.set(loader);
    }

    /// Installs the keys (created by the caller in the current transaction).
    pub fn set_keys(&self, row: MacKey, chain: MacKey, signer: CheckpointSigner) {
        let _ = self.key.set(row);
        let _ = self.chain.set(chain);
        let _ = self.signer.set(signer);
    }

    /// Where checkpoints are written (once, at start).
    pub fn set_sink(&self, sink: super::checkpoint::Sink) {
        let _ = self.sink.set(sink);
    }

    pub fn sink(&self) -> Option<&super::checkpoint::Sink> {
        self.sink.get()
    }

    pub(super) fn mark_audit(&self) {
        self.audit_dirty.store(true, Ordering::Relaxed);
    }

    pub(super) fn take_audit_dirty(&self) -> bool {
        self.audit_dirty.swap(false, Ordering::Relaxed)
    }

    fn load(&self, c: &Conn<'_>, purpose: &str) -> Result<Zeroizing<[u8; KEY_LEN]>> {
        let sealed = super::rows::get_vault_key(c, purpose)?
            .ok_or_else(|| self.violation(format!("the vault key '{purpose}' is missing from the database")))?;
        let loader = self.loader.get().ok_or_else(|| StoreError::Io(format!("the vault key '{purpose}' cannot be opened here")))?;
        loader(purpose, &sealed)
    }

    fn key(&self, c: &Conn<'_>) -> Result<&MacKey> {
        if let Some(k) = self.key.get() {
            return Ok(k);
        }
        let _ = self.key.set(mac_key(self.load(c, ROW_KEY_PURPOSE)?)?);
        self.key.get().ok_or_else(|| StoreError::Io("the row integrity key cannot be opened here".into()))
    }

    /// The audit chain's key.
    pub fn chain_key(&self, c: &Conn<'_>) -> Result<&MacKey> {
        if let Some(k) = self.chain.get() {
            return Ok(k);
        }
        let _ = self.chain.set(mac_key(self.load(c, AUDIT_CHAIN_PURPOSE)?)?);
        self.chain.get().ok_or_else(|| StoreError::Io("the audit chain key cannot be opened here".into()))
    }

    /// The audit chain's key, if loaded.
    pub fn loaded_chain_key(&self) -> Option<&MacKey> {
        self.chain.get()
    }

    /// The audit checkpoints' signing key.
    pub fn signer(&self, c: &Conn<'_>) -> Result<&CheckpointSigner> {
        if let Some(k) = self.signer.get() {
            return Ok(k);
        }
        let seed = self.load(c, AUDIT_SIGNING_PURPOSE)?;
        let _ = self.signer.set(CheckpointSigner::from_seed(&seed));
        self.signer.get().ok_or_else(|| StoreError::Io("the audit signing key cannot be opened here".into()))
    }

    /// Records a violation (logged, counted, kept for the audit trail) and returns its error.
    pub fn violation(&self, what: String) -> StoreError {
        tracing::error!(violation = %what, "integrity violation: stored data was changed outside latchkey");
        self.count.fetch_add(1, Ordering::Relaxed);
        let mut pending = self.violations.lock().unwrap_or_else(|p| p.into_inner());
        if pending.len() < MAX_PENDING {
            pending.push(what.clone());
        }
        StoreError::Integrity(what)
    }

    /// Violations found since the last call (to audit).
    pub fn take_violations(&self) -> Vec<String> {
        std::mem::take(&mut *self.violations.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Violations found by this process.
    pub fn violation_count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }
}

fn mac_key(bytes: Zeroizing<[u8; KEY_LEN]>) -> Result<MacKey> {
    MacKey::new(bytes).map_err(|e| StoreError::Io(format!("cannot use a MAC key: {e}")))
}

/// What a row's MAC covers.
fn body(t: &Table, version: i64, r: &Row<'_>, at: usize) -> Result<Vec<u8>> {
    let mut buf = Vec::with_capacity(256);
    buf.extend_from_slice(b"latchkey/row/v1\0");
    buf.extend_from_slice(t.name.as_bytes());
    buf.push(0);
    buf.extend_from_slice(&version.to_be_bytes());
    for i in 0..t.cols.len() {
        r.encode(at + 2 + i, &mut buf)?;
    }
    Ok(buf)
}

/// The row's MAC if it matches; `None` if it does not (or has none).
fn checked_mac(key: &MacKey, t: &Table, r: &Row<'_>, at: usize) -> Result<Option<Vec<u8>>> {
    let version: i64 = r.get(at)?;
    let stored: Option<Vec<u8>> = r.get(at + 1)?;
    let expected = key.mac(&body(t, version, r, at)?);
    Ok(stored.filter(|m| ct_eq(m, &expected)))
}

/// Verifies the sealed columns of `t` read at `at` (see [`Table::columns`]).
pub fn verify(c: &Conn<'_>, t: &Table, r: &Row<'_>, at: usize) -> Result<()> {
    let key = c.sealer.key(c)?;
    match checked_mac(key, t, r, at)? {
        Some(_) => Ok(()),
        None => Err(c.sealer.violation(format!("{} does not match its MAC", t.describe(r, at)))),
    }
}

/// [`verify`] without a connection, with the key already loaded: `Ok(false)` when it is not
/// (the caller reads again where it can be loaded).
pub fn verify_loaded(sealer: &Sealer, t: &Table, r: &Row<'_>, at: usize) -> Result<bool> {
    let Some(key) = sealer.key.get() else { return Ok(false) };
    match checked_mac(key, t, r, at)? {
        Some(_) => Ok(true),
        None => Err(sealer.violation(format!("{} does not match its MAC", t.describe(r, at)))),
    }
}

/// [`verify`] for a row of an outer join: absent (a NULL row version) is fine.
pub fn verify_present(c: &Conn<'_>, t: &Table, r: &Row<'_>, at: usize) -> Result<()> {
    if r.get::<Option<i64>>(at)?.is_none() {
        return Ok(());
    }
    verify(c, t, r, at)
}

/// A row verified before a change (or known to be new): what [`seal`] needs.
#[must_use]
pub struct Checked {
    old_mac: Option<Vec<u8>>,
}

impl Checked {
    /// For a row about to be inserted.
    pub fn new_row() -> Self {
        Checked { old_mac: None }
    }
}

/// Verifies the row of `t` keyed `key` before a statement changes it. (No row: nothing to
/// verify; the change will find none either.)
pub fn check(c: &Conn<'_>, t: &Table, key: &str) -> Result<Checked> {
    let k = c.sealer.key(c)?;
    let sql = format!("SELECT {} FROM {} {} WHERE {}.{} = ?1", t.columns(), t.name, t.alias, t.alias, t.key_col());
    let found = c.query_opt(&sql, params![key], |r| Ok((checked_mac(k, t, r, 0)?, t.describe(r, 0))))?;
    match found {
        None => Ok(Checked { old_mac: None }),
        Some((Some(mac), _)) => Ok(Checked { old_mac: Some(mac) }),
        Some((None, what)) => Err(c.sealer.violation(format!("{what} does not match its MAC"))),
    }
}

/// Seals the row of `t` keyed `key` as it is now, at the next row version. A row that no
/// longer exists is left alone.
pub fn seal(c: &Conn<'_>, t: &Table, key: &str, checked: Checked) -> Result<()> {
    let k = c.sealer.key(c)?;
    let mut st = state(c, k)?;
    let version = st.seq + 1;
    let sql = format!("SELECT {} FROM {} {} WHERE {}.{} = ?1", t.columns(), t.name, t.alias, t.alias, t.key_col());
    let Some(mac) = c.query_opt(&sql, params![key], |r| Ok(k.mac(&body(t, version, r, 0)?)))? else {
        return Ok(());
    };
    c.execute(&format!("UPDATE {} SET row_version = ?2, mac = ?3 WHERE {} = ?1", t.name, t.key_col()), params![key, version, mac])?;
    st.seq = version;
    st.toggle(t, checked.old_mac.as_deref());
    st.toggle(t, Some(&mac));
    write_state(c, k, &mut st)
}

/// The stored MAC of a row about to be deleted (a deletion needs no verification: it
/// takes the row out of the digest as it is).
pub fn before_delete(c: &Conn<'_>, t: &Table, key: &str) -> Result<Checked> {
    let old_mac = c
        .query_opt(&format!("SELECT mac FROM {} WHERE {} = ?1", t.name, t.key_col()), params![key], |r| r.get::<Option<Vec<u8>>>(0))?
        .flatten();
    Ok(Checked { old_mac })
}

/// After a row of `t` [`before_delete`] looked at is deleted: takes it out of the digest.
pub fn deleted(c: &Conn<'_>, t: &Table, checked: Checked) -> Result<()> {
    let Some(old) = checked.old_mac else { return Ok(()) };
    let k = c.sealer.key(c)?;
    let mut st = state(c, k)?;
    st.seq += 1;
    st.toggle(t, Some(&old));
    write_state(c, k, &mut st)
}

/// Deletes the row of `t` keyed `key` (if any) and takes it out of the digest; returns
/// whether it existed.
pub fn delete(c: &Conn<'_>, t: &Table, key: &str) -> Result<bool> {
    let checked = before_delete(c, t, key)?;
    let n = c.execute(&format!("DELETE FROM {} WHERE {} = ?1", t.name, t.key_col()), params![key])?;
    if n == 1 {
        deleted(c, t, checked)?;
    }
    Ok(n == 1)
}

struct State {
    seq: i64,
    /// One digest per table, in [`TABLES`] order.
    digest: [u8; 32 * TABLES.len()],
    generation: i64,
}

fn xor_into(digest: &mut [u8], mac: &[u8]) {
    for (d, m) in digest.iter_mut().zip(mac) {
        *d ^= m;
    }
}

impl State {
    fn toggle(&mut self, t: &Table, mac: Option<&[u8]>) {
        if let Some(mac) = mac {
            xor_into(self.table_digest_mut(t), mac);
        }
    }

    fn table_digest(&self, t: &Table) -> &[u8] {
        &self.digest[32 * t.index..32 * (t.index + 1)]
    }

    fn table_digest_mut(&mut self, t: &Table) -> &mut [u8] {
        &mut self.digest[32 * t.index..32 * (t.index + 1)]
    }

    fn mac(&self, k: &MacKey) -> [u8; 32] {
        let mut buf = Vec::with_capacity(64);
        buf.extend_from_slice(b"latchkey/integrity-state/v1\0");
        buf.extend_from_slice(&self.seq.to_be_bytes());
        buf.extend_from_slice(&self.generation.to_be_bytes());
        buf.extend_from_slice(&self.digest);
        k.mac(&buf)
    }
}

/// The integrity state as recorded: what checkpoints record and restarts compare.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Head {
    /// Sealed writes so far (the last row version handed out).
    pub seq: i64,
    /// The configuration generation at the last sealed write.
    pub generation: i64,
}

fn state(c: &Conn<'_>, k: &MacKey) -> Result<State> {
    let row = c.query_opt("SELECT seq, digest, generation, mac FROM integrity_state WHERE id = 1", params![], |r| state_row(c, k, r, 0))?;
    row.ok_or_else(|| c.sealer.violation("the integrity state row is missing".into()))
}

/// The state in columns `at..at + 4` of `r` (`seq, digest, generation, mac`), verified
/// against its MAC.
fn state_row(c: &Conn<'_>, k: &MacKey, r: &Row<'_>, at: usize) -> Result<State> {
    let (seq, digest, generation, mac): (i64, Vec<u8>, i64, Vec<u8>) = (r.get(at)?, r.get(at + 1)?, r.get(at + 2)?, r.get(at + 3)?);
    let digest: [u8; 32 * TABLES.len()] = digest.try_into().map_err(|_| c.sealer.violation("the integrity state is malformed".into()))?;
    let st = State { seq, digest, generation };
    if !ct_eq(&st.mac(k), &mac) {
        return Err(c.sealer.violation("the integrity state does not match its MAC".into()));
    }
    Ok(st)
}

/// The verified integrity state read by the caller's own statement, in columns
/// `at..at + 4` of `r` (`SELECT …, s.seq, s.digest, s.generation, s.mac FROM integrity_state s …`).
pub fn head_from_row(c: &Conn<'_>, r: &Row<'_>, at: usize) -> Result<Head> {
    let st = state_row(c, c.sealer.key(c)?, r, at)?;
    Ok(Head { seq: st.seq, generation: st.generation })
}

fn write_state(c: &Conn<'_>, k: &MacKey, st: &mut State) -> Result<()> {
    st.generation = st.generation.max(super::rows::config_generation(c)?);
    let mac = st.mac(k);
    c.execute(
        "UPDATE integrity_state SET seq = ?1, digest = ?2, generation = ?3, mac = ?4 WHERE id = 1",
        params![st.seq, st.digest, st.generation, mac],
    )?;
    Ok(())
}

/// The verified integrity state.
pub fn head(c: &Conn<'_>) -> Result<Head> {
    let k = c.sealer.key(c)?;
    let st = state(c, k)?;
    Ok(Head { seq: st.seq, generation: st.generation })
}

/// Whether rows have been sealed here (the state exists), and whether the row key does.
pub fn setup_status(c: &Conn<'_>) -> Result<(bool, bool)> {
    let state = c.query_opt("SELECT 1 FROM integrity_state WHERE id = 1", params![], |r| r.get::<i64>(0))?.is_some();
    let key = super::rows::get_vault_key(c, ROW_KEY_PURPOSE)?.is_some();
    Ok((state, key))
}

/// Seals every row of a database that has none sealed yet (the migration to row
/// integrity, or a new database): creates the state, then seals each row. Runs in the
/// caller's write transaction with the key installed.
pub fn seal_existing(c: &Conn<'_>) -> Result<u64> {
    let k = c.sealer.key(c)?;
    let st = State { seq: 0, digest: [0u8; 32 * TABLES.len()], generation: super::rows::config_generation(c)? };
    let mac = st.mac(k);
    c.execute(
        "INSERT INTO integrity_state (id, seq, digest, generation, mac) VALUES (1, ?1, ?2, ?3, ?4)",
        params![st.seq, st.digest, st.generation, mac],
    )?;
    let mut n = 0;
    for t in TABLES {
        let keys: Vec<String> = c.query_all(&format!("SELECT {} FROM {}", t.key_col(), t.name), params![], |r| r.get(0))?;
        for key in keys {
            seal(c, t, &key, Checked::new_row())?;
            n += 1;
        }
    }
    Ok(n)
}

/// What a full verification found.
#[derive(Debug, Default)]
pub struct Report {
    pub rows: u64,
    pub failures: Vec<String>,
    pub head: Option<Head>,
}

impl Report {
    fn fail(&mut self, c: &Conn<'_>, what: String) {
        c.sealer.violation(what.clone());
        self.failures.push(what);
    }
}

/// Verifies every sealed row, the digest of them all and the state (run in one snapshot).
/// Each failure is also recorded as a violation.
pub fn verify_all(c: &Conn<'_>) -> Result<Report> {
    let k = c.sealer.key(c)?;
    let mut report = Report::default();
    let st = match state(c, k) {
        Ok(st) => Some(st),
        Err(StoreError::Integrity(what)) => {
            report.failures.push(what);
            None
        }
        Err(e) => return Err(e),
    };
    for t in TABLES {
        let (rows, digest) = scan(c, k, t, st.as_ref().map_or(i64::MAX, |st| st.seq), &mut report)?;
        report.rows += rows;
        if st.as_ref().is_some_and(|st| !ct_eq(&digest, st.table_digest(t))) {
            report.fail(c, digest_mismatch(t));
        }
    }
    if let Some(st) = st {
        let generation = super::rows::config_generation(c)?;
        if generation < st.generation {
            report.fail(c, format!("the configuration generation went back (database {generation}, last written {})", st.generation));
        }
        report.head = Some(Head { seq: st.seq, generation: st.generation });
    }
    Ok(report)
}

fn digest_mismatch(t: &Table) -> String {
    format!("the {} rows are not the set latchkey last wrote: a row was deleted, re-inserted or replaced by an older version", t.name)
}

/// Every row of `t`: checks each MAC and version, returns the count and the XOR of the MACs.
fn scan(c: &Conn<'_>, k: &MacKey, t: &Table, max_seq: i64, report: &mut Report) -> Result<(u64, [u8; 32])> {
    let sql = format!("SELECT {} FROM {} {}", t.columns(), t.name, t.alias);
    // Row by row, keeping nothing but the digest (a table may hold millions of rows).
    let (mut digest, mut rows) = ([0u8; 32], 0u64);
    c.query_all(&sql, params![], |r| {
        rows += 1;
        match checked_mac(k, t, r, 0)? {
            Some(mac) => {
                xor_into(&mut digest, &mac);
                if r.get::<i64>(0)? > max_seq {
                    report.fail(c, format!("{} claims a row version latchkey never wrote", t.describe(r, 0)));
                }
            }
            None => report.fail(c, format!("{} does not match its MAC", t.describe(r, 0))),
        }
        Ok(())
    })?;
    Ok((rows, digest))
}

/// Verifies one (operator-sized) table as a whole against its digest: run it in a
/// snapshot ([`super::Store::snapshot`]) before trusting a row of it that grants access, so
/// that a deleted-then-restored or rolled-back row (a revoked admin token brought back) is
/// refused at once rather than at the next full check.
pub fn verify_table(c: &Conn<'_>, t: &Table) -> Result<()> {
    let k = c.sealer.key(c)?;
    let st = state(c, k)?;
    let mut report = Report::default();
    let (_, digest) = scan(c, k, t, st.seq, &mut report)?;
    if let Some(first) = report.failures.into_iter().next() {
        return Err(StoreError::Integrity(first));
    }
    if !ct_eq(&digest, st.table_digest(t)) {
        return Err(c.sealer.violation(digest_mismatch(t)));
    }
    Ok(())
}
