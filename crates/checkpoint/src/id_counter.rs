//! The checkpoint id counter: ids only rise, across failovers and JobMaster restarts.

use crate::failure::CheckpointFailureReason;
use weir_types::CheckpointId;

/// Issues checkpoint ids. The first id is 1; ids only rise.
///
/// After a restore (from a checkpoint found in storage, or from a savepoint when a job is
/// started from it) the next id is the restored id + 1 — unless the counter is already beyond
/// it: [`CheckpointIdCounter::restore_from`] never moves the counter backwards, so an id is
/// never issued twice within a job even if an older snapshot is restored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckpointIdCounter {
    next: u64,
}

impl Default for CheckpointIdCounter {
    fn default() -> Self {
        Self::new()
    }
}

impl CheckpointIdCounter {
    /// A counter whose first id is 1.
    pub fn new() -> Self {
        Self { next: 1 }
    }

    /// The id the next call to [`Self::next_id`] returns.
    pub fn peek(&self) -> CheckpointId {
        CheckpointId(self.next)
    }

    /// Issues the next id.
    pub fn next_id(&mut self) -> Result<CheckpointId, CheckpointFailureReason> {
        let id = self.next;
        self.next = id
            .checked_add(1)
            .ok_or(CheckpointFailureReason::IdsExhausted)?;
        Ok(CheckpointId(id))
    }

    /// Makes the next id at least `restored + 1` and returns it; never lowers the counter.
    pub fn restore_from(&mut self, restored: CheckpointId) -> CheckpointId {
        let wanted = restored.get().saturating_add(1);
        if wanted < self.next {
            tracing::debug!(
                restored = %restored,
                next = self.next,
                "restored an older checkpoint id; the id counter keeps rising"
            );
        }
        self.next = self.next.max(wanted);
        CheckpointId(self.next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_start_at_one_and_rise_by_one() {
        let mut c = CheckpointIdCounter::new();
        assert_eq!(c.next_id(), Ok(CheckpointId(1)));
        assert_eq!(c.next_id(), Ok(CheckpointId(2)));
    }

    #[test]
    fn restoring_a_savepoint_starts_after_its_id() {
        let mut c = CheckpointIdCounter::new();
        assert_eq!(c.restore_from(CheckpointId(41)), CheckpointId(42));
        assert_eq!(c.next_id(), Ok(CheckpointId(42)));
    }

    #[test]
    fn restoring_an_older_id_never_moves_the_counter_backwards() {
        let mut c = CheckpointIdCounter::new();
        c.restore_from(CheckpointId(10));
        assert_eq!(c.restore_from(CheckpointId(3)), CheckpointId(11));
        assert_eq!(c.next_id(), Ok(CheckpointId(11)));
    }

    #[test]
    fn ids_near_the_top_are_exhausted_rather_than_wrapping() {
        let mut c = CheckpointIdCounter::new();
        c.restore_from(CheckpointId(u64::MAX - 2));
        assert_eq!(c.next_id(), Ok(CheckpointId(u64::MAX - 1)));
        assert_eq!(c.next_id(), Err(CheckpointFailureReason::IdsExhausted));
        assert_eq!(c.peek(), CheckpointId(u64::MAX));
    }
}
