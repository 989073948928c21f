//! The query layer both backends share: every statement in `store` is written once, with
//! `?N` placeholders, and runs on an embedded SQLite connection or a PostgreSQL client.
//!
//! Types are kept to what both databases store the same way: 64-bit integers (flags are
//! 0/1 integers, never booleans), text and byte strings. A statement that differs per
//! backend is chosen with [`Conn::is_postgres`] next to its other form.

use std::cell::RefCell;
use std::collections::HashMap;
use std::error::Error as StdError;

use rusqlite::types::{ToSqlOutput, ValueRef};

use super::StoreError;

type Result<T> = std::result::Result<T, StoreError>;

/// A connection (or open transaction) of either backend.
#[derive(Clone, Copy)]
pub enum Db<'a> {
    Lite(&'a rusqlite::Connection),
    Pg(&'a PgConn),
}

/// A connection with the row-integrity key of its store: statements on sealed tables
/// verify and write MACs through it (see [`super::integrity`]).
#[derive(Clone, Copy)]
pub struct Conn<'a> {
    pub(super) db: Db<'a>,
    pub(super) sealer: &'a super::integrity::Sealer,
}

impl<'a> Conn<'a> {
    pub(super) fn new(db: Db<'a>, sealer: &'a super::integrity::Sealer) -> Self {
        Conn { db, sealer }
    }

    /// A connection that can read and write unsealed tables only (migrations, tests).
    pub(super) fn bare(db: Db<'a>) -> Self {
        Conn { db, sealer: super::integrity::Sealer::none() }
    }
}

/// An open connection of either backend, owned by a pool or the writer.
pub enum Owned {
    Lite(rusqlite::Connection),
    Pg(Box<PgConn>),
}

impl Owned {
    pub fn conn<'a>(&'a self, sealer: &'a super::integrity::Sealer) -> Conn<'a> {
        Conn::new(
            match self {
                Owned::Lite(c) => Db::Lite(c),
                Owned::Pg(c) => Db::Pg(c),
            },
            sealer,
        )
    }

    /// Whether the connection is lost and must be replaced.
    pub fn is_broken(&self) -> bool {
        match self {
            Owned::Lite(_) => false,
            Owned::Pg(c) => c.is_closed(),
        }
    }

    /// Opens a write transaction that holds the write lock, and in it the savepoint `write`
    /// for its first write (one round trip on PostgreSQL). The lock is SQLite's
    /// `BEGIN IMMEDIATE`; on PostgreSQL the `write_lock` row, which serialises the writers
    /// of every replica (and so the audit chain) without a lock order to get wrong.
    pub fn begin_write(&self) -> Result<()> {
        match self {
            Owned::Lite(c) => Ok(c.execute_batch("BEGIN IMMEDIATE; SAVEPOINT write")?),
            Owned::Pg(c) => c.batch("BEGIN; SELECT id FROM write_lock WHERE id = 1 FOR UPDATE; SAVEPOINT write"),
        }
    }
}

/// A PostgreSQL client with its prepared statements, keyed by the statement as written.
pub struct PgConn {
    /// Always `Some` until dropped.
    client: RefCell<Option<postgres::Client>>,
    statements: RefCell<HashMap<String, postgres::Statement>>,
    /// A call failed in a way that means the connection is gone (the driver notices a
    /// closed socket only when it next polls it).
    broken: std::cell::Cell<bool>,
}

impl PgConn {
    pub fn new(client: postgres::Client) -> Self {
        PgConn { client: RefCell::new(Some(client)), statements: RefCell::new(HashMap::new()), broken: std::cell::Cell::new(false) }
    }

    fn client(&self) -> Result<std::cell::RefMut<'_, postgres::Client>> {
        std::cell::RefMut::filter_map(self.client.borrow_mut(), Option::as_mut).map_err(|_| StoreError::Unavailable)
    }

    /// Whether the server closed the connection (it must then be replaced).
    pub fn is_closed(&self) -> bool {
        self.broken.get() || self.client.borrow().as_ref().is_none_or(postgres::Client::is_closed)
    }

    /// Converts a driver error, remembering when it means the connection is lost.
    fn checked<T>(&self, r: std::result::Result<T, postgres::Error>) -> Result<T> {
        r.map_err(|e| {
            let e = StoreError::from(e);
            if matches!(e, StoreError::Unavailable) {
                self.broken.set(true);
            }
            e
        })
    }

    fn statement(&self, sql: &str) -> Result<postgres::Statement> {
        if let Some(st) = self.statements.borrow().get(sql) {
            return Ok(st.clone());
        }
        let prepared = self.client()?.prepare(&dollar_placeholders(sql));
        let st = self.checked(prepared)?;
        self.statements.borrow_mut().insert(sql.to_owned(), st.clone());
        Ok(st)
    }

    pub(super) fn batch(&self, sql: &str) -> Result<()> {
        let r = self.client()?.batch_execute(sql);
        self.checked(r)
    }
}

