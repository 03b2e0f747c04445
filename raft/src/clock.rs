//! The clock seam. The driver reads time only through [`Clock`], so the simulator can run
//! many nodes on one thread with simulated (and skewed) clocks.

use std::cell::Cell;
use std::rc::Rc;
use std::time::Instant;

/// A monotonic millisecond clock.
pub trait Clock {
    /// Milliseconds since an arbitrary, fixed origin; never decreases.
    fn now_ms(&self) -> u64;
}

/// A clock moved by hand (tests and the simulator). Clones share the same time.
#[derive(Clone, Debug, Default)]
pub struct ManualClock {
    now: Rc<Cell<u64>>,
}

impl ManualClock {
    /// A clock at time zero.
    pub fn new() -> Self {
        ManualClock::default()
    }

    /// Sets the time; a value earlier than the current time is ignored (monotonicity).
    pub fn set(&self, ms: u64) {
        if ms > self.now.get() {
            self.now.set(ms);
        }
    }

    /// Moves the time forward.
    pub fn advance(&self, ms: u64) {
        self.now.set(self.now.get().saturating_add(ms));
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> u64 {
        self.now.get()
    }
}

/// The process's monotonic clock (`std::time::Instant`; a vDSO call, never blocks).
#[derive(Clone, Copy, Debug)]
pub struct MonotonicClock {
    origin: Instant,
}

impl MonotonicClock {
    /// A clock whose origin is now.
    pub fn new() -> Self {
        MonotonicClock {
            origin: Instant::now(),
        }
    }
}

impl Default for MonotonicClock {
    fn default() -> Self {
        MonotonicClock::new()
    }
}

impl Clock for MonotonicClock {
    fn now_ms(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX)
    }
}
