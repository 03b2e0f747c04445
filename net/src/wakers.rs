//! A set of parked tasks to wake together, where each waiting future holds one slot.
//!
//! The naive pattern — push `cx.waker().clone()` into a `Vec` on every poll — leaks: a future
//! polled many times while pending (e.g. one arm of a `select` that is re-polled on every
//! wakeup of the other arm) piles up clones until the next wake-all. In glommio 0.9 a task's
//! waker refcount is an `i16`, so 32,767 clones crash the shard (seen under load: the
//! connection reader's `or(read, shutdown.wait())` added one clone per request). Here a
//! waiting future registers once, replaces its waker on later polls and deregisters when
//! dropped, so the set holds at most one waker per live waiting future.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

#[derive(Default)]
pub struct WakerSet {
    next: Cell<u64>,
    waiting: RefCell<HashMap<u64, Waker>>,
}

impl WakerSet {
    pub fn new() -> Self {
        Self::default()
    }

    /// Wakes every waiting future (each then re-checks its condition and, if still pending,
    /// registers again).
    pub fn wake_all(&self) {
        let woken: Vec<Waker> = self.waiting.borrow_mut().drain().map(|(_, w)| w).collect();
        for w in woken {
            w.wake();
        }
    }

    /// Waiting futures right now.
    pub fn len(&self) -> usize {
        self.waiting.borrow().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Resolves once `ready()` holds, re-checked after every [`WakerSet::wake_all`].
    pub fn wait_until<'a, F: Fn() -> bool + Unpin + 'a>(&'a self, ready: F) -> WaitUntil<'a, F> {
        WaitUntil {
            set: self,
            ready,
            slot: None,
        }
    }
}

/// The future of [`WakerSet::wait_until`].
pub struct WaitUntil<'a, F: Fn() -> bool + Unpin> {
    set: &'a WakerSet,
    ready: F,
    slot: Option<u64>,
}

impl<F: Fn() -> bool + Unpin> Future for WaitUntil<'_, F> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        if (this.ready)() {
            if let Some(id) = this.slot.take() {
                this.set.waiting.borrow_mut().remove(&id);
            }
            return Poll::Ready(());
        }
        let id = *this.slot.get_or_insert_with(|| {
            let id = this.set.next.get();
            this.set.next.set(id + 1);
            id
        });
        let mut waiting = this.set.waiting.borrow_mut();
        match waiting.get_mut(&id) {
            Some(w) if w.will_wake(cx.waker()) => {}
            Some(w) => *w = cx.waker().clone(),
            None => {
                waiting.insert(id, cx.waker().clone());
            }
        }
        Poll::Pending
    }
}

impl<F: Fn() -> bool + Unpin> Drop for WaitUntil<'_, F> {
    fn drop(&mut self) {
        if let Some(id) = self.slot.take() {
            self.set.waiting.borrow_mut().remove(&id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::task::Wake;

    struct Count(AtomicUsize);
    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn one_slot_per_future_however_often_it_is_polled() {
        let set = WakerSet::new();
        let flag = Cell::new(false);
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let waker = Waker::from(count.clone());
        let mut cx = Context::from_waker(&waker);
        let mut f = Box::pin(set.wait_until(|| flag.get()));
        for _ in 0..100_000 {
            assert!(f.as_mut().poll(&mut cx).is_pending());
        }
        assert_eq!(set.len(), 1, "re-polling must not pile up wakers");
        assert_eq!(
            Arc::strong_count(&count),
            3,
            "the test's, the Waker's, the set's"
        );
        set.wake_all();
        assert_eq!(count.0.load(Ordering::SeqCst), 1);
        flag.set(true);
        assert!(f.as_mut().poll(&mut cx).is_ready());
        assert!(set.is_empty());
        // A dropped waiting future leaves nothing behind.
        flag.set(false);
        let mut g = Box::pin(set.wait_until(|| flag.get()));
        assert!(g.as_mut().poll(&mut cx).is_pending());
        assert_eq!(set.len(), 1);
        drop(g);
        assert!(set.is_empty());
    }
}
