//! Ack coalescing: which acks to send, as a pure state machine.
//!
//! Deliveries are tracked in delivery-tag order. When handlers finish, the
//! longest prefix of settled deliveries goes out as one `multiple = true`
//! ack. Finished deliveries stuck behind a slow one are acked one by one on
//! a forced flush, so one long job never holds the prefetch window closed.
//! A delivery is never acked before its handler finished.

use std::collections::VecDeque;

/// How a finished delivery is to be settled with the broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Settlement {
    /// Done with (handled, or dead-lettered with a confirm): ack it.
    Ack,
    /// Could not be handled nor dead-lettered: give it back to the queue.
    Requeue,
}

impl Settlement {
    /// How to settle a message after publishing a copy of it on (a retry, a
    /// hop, a dead letter): ack it once the copy is confirmed; otherwise give
    /// it back to the queue, so that it is neither lost nor duplicated.
    pub(crate) fn after_republish<T, E>(published: &Result<T, E>) -> Self {
        match published {
            Ok(_) => Settlement::Ack,
            Err(_) => Settlement::Requeue,
        }
    }
}

/// One frame to send to the broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct AckOp {
    /// The delivery tag (for a multiple ack: the last one covered).
    pub(crate) tag: u64,
    /// Ack every outstanding delivery up to `tag`.
    pub(crate) multiple: bool,
    /// Ack or requeue.
    pub(crate) settlement: Settlement,
}

#[derive(Debug)]
struct Slot {
    tag: u64,
    finished: Option<Settlement>,
}

/// The deliveries of one channel not yet settled with the broker.
#[derive(Debug)]
pub(crate) struct AckTracker {
    slots: VecDeque<Slot>,
    finished: usize,
}

impl AckTracker {
    pub(crate) fn new() -> Self {
        AckTracker {
            slots: VecDeque::new(),
            finished: 0,
        }
    }

    /// Records a delivery; tags arrive in increasing order on one channel.
    pub(crate) fn delivered(&mut self, tag: u64) {
        debug_assert!(self.slots.back().is_none_or(|last| last.tag < tag));
        self.slots.push_back(Slot {
            tag,
            finished: None,
        });
    }

    /// Records that the handler of `tag` finished.
    pub(crate) fn finished(&mut self, tag: u64, settlement: Settlement) {
        if let Some(slot) = self.find(tag)
            && slot.finished.is_none()
        {
            slot.finished = Some(settlement);
            self.finished += 1;
        }
    }

    /// Finished deliveries not yet acked.
    pub(crate) fn finished_count(&self) -> usize {
        self.finished
    }

    /// Deliveries whose handlers have not finished.
    #[cfg(test)]
    pub(crate) fn running_count(&self) -> usize {
        self.slots.len() - self.finished
    }

    /// The frames that settle what can be settled now.
    ///
    /// The settled prefix goes out as `multiple` acks (split around requeues,
    /// which are single nacks). With `stragglers`, finished deliveries behind
    /// a running one are settled too, one frame each.
    pub(crate) fn take_ops(&mut self, stragglers: bool) -> Vec<AckOp> {
        let mut ops = Vec::new();
        let mut pending_ack: Option<Slot> = None;
        let mut pending_count = 0usize;
        while self
            .slots
            .front()
            .is_some_and(|slot| slot.finished.is_some())
        {
            let Some(slot) = self.slots.pop_front() else {
                break;
            };
            self.finished -= 1;
            match slot.finished {
                Some(Settlement::Ack) => {
                    pending_count += 1;
                    pending_ack = Some(slot);
                }
                _ => {
                    if let Some(last) = pending_ack.take() {
                        ops.push(op(last, pending_count > 1, Settlement::Ack));
                        pending_count = 0;
                    }
                    ops.push(op(slot, false, Settlement::Requeue));
                }
            }
        }
        if let Some(last) = pending_ack {
            ops.push(op(last, pending_count > 1, Settlement::Ack));
        }
        if stragglers && self.finished > 0 {
            let mut kept = VecDeque::with_capacity(self.slots.len());
            for slot in self.slots.drain(..) {
                match slot.finished {
                    Some(settlement) => ops.push(op(slot, false, settlement)),
                    None => kept.push_back(slot),
                }
            }
            self.slots = kept;
            self.finished = 0;
        }
        ops
    }

