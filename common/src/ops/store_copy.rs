//! `store copy`: everything from one store into an empty one (SQLite to
//! PostgreSQL and back), checked by counting.
use crate::error::Result;
use crate::store::Store;

/// What a copy moved: rows per table in the source and in the copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Copied {
    /// Rows per table in the source.
    pub from: Vec<(&'static str, usize)>,
    /// Rows per table in the copy, read back inside its transaction before
    /// it committed.
    pub to: Vec<(&'static str, usize)>,
}

/// Copy every row of `from` (one consistent read) into `to`, which must
/// hold no user and no audit row, in one transaction that commits only if
/// the copy then holds as many rows of each table as the source: all or
/// nothing, and on a mismatch `to` stays empty for another try.
pub fn copy_store(from: &mut dyn Store, to: &mut dyn Store) -> Result<Copied> {
    let snapshot = from.snapshot()?;
    let counts = to.load_snapshot(&snapshot)?;
    Ok(Copied {
        from: snapshot.counts(),
        to: counts,
    })
}
