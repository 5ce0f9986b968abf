//! Slot assignment as a pure decision: which TaskManager slot each of a job's slots goes to.
//!
//! With one slot-sharing group, subtask `i` of every vertex runs in the job's slot `i`, so a
//! job needs [`weir_graph::Plan::slots_needed`] slots and the scheduler only places job slots.
//!
//! [`assign_slots`] decides, in this order:
//!
//! 1. Not enough free slots in the whole cluster → [`NotEnoughSlots`] (the JobMaster waits for
//!    TaskManagers to register, bounded by `slot.request.timeout`).
//! 2. A job slot whose previous TaskManager is still alive stays on it (local recovery: the
//!    TaskManager keeps a local copy of that subtask's last checkpoint).
//! 3. Every other job slot goes to a free slot on the TaskManager that holds the fewest slots
//!    of this job so far (spread), then the one with the most free slots, then by id.

use crate::ids::TaskManagerId;
use serde::Serialize;
use std::collections::{BTreeMap, VecDeque};
use std::fmt;

/// What one live TaskManager offers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskManagerSlots {
    /// The TaskManager.
    pub id: TaskManagerId,
    /// Its number of slots.
    pub total: u32,
    /// The indexes of its free slots.
    pub free: Vec<u32>,
}

/// One slot of one TaskManager.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct SlotRef {
    /// The TaskManager.
    pub taskmanager: TaskManagerId,
    /// The slot's index on it.
    pub slot: u32,
}

/// Where each job slot goes: `slots[i]` holds subtask `i` of every vertex.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Assignment {
    /// By job slot.
    pub slots: Vec<SlotRef>,
}

/// The cluster has fewer free slots than a job needs.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct NotEnoughSlots {
    /// Slots the job needs.
    pub needed: u32,
    /// Free slots in the cluster.
    pub free: u32,
    /// Live TaskManagers.
    pub taskmanagers: u32,
    /// Slots of the live TaskManagers, free or not.
    pub total: u32,
}

impl fmt::Display for NotEnoughSlots {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "job needs {} slot{} but the cluster has {} free ({} TaskManager{}, {} slot{} total)",
            self.needed,
            plural(self.needed),
            self.free,
            self.taskmanagers,
            plural(self.taskmanagers),
            self.total,
            plural(self.total),
        )
    }
}

fn plural(n: u32) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

