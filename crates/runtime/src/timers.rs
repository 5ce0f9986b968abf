//! Timers of a keyed operator: event-time timers fire when the watermark reaches them,
//! processing-time timers when the wall clock does, each in timestamp order, each once.
//!
//! Every timer is keyed state: one entry of the map state [`TIMERS_STATE`] per (key,
//! namespace, domain, timestamp), so timers are part of every checkpoint and savepoint, move
//! with their key group on rescale, and are restored exactly as they were at the barrier. The
//! two queues here are an index over that state, rebuilt from it on restore; they hold one
//! entry per timer (Flink's heap timer service holds the same).

use std::collections::BTreeSet;
use weir_state::{KeyedStateBackend, StateDescriptor, StateError, StateId, StateKey, StateKind};
use weir_types::KeyGroup;

/// The state that holds a keyed operator's timers.
pub const TIMERS_STATE: &str = "_timers";

/// Which clock a timer follows.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TimeDomain {
    /// Fires when the watermark reaches the timestamp.
    EventTime,
    /// Fires when the wall clock (ms since the Unix epoch) reaches the timestamp.
    ProcessingTime,
}

impl TimeDomain {
    fn tag(self) -> u8 {
        match self {
            TimeDomain::EventTime => 0,
            TimeDomain::ProcessingTime => 1,
        }
    }
}

/// A timer as [`crate::KeyedProcessFunction::on_timer`] sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Timer {
    /// The clock it followed.
    pub domain: TimeDomain,
    /// When it was due (ms).
    pub timestamp: i64,
    /// The namespace it was registered in (empty unless registered with one; windows use
    /// the window).
    pub namespace: Vec<u8>,
}

/// One queued timer: ordered by timestamp, then key group, key and namespace, so timers of
/// one timestamp fire in a fixed order.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Entry {
    pub timestamp: i64,
    pub key_group: KeyGroup,
    pub key: Box<[u8]>,
    pub namespace: Box<[u8]>,
}

/// The user key of a timer's state entry: domain, then the timestamp with its sign bit
/// flipped, big-endian (so entries of one key sort by domain and time).
fn user_key(domain: TimeDomain, timestamp: i64) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = domain.tag();
    k[1..].copy_from_slice(&((timestamp as u64) ^ (1 << 63)).to_be_bytes());
    k
}

fn parse_user_key(bytes: &[u8]) -> Option<(TimeDomain, i64)> {
    let (&tag, rest) = bytes.split_first()?;
    let ts: [u8; 8] = rest.try_into().ok()?;
    let domain = match tag {
        0 => TimeDomain::EventTime,
        1 => TimeDomain::ProcessingTime,
        _ => return None,
    };
    Some((domain, (u64::from_be_bytes(ts) ^ (1 << 63)) as i64))
}

/// The timers of one keyed operator subtask.
#[derive(Default)]
pub(crate) struct TimerService {
    event: BTreeSet<Entry>,
    processing: BTreeSet<Entry>,
    state: Option<StateId>,
}

/// The value stored per timer (the entry's key says everything).
const PRESENT: &[u8] = &[1];

impl TimerService {
    /// The timers `backend` holds (restored from a checkpoint), or none for a fresh backend.
    pub(crate) fn restore(backend: &mut dyn KeyedStateBackend) -> Result<Self, StateError> {
        let mut s = Self::default();
        if !backend.descriptors().iter().any(|d| d.name == TIMERS_STATE) {
            return Ok(s);
        }
        let id = s.state_id(backend)?;
        let (event, processing) = (&mut s.event, &mut s.processing);
        backend.scan(id, &mut |e| {
            let (domain, timestamp) =
                parse_user_key(e.key.user_key).ok_or_else(|| StateError::Codec {
                    state: TIMERS_STATE.into(),
                    op: "decode",
                    detail: format!(
                        "a timer entry with a {}-byte user key",
                        e.key.user_key.len()
                    ),
                })?;
            let entry = Entry {
                timestamp,
                key_group: e.key.key_group,
                key: e.key.key.into(),
                namespace: e.key.namespace.into(),
            };
            match domain {
                TimeDomain::EventTime => event.insert(entry),
                TimeDomain::ProcessingTime => processing.insert(entry),
            };
            Ok(())
        })?;
        Ok(s)
    }

    fn state_id(&mut self, backend: &mut dyn KeyedStateBackend) -> Result<StateId, StateError> {
        if let Some(id) = self.state {
            return Ok(id);
        }
        let id = backend.register(&StateDescriptor {
            name: TIMERS_STATE.into(),
            kind: StateKind::Map,
        })?;
        self.state = Some(id);
        Ok(id)
    }

    fn queue(&mut self, domain: TimeDomain) -> &mut BTreeSet<Entry> {
        match domain {
            TimeDomain::EventTime => &mut self.event,
            TimeDomain::ProcessingTime => &mut self.processing,
        }
    }

    /// Registers a timer (registering one that exists is a no-op).
    pub(crate) fn register(
        &mut self,
        backend: &mut dyn KeyedStateBackend,
        domain: TimeDomain,
        key_group: KeyGroup,
        key: &[u8],
        namespace: &[u8],
        timestamp: i64,
    ) -> Result<(), StateError> {
        let entry = Entry {
            timestamp,
            key_group,
            key: key.into(),
            namespace: namespace.into(),
        };
        if self.queue(domain).contains(&entry) {
            return Ok(());
        }
        let id = self.state_id(backend)?;
        let uk = user_key(domain, timestamp);
        backend.put(
            id,
            &StateKey {
                key_group,
                key,
                namespace,
                user_key: &uk,
            },
            PRESENT,
        )?;
        self.queue(domain).insert(entry);
        Ok(())
    }

