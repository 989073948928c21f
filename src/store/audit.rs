//! Audit statements. Appends run inside the caller's write transaction, so a change and
//! its audit record commit together (or not at all).

use super::sql::{params, Conn, Row, P};

use super::StoreError;
use crate::audit::{chain_hash, Event, Outcome, Query, Record, Verifier, GENESIS};

fn record(r: &Row<'_>) -> Result<Record, StoreError> {
    Ok(Record {
        seq: r.get(0)?,
        ts_ms: r.get(1)?,
        actor: r.get(2)?,
        action: r.get(3)?,
        target: r.get(4)?,
        outcome: r.get(5)?,
        detail: r.get(6)?,
        prev_hash: r.get(7)?,
        hash: r.get(8)?,
    })
}

const COLS: &str = "seq, ts_ms, actor, action, target, outcome, detail, prev_hash, hash";

/// Appends `event` at `ts_ms`; must run in a write transaction.
pub fn append(c: &Conn<'_>, event: &Event, ts_ms: i64) -> Result<i64, StoreError> {
    append_all(c, [(event, ts_ms)])?.pop().ok_or_else(|| StoreError::Corrupt("audit append wrote nothing".into()))
}

/// Appends events in order (one chain link each); must run in a write transaction.
/// Returns their sequence numbers.
pub fn append_all<'a>(c: &Conn<'_>, events: impl IntoIterator<Item = (&'a Event, i64)>) -> Result<Vec<i64>, StoreError> {
    let key = c.sealer.chain_key(c)?;
    let last: Option<(i64, Vec<u8>)> =
        c.query_opt("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1", params![], |r| Ok((r.get(0)?, r.get(1)?)))?;
    let head = last.unwrap_or_else(|| (0, GENESIS.to_vec()));
    Ok(append_after(c, key, head, events)?.into_iter().map(|(seq, _, _)| seq).collect())
}

/// [`append_all`], reading the chain head with everything the commit's checkpoint covers
/// (one statement, as cheap as the head alone on PostgreSQL: one round trip). Returns that
/// state as it is after the appends: valid for the checkpoint as long as nothing else is
/// written in the transaction after them, which saves the commit reading it again.
pub fn append_all_for_checkpoint<'a>(
    c: &Conn<'_>,
    events: impl IntoIterator<Item = (&'a Event, i64)>,
) -> Result<(Vec<i64>, super::checkpoint::State), StoreError> {
    let key = c.sealer.chain_key(c)?;
    let mut state = super::checkpoint::read_state(c)?;
    let appended = append_after(c, key, state.audit_head(), events)?;
    if let Some((seq, hash, ts_ms)) = appended.last() {
        state.appended(*seq, hash.clone(), *ts_ms);
    }
    Ok((appended.into_iter().map(|(seq, _, _)| seq).collect(), state))
}

/// Appends `events` after the record `(seq, hash)`; returns each record's sequence, hash and time.
fn append_after<'a>(
    c: &Conn<'_>,
    key: &crate::crypto::MacKey,
    (mut seq, mut prev): (i64, Vec<u8>),
    events: impl IntoIterator<Item = (&'a Event, i64)>,
) -> Result<Vec<(i64, Vec<u8>, i64)>, StoreError> {
    // The transaction commits with a checkpoint that covers these records.
    c.sealer.mark_audit();
    // Linked first, then written in multi-row statements: a batch of releases costs a few
    // statements, not one each (a round trip each on PostgreSQL).
    let mut links = Vec::new();
    for (event, ts_ms) in events {
        seq += 1;
        let hash = chain_hash(key, seq, ts_ms, &event.actor, event.action, &event.target, event.outcome.as_str(), &event.detail, &prev);
        let link_prev = std::mem::replace(&mut prev, hash.to_vec());
        links.push((seq, ts_ms, event, link_prev, hash));
    }
    for chunk in links.chunks(INSERT_ROWS) {
        let mut values = Vec::with_capacity(chunk.len() * COL_COUNT);
        for (seq, ts_ms, event, prev, hash) in chunk {
            values.extend([
                P::Int(*seq),
                P::Int(*ts_ms),
                P::Text(&event.actor),
                P::Text(event.action),
                P::Text(&event.target),
                P::Text(event.outcome.as_str()),
                P::Text(&event.detail),
                P::Bytes(prev),
                P::Bytes(hash.as_slice()),
            ]);
        }
        c.execute(&insert_sql(chunk.len()), &values)?;
    }
    Ok(links.into_iter().map(|(seq, ts_ms, _, _, hash)| (seq, hash.to_vec(), ts_ms)).collect())
}

const COL_COUNT: usize = 9;
/// Rows per INSERT statement (each row count is one prepared statement per connection).
const INSERT_ROWS: usize = 32;

