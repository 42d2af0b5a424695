//! `store copy`: everything from one store into an empty one (SQLite to
//! PostgreSQL and back), checked by counting.
use crate::error::{Error, Result};
use crate::store::Store;

/// What a copy moved: rows per table in the source and in the copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Copied {
    /// Rows per table in the source.
    pub from: Vec<(&'static str, usize)>,
    /// Rows per table in the copy, read back after it committed.
    pub to: Vec<(&'static str, usize)>,
}

/// Copy every row of `from` (one consistent read) into `to`, which must
/// hold no user and no audit row (one transaction: all or nothing), and
/// check that the copy holds as many rows of each table.
pub fn copy_store(from: &mut dyn Store, to: &mut dyn Store) -> Result<Copied> {
    let snapshot = from.snapshot()?;
    let counts = to.load_snapshot(&snapshot)?;
    let copied = Copied {
        from: snapshot.counts(),
        to: counts,
    };
    if copied.from != copied.to {
        return Err(Error::store(
            to.location(),
            format!(
                "the copy does not hold what the source does: {:?} against {:?}",
                copied.to, copied.from
            ),
        ));
    }
    Ok(copied)
}