    /// Deletes a timer (deleting one that does not exist is a no-op).
    pub(crate) fn delete(
        &mut self,
        backend: &mut dyn KeyedStateBackend,
        domain: TimeDomain,
        key_group: KeyGroup,
        key: &[u8],
        namespace: &[u8],
        timestamp: i64,
    ) -> Result<(), StateError> {
        let entry = Entry {
            timestamp,
            key_group,
            key: key.into(),
            namespace: namespace.into(),
        };
        if !self.queue(domain).remove(&entry) {
            return Ok(());
        }
        let id = self.state_id(backend)?;
        let uk = user_key(domain, timestamp);
        backend.delete(
            id,
            &StateKey {
                key_group,
                key,
                namespace,
                user_key: &uk,
            },
        )
    }

    /// Removes and returns the earliest timer of `domain` due at `now` (timestamp `<= now`).
    pub(crate) fn pop_due(
        &mut self,
        backend: &mut dyn KeyedStateBackend,
        domain: TimeDomain,
        now: i64,
    ) -> Result<Option<Entry>, StateError> {
        let due = self
            .queue(domain)
            .first()
            .is_some_and(|e| e.timestamp <= now);
        if !due {
            return Ok(None);
        }
        let entry = self.queue(domain).pop_first().expect("checked above");
        let id = self.state_id(backend)?;
        let uk = user_key(domain, entry.timestamp);
        backend.delete(
            id,
            &StateKey {
                key_group: entry.key_group,
                key: &entry.key,
                namespace: &entry.namespace,
                user_key: &uk,
            },
        )?;
        Ok(Some(entry))
    }

    /// The earliest timer of `domain`, if any.
    pub(crate) fn next_due(&self, domain: TimeDomain) -> Option<i64> {
        match domain {
            TimeDomain::EventTime => self.event.first(),
            TimeDomain::ProcessingTime => self.processing.first(),
        }
        .map(|e| e.timestamp)
    }

    /// How many timers are queued.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.event.len() + self.processing.len()
    }
}

/// The wall clock in ms since the Unix epoch (processing time).
pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use weir_state::{BackendScope, HeapStateBackendFactory, StateBackendFactory};
    use weir_types::{KeyGroupRange, OperatorUid, SubtaskIndex};

    fn backend() -> Box<dyn KeyedStateBackend> {
        HeapStateBackendFactory::new()
            .create(&BackendScope {
                operator_uid: OperatorUid::new("op").unwrap(),
                subtask: SubtaskIndex(0),
                parallelism: 1,
                max_parallelism: 8,
                key_group_range: KeyGroupRange { start: 0, end: 7 },
                keyed_subtasks_in_process: 1,
            })
            .unwrap()
    }

    #[test]
    fn user_keys_round_trip_and_sort_by_time_across_the_sign() {
        for ts in [i64::MIN, -5, 0, 7, i64::MAX] {
            for d in [TimeDomain::EventTime, TimeDomain::ProcessingTime] {
                assert_eq!(parse_user_key(&user_key(d, ts)), Some((d, ts)));
            }
        }
        assert!(
            user_key(TimeDomain::EventTime, -5) < user_key(TimeDomain::EventTime, 3),
            "negative timestamps sort first"
        );
        assert_eq!(parse_user_key(&[7; 9]), None);
        assert_eq!(parse_user_key(&[0; 3]), None);
    }

    #[test]
    fn timers_fire_in_timestamp_order_once_and_deleted_ones_never() {
        let mut b = backend();
        let mut t = TimerService::default();
        let kg = KeyGroup(1);
        for (key, ts) in [(&b"a"[..], 30), (b"b", 10), (b"c", 20), (b"a", 10)] {
            t.register(&mut *b, TimeDomain::EventTime, kg, key, b"", ts)
                .unwrap();
        }
        t.register(&mut *b, TimeDomain::EventTime, kg, b"a", b"", 30)
            .unwrap();
        t.delete(&mut *b, TimeDomain::EventTime, kg, b"c", b"", 20)
            .unwrap();
        let mut fired = Vec::new();
        while let Some(e) = t.pop_due(&mut *b, TimeDomain::EventTime, 25).unwrap() {
            fired.push((e.key.to_vec(), e.timestamp));
        }
        assert_eq!(fired, vec![(b"a".to_vec(), 10), (b"b".to_vec(), 10)]);
        assert_eq!(t.next_due(TimeDomain::EventTime), Some(30));
        assert_eq!(
            t.pop_due(&mut *b, TimeDomain::ProcessingTime, i64::MAX)
                .unwrap(),
            None
        );
    }

    #[test]
    fn a_restored_service_holds_exactly_the_timers_the_state_held() {
        let mut b = backend();
        let mut t = TimerService::default();
        t.register(
            &mut *b,
            TimeDomain::EventTime,
            KeyGroup(2),
            b"k",
            b"w1",
            100,
        )
        .unwrap();
        t.register(
            &mut *b,
            TimeDomain::ProcessingTime,
            KeyGroup(3),
            b"j",
            b"",
            -4,
        )
        .unwrap();
        t.register(&mut *b, TimeDomain::EventTime, KeyGroup(2), b"k", b"w2", 50)
            .unwrap();
        t.pop_due(&mut *b, TimeDomain::EventTime, 60).unwrap();
        let r = TimerService::restore(&mut *b).unwrap();
        assert_eq!(r.len(), 2);
        assert_eq!(r.event.first().map(|e| &*e.namespace), Some(&b"w1"[..]));
        assert_eq!(r.next_due(TimeDomain::ProcessingTime), Some(-4));
        let fresh = TimerService::restore(&mut *backend()).unwrap();
        assert_eq!(fresh.len(), 0);
    }
}