impl Drop for PgConn {
    /// The driver blocks to close a connection, which it may not do on an async worker:
    /// there the close moves to a thread of its own.
    fn drop(&mut self) {
        if let Some(client) = self.client.get_mut().take() {
            if !super::may_block_here() {
                let _ = std::thread::Builder::new().name("latchkey-pg-close".into()).spawn(move || drop(client));
            }
        }
    }
}

/// `?N` → `$N`: the statements are written in SQLite's numbered form.
fn dollar_placeholders(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut chars = sql.chars().peekable();
    let mut in_string = false;
    while let Some(c) = chars.next() {
        if c == '\'' {
            in_string = !in_string;
        }
        if c == '?' && !in_string && chars.peek().is_some_and(char::is_ascii_digit) {
            out.push('$');
        } else {
            out.push(c);
        }
    }
    out
}

/// A bound parameter.
#[derive(Debug, Clone, Copy)]
pub enum P<'a> {
    Int(i64),
    Text(&'a str),
    Bytes(&'a [u8]),
    Null,
}

/// Values that bind as a [`P`].
pub trait ToP {
    fn to_p(&self) -> P<'_>;
}

macro_rules! int_to_p {
    ($($t:ty),*) => {$(
        impl ToP for $t {
            fn to_p(&self) -> P<'_> {
                // Every integer latchkey stores fits an i64 (counts, versions, times).
                P::Int(i64::try_from(*self).unwrap_or(i64::MAX))
            }
        }
    )*};
}
int_to_p!(i64, i32, u32, u64, usize);

impl ToP for bool {
    fn to_p(&self) -> P<'_> {
        P::Int(i64::from(*self))
    }
}
impl ToP for str {
    fn to_p(&self) -> P<'_> {
        P::Text(self)
    }
}
impl ToP for String {
    fn to_p(&self) -> P<'_> {
        P::Text(self)
    }
}
impl ToP for [u8] {
    fn to_p(&self) -> P<'_> {
        P::Bytes(self)
    }
}
impl ToP for Vec<u8> {
    fn to_p(&self) -> P<'_> {
        P::Bytes(self)
    }
}
impl<const N: usize> ToP for [u8; N] {
    fn to_p(&self) -> P<'_> {
        P::Bytes(self)
    }
}
impl<T: ToP + ?Sized> ToP for &T {
    fn to_p(&self) -> P<'_> {
        (**self).to_p()
    }
}
impl<T: ToP> ToP for Option<T> {
    fn to_p(&self) -> P<'_> {
        self.as_ref().map_or(P::Null, ToP::to_p)
    }
}

/// Parameters for a statement: `params![a, b]` binds `&a`, `&b`.
macro_rules! params {
    () => { &[] as &[$crate::store::sql::P<'_>] };
    ($($x:expr),+ $(,)?) => { &[$($crate::store::sql::ToP::to_p(&$x)),+] as &[$crate::store::sql::P<'_>] };
}
pub(crate) use params;

impl rusqlite::ToSql for P<'_> {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::Borrowed(match *self {
            P::Int(v) => ValueRef::Integer(v),
            P::Text(s) => ValueRef::Text(s.as_bytes()),
            P::Bytes(b) => ValueRef::Blob(b),
            P::Null => ValueRef::Null,
        }))
    }
}

impl postgres::types::ToSql for P<'_> {
    fn to_sql(
        &self,
        ty: &postgres::types::Type,
        out: &mut bytes::BytesMut,
    ) -> std::result::Result<postgres::types::IsNull, Box<dyn StdError + Sync + Send>> {
        use postgres::types::Type;
        match *self {
            P::Null => Ok(postgres::types::IsNull::Yes),
            P::Int(v) => match *ty {
                Type::INT8 => v.to_sql(ty, out),
                Type::INT4 => i32::try_from(v)?.to_sql(ty, out),
                Type::INT2 => i16::try_from(v)?.to_sql(ty, out),
                Type::BOOL => (v != 0).to_sql(ty, out),
                _ => Err(format!("an integer cannot bind to a {ty} parameter").into()),
            },
            P::Text(s) => s.to_sql(ty, out),
            P::Bytes(b) => b.to_sql(ty, out),
        }
    }

    fn accepts(_: &postgres::types::Type) -> bool {
        true
    }

    postgres::types::to_sql_checked!();
}