/// Places `needed` job slots on the free slots of `alive`, keeping a job slot on its
/// `previous` TaskManager when that one is alive and has room. See the module doc.
pub fn assign_slots(
    previous: &BTreeMap<u32, TaskManagerId>,
    alive: &[TaskManagerSlots],
    needed: u32,
) -> Result<Assignment, NotEnoughSlots> {
    let free_total: u32 = alive.iter().map(|t| t.free.len() as u32).sum();
    if free_total < needed {
        return Err(NotEnoughSlots {
            needed,
            free: free_total,
            taskmanagers: alive.len() as u32,
            total: alive.iter().map(|t| t.total).sum(),
        });
    }
    let mut remaining: BTreeMap<&TaskManagerId, VecDeque<u32>> = alive
        .iter()
        .map(|t| {
            let mut free = t.free.clone();
            free.sort_unstable();
            free.dedup();
            (&t.id, free.into())
        })
        .collect();
    let mut used: BTreeMap<&TaskManagerId, u32> = BTreeMap::new();
    let mut slots: Vec<Option<SlotRef>> = vec![None; needed as usize];
    // Survivors first, in job-slot order.
    for (i, placed) in slots.iter_mut().enumerate() {
        let Some(tm) = previous.get(&(i as u32)) else {
            continue;
        };
        let Some((id, queue)) = remaining.iter_mut().find(|(id, _)| **id == tm) else {
            continue;
        };
        if let Some(slot) = queue.pop_front() {
            *used.entry(id).or_default() += 1;
            *placed = Some(SlotRef {
                taskmanager: (*id).clone(),
                slot,
            });
        }
    }
    // The rest spread over the TaskManagers.
    for placed in slots.iter_mut().filter(|s| s.is_none()) {
        let (id, queue) = remaining
            .iter_mut()
            .filter(|(_, q)| !q.is_empty())
            .min_by_key(|(id, q)| {
                (
                    used.get(*id).copied().unwrap_or(0),
                    std::cmp::Reverse(q.len()),
                    **id,
                )
            })
            .expect("enough free slots were counted above");
        let slot = queue.pop_front().expect("non-empty queue");
        *used.entry(id).or_default() += 1;
        *placed = Some(SlotRef {
            taskmanager: (*id).clone(),
            slot,
        });
    }
    Ok(Assignment {
        slots: slots.into_iter().map(|s| s.expect("placed")).collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    fn tm(id: &str, total: u32, free: &[u32]) -> TaskManagerSlots {
        TaskManagerSlots {
            id: TaskManagerId::new(id).unwrap(),
            total,
            free: free.to_vec(),
        }
    }

    fn id(s: &str) -> TaskManagerId {
        TaskManagerId::new(s).unwrap()
    }

    #[test]
    fn a_first_deploy_spreads_over_the_taskmanagers() {
        let a = assign_slots(
            &BTreeMap::new(),
            &[tm("a", 2, &[0, 1]), tm("b", 2, &[0, 1])],
            2,
        )
        .unwrap();
        let tms: BTreeSet<_> = a.slots.iter().map(|s| s.taskmanager.clone()).collect();
        assert_eq!(tms.len(), 2);
    }

    #[test]
    fn the_survivor_keeps_its_slot_and_the_lost_ones_move() {
        let previous = BTreeMap::from([(0, id("a")), (1, id("b"))]);
        let a = assign_slots(&previous, &[tm("a", 2, &[0, 1])], 2).unwrap();
        assert_eq!(a.slots[0].taskmanager, id("a"));
        assert_eq!(a.slots[1].taskmanager, id("a"));
        assert_ne!(a.slots[0].slot, a.slots[1].slot);
    }

    #[test]
    fn not_enough_slots_names_needed_free_and_total() {
        let e =
            assign_slots(&BTreeMap::new(), &[tm("a", 2, &[1]), tm("b", 2, &[0])], 4).unwrap_err();
        assert_eq!(
            e.to_string(),
            "job needs 4 slots but the cluster has 2 free (2 TaskManagers, 4 slots total)"
        );
    }

    #[test]
    fn an_empty_cluster_says_so() {
        let e = assign_slots(&BTreeMap::new(), &[], 1).unwrap_err();
        assert_eq!(
            e.to_string(),
            "job needs 1 slot but the cluster has 0 free (0 TaskManagers, 0 slots total)"
        );
    }

    /// A cluster: per TaskManager, its total and which slots are free; a previous placement
    /// over some of these and some vanished TaskManagers; the number of job slots.
    fn cluster() -> impl Strategy<Value = (Vec<TaskManagerSlots>, BTreeMap<u32, TaskManagerId>, u32)>
    {
        let tms = proptest::collection::vec(
            (1u32..5).prop_flat_map(|total| {
                (
                    Just(total),
                    proptest::collection::vec(any::<bool>(), total as usize),
                )
            }),
            0..5,
        );
        (tms, 0u32..10).prop_flat_map(|(tms, needed)| {
            let alive: Vec<TaskManagerSlots> = tms
                .iter()
                .enumerate()
                .map(|(i, (total, free))| TaskManagerSlots {
                    id: TaskManagerId::new(format!("tm-{i}")).unwrap(),
                    total: *total,
                    free: (0..*total).filter(|s| free[*s as usize]).collect(),
                })
                .collect();
            // Previous owners: an alive TaskManager (index < len) or a lost one.
            let n = alive.len() + 2;
            let previous =
                proptest::collection::btree_map(0..needed.max(1), 0..n, 0..=needed as usize)
                    .prop_map(|m| {
                        m.into_iter()
                            .map(|(slot, owner)| {
                                (slot, TaskManagerId::new(format!("tm-{owner}")).unwrap())
                            })
                            .collect::<BTreeMap<_, _>>()
                    });
            (Just(alive), previous, Just(needed))
        })
    }

    proptest! {
        #[test]
        fn every_job_slot_is_placed_iff_the_cluster_has_enough_free_slots(
            (alive, previous, needed) in cluster()
        ) {
            let free: u32 = alive.iter().map(|t| t.free.len() as u32).sum();
            let result = assign_slots(&previous, &alive, needed);
            prop_assert_eq!(result.is_ok(), free >= needed);
            if let Ok(a) = result {
                prop_assert_eq!(a.slots.len(), needed as usize);
            }
        }

        #[test]
        fn no_slot_is_used_twice_and_only_free_slots_are_used(
            (alive, previous, needed) in cluster()
        ) {
            if let Ok(a) = assign_slots(&previous, &alive, needed) {
                let distinct: BTreeSet<&SlotRef> = a.slots.iter().collect();
                prop_assert_eq!(distinct.len(), a.slots.len());
                for s in &a.slots {
                    let t = alive.iter().find(|t| t.taskmanager_is(&s.taskmanager));
                    prop_assert!(t.is_some_and(|t| t.free.contains(&s.slot)), "{s:?} is not free");
                }
            }
        }

        #[test]
        fn survivors_keep_their_subtasks_when_their_taskmanager_has_room(
            (alive, previous, needed) in cluster()
        ) {
            if let Ok(a) = assign_slots(&previous, &alive, needed) {
                for t in &alive {
                    let mine: Vec<u32> = previous
                        .iter()
                        .filter(|(slot, owner)| **owner == t.id && **slot < needed)
                        .map(|(slot, _)| *slot)
                        .collect();
                    if mine.len() <= t.free.len() {
                        for slot in mine {
                            prop_assert_eq!(&a.slots[slot as usize].taskmanager, &t.id);
                        }
                    }
                }
            }
        }

        #[test]
        fn a_first_deploy_on_equal_taskmanagers_is_balanced(
            taskmanagers in 1usize..5, per in 1u32..5, needed in 0u32..10
        ) {
            let alive: Vec<_> = (0..taskmanagers)
                .map(|i| TaskManagerSlots {
                    id: TaskManagerId::new(format!("tm-{i}")).unwrap(),
                    total: per,
                    free: (0..per).collect(),
                })
                .collect();
            if let Ok(a) = assign_slots(&BTreeMap::new(), &alive, needed) {
                let mut counts: BTreeMap<&TaskManagerId, u32> =
                    alive.iter().map(|t| (&t.id, 0)).collect();
                for s in &a.slots {
                    *counts.get_mut(&s.taskmanager).unwrap() += 1;
                }
                let max = counts.values().max().copied().unwrap_or(0);
                let min = counts.values().min().copied().unwrap_or(0);
                prop_assert!(max - min <= 1, "{counts:?}");
            }
        }
    }

    impl TaskManagerSlots {
        fn taskmanager_is(&self, id: &TaskManagerId) -> bool {
            &self.id == id
        }
    }
}