/// `INSERT INTO audit (…) VALUES (?1, …, ?9), (?10, …), …` for `rows` rows, built once.
fn insert_sql(rows: usize) -> std::sync::Arc<str> {
    static BUILT: std::sync::OnceLock<Vec<std::sync::Arc<str>>> = std::sync::OnceLock::new();
    let built = BUILT.get_or_init(|| {
        (0..=INSERT_ROWS)
            .map(|n| {
                let rows: Vec<String> = (0..n)
                    .map(|r| {
                        let cols: Vec<String> = (1..=COL_COUNT).map(|c| format!("?{}", r * COL_COUNT + c)).collect();
                        format!("({})", cols.join(", "))
                    })
                    .collect();
                format!("INSERT INTO audit ({COLS}) VALUES {}", rows.join(", ")).into()
            })
            .collect()
    });
    built[rows.min(INSERT_ROWS)].clone()
}

/// Records with seq > `after`, ascending.
pub fn page(c: &Conn<'_>, after: i64, limit: usize) -> Result<Vec<Record>, StoreError> {
    let rows =
        c.query_all(&format!("SELECT {COLS} FROM audit WHERE seq > ?1 ORDER BY seq LIMIT ?2"), params![after, limit as i64], record)?;
    Ok(rows)
}

/// The last `n` records, ascending.
pub fn tail(c: &Conn<'_>, n: usize) -> Result<Vec<Record>, StoreError> {
    let mut rows: Vec<Record> = c.query_all(&format!("SELECT {COLS} FROM audit ORDER BY seq DESC LIMIT ?1"), params![n as i64], record)?;
    rows.reverse();
    Ok(rows)
}

/// Records matching `q`, ascending by sequence.
pub fn query(c: &Conn<'_>, q: &Query) -> Result<Vec<Record>, StoreError> {
    // Releases have target "<connection>/<owner>"; admin changes "<connection>" or
    // "<connection>/<owner>" as well, so both filters work on either.
    let rows = c.query_all(
        &format!(
            "SELECT {COLS} FROM audit WHERE seq > ?1 \
         AND (CAST(?2 AS TEXT) IS NULL OR target = CAST(?2 AS TEXT) OR substr(target, 1, length(CAST(?2 AS TEXT)) + 1) = CAST(?2 AS TEXT) || '/') \
         AND (CAST(?3 AS TEXT) IS NULL OR actor = 'agent:' || CAST(?3 AS TEXT)) \
         AND (CAST(?4 AS TEXT) IS NULL OR substr(target, length(target) - length(CAST(?4 AS TEXT))) = '/' || CAST(?4 AS TEXT)) \
         AND (CAST(?5 AS TEXT) IS NULL OR outcome = CAST(?5 AS TEXT)) \
         ORDER BY seq LIMIT ?6"
        ),
        params![q.after, q.connection, q.agent, q.owner, q.outcome.map(Outcome::as_str), q.limit as i64],
        record,
    )?;
    Ok(rows)
}

/// The last record's sequence number and hash (0 and the genesis hash when empty).
pub fn head(c: &Conn<'_>) -> Result<(i64, Vec<u8>), StoreError> {
    let last = c.query_opt("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1", params![], |r| Ok((r.get(0)?, r.get(1)?)))?;
    Ok(last.unwrap_or_else(|| (0, GENESIS.to_vec())))
}

/// The hash of record `seq`, if it exists.
pub fn hash_at(c: &Conn<'_>, seq: i64) -> Result<Option<Vec<u8>>, StoreError> {
    c.query_opt("SELECT hash FROM audit WHERE seq = ?1", params![seq], |r| r.get(0))
}

/// Chains a trail written with the unkeyed hash of older versions again with the key
/// (once, when a database is first sealed): the old chain must verify first.
pub fn rechain(c: &Conn<'_>) -> Result<u64, StoreError> {
    let key = c.sealer.chain_key(c)?;
    let mut legacy = Verifier::legacy();
    let mut prev = GENESIS.to_vec();
    let mut after = 0;
    loop {
        let rows = page(c, after, 1000)?;
        let Some(last) = rows.last() else { break };
        after = last.seq;
        for r in &rows {
            legacy.check(r).map_err(|b| {
                StoreError::Corrupt(format!(
                    "the audit trail is broken at record {} ({}); it cannot be chained with the key: inspect it with the previous latchkey version",
                    b.seq, b.reason
                ))
            })?;
            let hash = chain_hash(key, r.seq, r.ts_ms, &r.actor, &r.action, &r.target, &r.outcome, &r.detail, &prev);
            c.execute("UPDATE audit SET prev_hash = ?2, hash = ?3 WHERE seq = ?1", params![r.seq, prev, hash])?;
            prev = hash.to_vec();
        }
    }
    Ok(legacy.checked)
}