fn pg_params<'p>(params: &'p [P<'p>]) -> Vec<&'p (dyn postgres::types::ToSql + Sync)> {
    params.iter().map(|p| p as &(dyn postgres::types::ToSql + Sync)).collect()
}

/// A result row of either backend.
pub enum Row<'a> {
    Lite(&'a rusqlite::Row<'a>),
    Pg(&'a postgres::Row),
}

impl Row<'_> {
    /// Column `i` as `T`; NULL only into an `Option`.
    pub fn get<T: FromCol>(&self, i: usize) -> Result<T> {
        T::from_col(self, i)
    }

    /// Appends column `i` to `out` in one encoding for both backends (a type tag, then the
    /// value; text and bytes length-prefixed): what row MACs cover.
    pub fn encode(&self, i: usize, out: &mut Vec<u8>) -> Result<()> {
        fn int(out: &mut Vec<u8>, n: i64) {
            out.push(1);
            out.extend_from_slice(&n.to_be_bytes());
        }
        fn bytes(out: &mut Vec<u8>, tag: u8, b: &[u8]) {
            out.push(tag);
            out.extend_from_slice(&(b.len() as u64).to_be_bytes());
            out.extend_from_slice(b);
        }
        match self {
            Row::Lite(r) => match r.get_ref(i)? {
                ValueRef::Null => out.push(0),
                ValueRef::Integer(n) => int(out, n),
                ValueRef::Text(t) => bytes(out, 2, t),
                ValueRef::Blob(b) => bytes(out, 3, b),
                ValueRef::Real(_) => return Err(StoreError::Corrupt(format!("column {i}: unexpected real number"))),
            },
            Row::Pg(r) => {
                use postgres::types::Type;
                let ty = r.columns().get(i).map(|c| c.type_().clone());
                match ty {
                    Some(Type::INT8 | Type::INT4 | Type::INT2) => match pg_int(r, i)? {
                        Some(n) => int(out, n),
                        None => out.push(0),
                    },
                    Some(Type::BOOL) => match r.try_get::<_, Option<bool>>(i)? {
                        Some(b) => int(out, i64::from(b)),
                        None => out.push(0),
                    },
                    Some(Type::TEXT | Type::VARCHAR) => match r.try_get::<_, Option<&str>>(i)? {
                        Some(t) => bytes(out, 2, t.as_bytes()),
                        None => out.push(0),
                    },
                    Some(Type::BYTEA) => match r.try_get::<_, Option<&[u8]>>(i)? {
                        Some(b) => bytes(out, 3, b),
                        None => out.push(0),
                    },
                    other => return Err(StoreError::Corrupt(format!("column {i}: unexpected type {other:?}"))),
                }
            }
        }
        Ok(())
    }
}

