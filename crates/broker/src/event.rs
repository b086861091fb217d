//! A one-shot, shard-local event: set once, awaited by any number of tasks.
//!
//! glommio has no `Notify`; this is the smallest thing that lets the accept loop
//! and the shutdown sequence wait for "stop" or "all connections gone" without
//! polling on a timer.

use std::cell::{Cell, RefCell};
use std::future::poll_fn;
use std::task::{Poll, Waker};

/// Set-once flag with waiters.
#[derive(Default)]
pub(crate) struct Event {
    /// Whether [`Event::set`] has been called.
    set: Cell<bool>,
    /// Tasks waiting for the flag.
    waiters: RefCell<Vec<Waker>>,
}

impl Event {
    /// Sets the flag and wakes every waiter.
    pub(crate) fn set(&self) {
        self.set.set(true);
        for w in self.waiters.borrow_mut().drain(..) {
            w.wake();
        }
    }

    /// Whether the flag is set.
    pub(crate) fn is_set(&self) -> bool {
        self.set.get()
    }

    /// Waits until the flag is set.
    pub(crate) async fn wait(&self) {
        poll_fn(|cx| {
            if self.set.get() {
                Poll::Ready(())
            } else {
                let mut w = self.waiters.borrow_mut();
                if !w.iter().any(|x| x.will_wake(cx.waker())) {
                    w.push(cx.waker().clone());
                }
                Poll::Pending
            }
        })
        .await
    }
}

/// A list of wakers to wake together, for "backlog went down" style signals
/// that fire many times.
#[derive(Default)]
pub(crate) struct WakerList {
    /// Registered wakers; drained on every wake.
    wakers: RefCell<Vec<Waker>>,
}

impl WakerList {
    /// Registers the current task's waker.
    pub(crate) fn register(&self, waker: &Waker) {
        let mut w = self.wakers.borrow_mut();
        if !w.iter().any(|x| x.will_wake(waker)) {
            w.push(waker.clone());
        }
    }

    /// Wakes every registered task.
    pub(crate) fn wake_all(&self) {
        let list = std::mem::take(&mut *self.wakers.borrow_mut());
        for w in list {
            w.wake();
        }
    }
}