    fn find(&mut self, tag: u64) -> Option<&mut Slot> {
        // Tags on one channel are consecutive, so the index is usually the offset.
        let first = self.slots.front()?.tag;
        let guess = usize::try_from(tag.checked_sub(first)?).ok()?;
        if self.slots.get(guess).is_some_and(|slot| slot.tag == tag) {
            return self.slots.get_mut(guess);
        }
        let index = self
            .slots
            .binary_search_by_key(&tag, |slot| slot.tag)
            .ok()?;
        self.slots.get_mut(index)
    }
}

fn op(slot: Slot, multiple: bool, settlement: Settlement) -> AckOp {
    AckOp {
        tag: slot.tag,
        multiple,
        settlement,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_republished_message_is_acked_only_once_its_copy_is_confirmed() {
        assert_eq!(
            Settlement::after_republish(&Ok::<(), ()>(())),
            Settlement::Ack
        );
        assert_eq!(
            Settlement::after_republish(&Err::<(), _>("no confirm")),
            Settlement::Requeue
        );
    }

    fn tracker(tags: std::ops::RangeInclusive<u64>) -> AckTracker {
        let mut tracker = AckTracker::new();
        for tag in tags {
            tracker.delivered(tag);
        }
        tracker
    }

    fn summary(ops: &[AckOp]) -> Vec<(u64, bool, Settlement)> {
        ops.iter()
            .map(|op| (op.tag, op.multiple, op.settlement))
            .collect()
    }

    #[test]
    fn nothing_is_acked_before_its_handler_finished() {
        let mut tracker = tracker(1..=3);
        assert!(tracker.take_ops(true).is_empty());
        tracker.finished(2, Settlement::Ack);
        assert!(tracker.take_ops(false).is_empty(), "2 waits behind 1");
        assert_eq!(tracker.running_count(), 2);
    }

    #[test]
    fn a_finished_prefix_is_one_multiple_ack() {
        let mut tracker = tracker(1..=5);
        for tag in [3, 1, 2] {
            tracker.finished(tag, Settlement::Ack);
        }
        assert_eq!(
            summary(&tracker.take_ops(false)),
            vec![(3, true, Settlement::Ack)]
        );
        assert_eq!(tracker.finished_count(), 0);
        assert_eq!(tracker.running_count(), 2);
    }

    #[test]
    fn a_single_finished_delivery_is_a_plain_ack() {
        let mut tracker = tracker(7..=8);
        tracker.finished(7, Settlement::Ack);
        assert_eq!(
            summary(&tracker.take_ops(false)),
            vec![(7, false, Settlement::Ack)]
        );
    }

    #[test]
    fn requeues_split_the_prefix() {
        let mut tracker = tracker(1..=4);
        tracker.finished(1, Settlement::Ack);
        tracker.finished(2, Settlement::Ack);
        tracker.finished(3, Settlement::Requeue);
        tracker.finished(4, Settlement::Ack);
        assert_eq!(
            summary(&tracker.take_ops(false)),
            vec![
                (2, true, Settlement::Ack),
                (3, false, Settlement::Requeue),
                (4, false, Settlement::Ack)
            ]
        );
    }

    #[test]
    fn stragglers_behind_a_slow_job_are_acked_one_by_one_when_forced() {
        let mut tracker = tracker(1..=4);
        tracker.finished(2, Settlement::Ack);
        tracker.finished(4, Settlement::Ack);
        assert!(tracker.take_ops(false).is_empty());
        assert_eq!(
            summary(&tracker.take_ops(true)),
            vec![(2, false, Settlement::Ack), (4, false, Settlement::Ack)]
        );
        // The slow one still settles later, alone.
        tracker.finished(1, Settlement::Ack);
        assert_eq!(
            summary(&tracker.take_ops(false)),
            vec![(1, false, Settlement::Ack)]
        );
        assert_eq!(tracker.running_count(), 1);
    }

    #[test]
    fn finishing_twice_or_an_unknown_tag_changes_nothing() {
        let mut tracker = tracker(1..=2);
        tracker.finished(1, Settlement::Ack);
        tracker.finished(1, Settlement::Ack);
        tracker.finished(99, Settlement::Ack);
        assert_eq!(tracker.finished_count(), 1);
    }
}