/// Reads column `i` as text and parses it (a state or kind enum): an unknown value is an
/// error, never a default.
pub fn parsed<T>(r: &Row<'_>, i: usize) -> Result<T>
where
    T: std::str::FromStr,
    T::Err: std::fmt::Display,
{
    let text: String = r.get(i)?;
    text.parse().map_err(|e| StoreError::Corrupt(format!("column {i}: {e}")))
}

/// A column type both backends store alike.
pub trait FromCol: Sized {
    fn from_col(row: &Row<'_>, i: usize) -> Result<Self>;
}

/// A non-NULL column value, or `None` for NULL.
trait Col: Sized {
    fn lite(v: ValueRef<'_>) -> Option<std::result::Result<Self, String>>;
    fn pg(r: &postgres::Row, i: usize) -> std::result::Result<Option<Self>, postgres::Error>;
}

fn lite_int(v: ValueRef<'_>) -> Option<std::result::Result<i64, String>> {
    match v {
        ValueRef::Null => None,
        ValueRef::Integer(n) => Some(Ok(n)),
        other => Some(Err(format!("expected an integer, found {}", other.data_type()))),
    }
}

/// An integer column of any width (`SELECT 1` is an `int4`).
fn pg_int(r: &postgres::Row, i: usize) -> std::result::Result<Option<i64>, postgres::Error> {
    use postgres::types::Type;
    match r.columns().get(i).map(|c| c.type_().clone()) {
        Some(Type::INT4) => Ok(r.try_get::<_, Option<i32>>(i)?.map(i64::from)),
        Some(Type::INT2) => Ok(r.try_get::<_, Option<i16>>(i)?.map(i64::from)),
        _ => r.try_get(i),
    }
}

impl Col for i64 {
    fn lite(v: ValueRef<'_>) -> Option<std::result::Result<Self, String>> {
        lite_int(v)
    }
    fn pg(r: &postgres::Row, i: usize) -> std::result::Result<Option<Self>, postgres::Error> {
        pg_int(r, i)
    }
}
impl Col for u32 {
    fn lite(v: ValueRef<'_>) -> Option<std::result::Result<Self, String>> {
        lite_int(v).map(|n| n.and_then(|n| u32::try_from(n).map_err(|e| e.to_string())))
    }
    fn pg(r: &postgres::Row, i: usize) -> std::result::Result<Option<Self>, postgres::Error> {
        // Out of range is a corrupt row; report it as a NULL where none may be.
        Ok(pg_int(r, i)?.and_then(|n| u32::try_from(n).ok()))
    }
}
impl Col for bool {
    fn lite(v: ValueRef<'_>) -> Option<std::result::Result<Self, String>> {
        lite_int(v).map(|n| n.map(|n| n != 0))
    }
    fn pg(r: &postgres::Row, i: usize) -> std::result::Result<Option<Self>, postgres::Error> {
        // A stored flag is an integer; an expression (`x IS NOT NULL`) is a boolean.
        if r.columns().get(i).is_some_and(|c| *c.type_() == postgres::types::Type::BOOL) {
            return r.try_get(i);
        }
        Ok(pg_int(r, i)?.map(|n| n != 0))
    }
}
impl Col for String {
    fn lite(v: ValueRef<'_>) -> Option<std::result::Result<Self, String>> {
        match v {
            ValueRef::Null => None,
            ValueRef::Text(t) => Some(String::from_utf8(t.to_vec()).map_err(|_| "text is not UTF-8".to_owned())),
            other => Some(Err(format!("expected text, found {}", other.data_type()))),
        }
    }
    fn pg(r: &postgres::Row, i: usize) -> std::result::Result<Option<Self>, postgres::Error> {
        r.try_get(i)
    }
}
impl Col for Vec<u8> {
    fn lite(v: ValueRef<'_>) -> Option<std::result::Result<Self, String>> {
        match v {
            ValueRef::Null => None,
            ValueRef::Blob(b) | ValueRef::Text(b) => Some(Ok(b.to_vec())),
            other => Some(Err(format!("expected bytes, found {}", other.data_type()))),
        }
    }
    fn pg(r: &postgres::Row, i: usize) -> std::result::Result<Option<Self>, postgres::Error> {
        r.try_get(i)
    }
}

fn column<T: Col>(row: &Row<'_>, i: usize) -> Result<Option<T>> {
    match row {
        Row::Lite(r) => match T::lite(r.get_ref(i)?) {
            None => Ok(None),
            Some(Ok(v)) => Ok(Some(v)),
            Some(Err(e)) => Err(StoreError::Corrupt(format!("column {i}: {e}"))),
        },
        Row::Pg(r) => Ok(T::pg(r, i)?),
    }
}

macro_rules! from_col {
    ($($t:ty),*) => {$(
        impl FromCol for $t {
            fn from_col(row: &Row<'_>, i: usize) -> Result<Self> {
                column(row, i)?.ok_or_else(|| StoreError::Corrupt(format!("column {i} is NULL")))
            }
        }
        impl FromCol for Option<$t> {
            fn from_col(row: &Row<'_>, i: usize) -> Result<Self> {
                column(row, i)
            }
        }
    )*};
}
from_col!(i64, u32, bool, String, Vec<u8>);

impl Conn<'_> {
    pub fn is_postgres(&self) -> bool {
        matches!(self.db, Db::Pg(_))
    }

    /// Runs a statement; returns the number of rows it changed.
    pub fn execute(&self, sql: &str, params: &[P<'_>]) -> Result<usize> {
        match self.db {
            Db::Lite(c) => Ok(c.prepare_cached(sql)?.execute(rusqlite::params_from_iter(params.iter()))?),
            Db::Pg(c) => {
                let st = c.statement(sql)?;
                let n = c.client()?.execute(&st, &pg_params(params));
                let n = c.checked(n)?;
                Ok(usize::try_from(n).unwrap_or(usize::MAX))
            }
        }
    }

    /// The first row, mapped; `None` if there is none.
    pub fn query_opt<T>(&self, sql: &str, params: &[P<'_>], f: impl FnOnce(&Row<'_>) -> Result<T>) -> Result<Option<T>> {
        match self.db {
            Db::Lite(c) => {
                let mut st = c.prepare_cached(sql)?;
                let mut rows = st.query(rusqlite::params_from_iter(params.iter()))?;
                match rows.next()? {
                    Some(r) => f(&Row::Lite(r)).map(Some),
                    None => Ok(None),
                }
            }
            Db::Pg(c) => {
                let st = c.statement(sql)?;
                let row = c.client()?.query_opt(&st, &pg_params(params));
                let row = c.checked(row)?;
                row.map(|r| f(&Row::Pg(&r))).transpose()
            }
        }
    }

    /// The one row a statement must return, mapped.
    pub fn query_one<T>(&self, sql: &str, params: &[P<'_>], f: impl FnOnce(&Row<'_>) -> Result<T>) -> Result<T> {
        self.query_opt(sql, params, f)?.ok_or_else(|| StoreError::Corrupt("a statement that must return a row returned none".into()))
    }

    /// Every row, mapped.
    pub fn query_all<T>(&self, sql: &str, params: &[P<'_>], mut f: impl FnMut(&Row<'_>) -> Result<T>) -> Result<Vec<T>> {
        match self.db {
            Db::Lite(c) => {
                let mut st = c.prepare_cached(sql)?;
                let mut rows = st.query(rusqlite::params_from_iter(params.iter()))?;
                let mut out = Vec::new();
                while let Some(r) = rows.next()? {
                    out.push(f(&Row::Lite(r))?);
                }
                Ok(out)
            }
            Db::Pg(c) => {
                let st = c.statement(sql)?;
                let rows = c.client()?.query(&st, &pg_params(params));
                let rows = c.checked(rows)?;
                rows.iter().map(|r| f(&Row::Pg(r))).collect()
            }
        }
    }

    /// Runs statements without parameters (schema changes, transaction control).
    pub fn batch(&self, sql: &str) -> Result<()> {
        match self.db {
            Db::Lite(c) => Ok(c.execute_batch(sql)?),
            Db::Pg(c) => c.batch(sql),
        }
    }
}

/// Whether `e` is a uniqueness or other constraint violation (a concurrent insert of the
/// same key, for example).
pub fn is_constraint(e: &StoreError) -> bool {
    match e {
        StoreError::Sqlite(rusqlite::Error::SqliteFailure(f, _)) => f.code == rusqlite::ErrorCode::ConstraintViolation,
        StoreError::Postgres(e) => e.code().is_some_and(|c| c.code().starts_with("23")),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_numbered_for_postgres_outside_strings() {
        assert_eq!(
            dollar_placeholders("SELECT a FROM t WHERE x = ?1 AND y = '?2' AND z IN (?2, ?10)"),
            "SELECT a FROM t WHERE x = $1 AND y = '?2' AND z IN ($2, $10)"
        );
    }

    #[test]
    fn sqlite_values_round_trip_and_null_only_into_option() {
        let c = rusqlite::Connection::open_in_memory().unwrap();
        let c = Conn::bare(Db::Lite(&c));
        c.batch("CREATE TABLE t (i INTEGER, s TEXT, b BLOB, n INTEGER)").unwrap();
        c.execute("INSERT INTO t VALUES (?1, ?2, ?3, ?4)", params![7i64, "x", [1u8, 2], None::<i64>]).unwrap();
        let (i, s, b, n): (i64, String, Vec<u8>, Option<i64>) =
            c.query_one("SELECT i, s, b, n FROM t", params![], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))).unwrap();
        assert_eq!((i, s.as_str(), b, n), (7, "x", vec![1, 2], None));
        assert!(c.query_one("SELECT n FROM t", params![], |r| r.get::<i64>(0)).is_err());
        assert!(c.query_one("SELECT s FROM t", params![], |r| r.get::<i64>(0)).is_err(), "no silent conversion");
        assert!(c.query_opt("SELECT i FROM t WHERE i = ?1", params![8i64], |r| r.get::<i64>(0)).unwrap().is_none());
    }
}
