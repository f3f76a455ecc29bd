//! Writes that break the upstream contract (`docs/upstream.md`), so tests
//! can check that the relay detects and reports each: rows removed for
//! good, stamps that go back (clock stamps from skewed servers), and a
//! stamp counter shared with tables the relay does not poll; and a restart
//! that loses every write (an upstream reset).

use crate::{Kind, SimError, Simulator, dataset::Dataset, lock};

impl Simulator {
    fn kind(table: &str) -> Result<Kind, SimError> {
        Kind::parse(table).ok_or_else(|| SimError::UnknownTable(table.to_owned()))
    }

    /// Starts over with the same seed, as a restarted simulator would: the
    /// records as generated, every write since gone, stamps back at the
    /// initial top. The upstream reset of a UAT refresh or a restore.
    pub fn restart(&self) {
        *lock(&self.data) = Dataset::new(&self.config);
    }

    /// Removes a record from `table` for good; false when it was not there.
    pub fn hard_delete(&self, table: &str, id: &str) -> Result<bool, SimError> {
        let kind = Self::kind(table)?;
        Ok(lock(&self.data).table_mut(kind).remove(id))
    }

    /// Shows a record of `table` with `stamp` instead of its own stamp,
    /// lower or not; false when it was not there.
    pub fn restamp(&self, table: &str, id: &str, stamp: u64) -> Result<bool, SimError> {
        let kind = Self::kind(table)?;
        Ok(lock(&self.data).table_mut(kind).restamp(id, stamp))
    }

    /// Uses `n` stamps of `table`'s counter elsewhere: the next write's
    /// stamp is `n` higher than it would be.
    pub fn skip_stamps(&self, table: &str, n: u64) -> Result<(), SimError> {
        let kind = Self::kind(table)?;
        lock(&self.data).table_mut(kind).skip_stamps(n);
        Ok(())
    }
}
