//! The queue between a scan's readers and its writer, bounded by how much its batches hold
//! rather than by how many there are: a batch of sixteen small files and one of four thousand
//! events from a database are far apart in memory.
//!
//! The writer works in bursts (a flush writes thousands of rows while nothing is received),
//! so the bound must let the readers read on through a burst, or a core idles; and it must
//! stay a bound whatever the logs hold.

use std::collections::VecDeque;
use std::sync::{Condvar, Mutex, MutexGuard};

pub(crate) struct Queue<T> {
    state: Mutex<State<T>>,
    /// Signalled when the queue's weight drops or the receiver is gone.
    space: Condvar,
    /// Signalled when an item arrives or the senders are done.
    ready: Condvar,
    limit: usize,
}

struct State<T> {
    items: VecDeque<(T, usize)>,
    weight: usize,
    senders_done: bool,
    receiver_gone: bool,
}

impl<T> Queue<T> {
    /// A queue that holds at most `limit` weight (and always at least one item).
    pub(crate) fn new(limit: usize) -> Queue<T> {
        Queue {
            state: Mutex::new(State {
                items: VecDeque::new(),
                weight: 0,
                senders_done: false,
                receiver_gone: false,
            }),
            space: Condvar::new(),
            ready: Condvar::new(),
            limit,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State<T>> {
        // A panicking sender or receiver leaves the queue itself consistent.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds `item`, waiting while the queue is not empty and `item` would take it past its
    /// limit. Returns `false` (and drops the item) when the receiver is gone.
    pub(crate) fn push(&self, item: T, weight: usize) -> bool {
        let mut s = self.lock();
        while !s.receiver_gone && !s.items.is_empty() && s.weight + weight > self.limit {
            s = self.space.wait(s).unwrap_or_else(|e| e.into_inner());
        }
        if s.receiver_gone {
            return false;
        }
        s.weight += weight;
        s.items.push_back((item, weight));
        drop(s);
        self.ready.notify_one();
        true
    }

    /// The next item, waiting for one; `None` once the senders are done and it is empty.
    pub(crate) fn pop(&self) -> Option<T> {
        let mut s = self.lock();
        loop {
            if let Some((item, weight)) = s.items.pop_front() {
                s.weight -= weight;
                drop(s);
                self.space.notify_all();
                return Some(item);
            }
            if s.senders_done {
                return None;
            }
            s = self.ready.wait(s).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// The senders' side: marks them done when dropped (also when a sender panics, so that
    /// the receiver never waits for nothing).
    pub(crate) fn senders(&self) -> SendersDone<'_, T> {
        SendersDone(self)
    }

    /// The receiving side as an iterator: when dropped (also early, on an error), waiting
    /// senders go on and drop what they send.
    pub(crate) fn receiver(&self) -> Receiver<'_, T> {
        Receiver(self)
    }
}

pub(crate) struct SendersDone<'q, T>(&'q Queue<T>);

impl<T> Drop for SendersDone<'_, T> {
    fn drop(&mut self) {
        self.0.lock().senders_done = true;
        self.0.ready.notify_all();
    }
}

pub(crate) struct Receiver<'q, T>(&'q Queue<T>);

impl<T> Receiver<'_, T> {
    /// Whether an item is waiting (else the receiver has caught up with the senders).
    pub(crate) fn has_waiting(&self) -> bool {
        !self.0.lock().items.is_empty()
    }
}

impl<T> Iterator for Receiver<'_, T> {
    type Item = T;

    fn next(&mut self) -> Option<T> {
        self.0.pop()
    }
}

impl<T> Drop for Receiver<'_, T> {
    fn drop(&mut self) {
        let mut s = self.0.lock();
        s.receiver_gone = true;
        s.items.clear();
        s.weight = 0;
        drop(s);
        self.0.space.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn everything_sent_is_received_in_order_per_sender_and_the_bound_holds() {
        let q = Queue::<(usize, usize)>::new(10);
        let peak = AtomicUsize::new(0);
        let received = std::thread::scope(|s| {
            s.spawn(|| {
                let _done = q.senders();
                std::thread::scope(|inner| {
                    for sender in 0..4 {
                        let q = &q;
                        let peak = &peak;
                        inner.spawn(move || {
                            for i in 0..500 {
                                let weight = 1 + (i * 7 + sender) % 5;
                                assert!(q.push((sender, i), weight));
                                peak.fetch_max(q.lock().weight, Ordering::Relaxed);
                            }
                        });
                    }
                });
            });
            q.receiver().collect::<Vec<_>>()
        });
        assert_eq!(received.len(), 2000);
        for sender in 0..4 {
            let order: Vec<usize> = received
                .iter()
                .filter(|(s, _)| *s == sender)
                .map(|(_, i)| *i)
                .collect();
            assert_eq!(order, (0..500).collect::<Vec<_>>());
        }
        assert!(peak.load(Ordering::Relaxed) <= 10);
    }

    #[test]
    fn the_receiver_tells_whether_an_item_is_waiting() {
        let q = Queue::new(10);
        let mut rx = q.receiver();
        assert!(!rx.has_waiting());
        assert!(q.push(1, 1));
        assert!(q.push(2, 1));
        assert!(rx.has_waiting());
        assert_eq!(rx.next(), Some(1));
        assert!(rx.has_waiting());
        assert_eq!(rx.next(), Some(2));
        assert!(!rx.has_waiting());
        drop(q.senders());
        assert!(!rx.has_waiting());
        assert_eq!(rx.next(), None);
    }

    #[test]
    fn an_item_heavier_than_the_limit_still_goes_through_an_empty_queue() {
        let q = Queue::new(4);
        let got = std::thread::scope(|s| {
            s.spawn(|| {
                let _done = q.senders();
                assert!(q.push("big", 100));
                assert!(q.push("small", 1));
            });
            q.receiver().collect::<Vec<_>>()
        });
        assert_eq!(got, vec!["big", "small"]);
    }

    #[test]
    fn senders_waiting_on_a_full_queue_go_on_when_the_receiver_gives_up() {
        let q = Queue::new(2);
        std::thread::scope(|s| {
            let sender = s.spawn(|| {
                let _done = q.senders();
                let mut accepted = 0;
                for i in 0..100 {
                    if q.push(i, 1) {
                        accepted += 1;
                    }
                }
                accepted
            });
            let mut rx = q.receiver();
            assert_eq!(rx.next(), Some(0));
            drop(rx);
            let accepted = sender.join().unwrap();
            // The receiver left early: the rest was dropped, and nobody waited forever.
            assert!(accepted < 100);
        });
    }

    #[test]
    fn a_panicking_sender_still_ends_the_receiver() {
        let q = Queue::<u32>::new(8);
        std::thread::scope(|s| {
            let h = s.spawn(|| {
                let _done = q.senders();
                q.push(1, 1);
                panic!("reader failed");
            });
            let got: Vec<u32> = q.receiver().collect();
            assert_eq!(got, vec![1]);
            assert!(h.join().is_err());
        });
    }
}
