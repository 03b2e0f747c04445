//! Fixed-rate send schedules and the clock they run on.
//!
//! A fixed-rate producer never waits for an acknowledgement before the next send: record k is
//! *intended* to go at `start + k / rate`, and its latency is measured from that intended time,
//! not from when the client finally got round to sending it. A broker that stalls for a second
//! therefore charges a second of latency to every record that should have been sent during the
//! stall (no coordinated omission).

use std::time::Duration;

/// CLOCK_MONOTONIC in nanoseconds: one clock for every thread and process of this machine, so
/// a timestamp written into a record by a producer can be compared by a consumer.
pub fn mono_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Sleep until `deadline_ns` (mono_ns), at most `cap`.
pub fn sleep_until(deadline_ns: u64, cap: Duration) {
    let now = mono_ns();
    if deadline_ns > now {
        std::thread::sleep(Duration::from_nanos(deadline_ns - now).min(cap));
    }
}

/// The intended send times of one producer at a fixed rate.
#[derive(Debug, Clone)]
pub struct Schedule {
    start_ns: u64,
    interval_ns: f64,
    next: u64,
}

impl Schedule {
    /// `rate` records per second from `start_ns`. Producer `index` of `of` producers sharing one
    /// rate gets the same per-producer rate but a phase of index/of of an interval, so their
    /// sends interleave instead of arriving in bursts.
    pub fn new(start_ns: u64, rate: f64, index: u32, of: u32) -> Schedule {
        assert!(rate > 0.0 && rate.is_finite(), "rate must be > 0");
        let interval_ns = 1e9 / rate;
        let phase = interval_ns * f64::from(index) / f64::from(of.max(1));
        Schedule {
            start_ns: start_ns + phase as u64,
            interval_ns,
            next: 0,
        }
    }

    /// Intended time of record `k` (computed from k, so rounding never accumulates).
    pub fn intended(&self, k: u64) -> u64 {
        self.start_ns + (k as f64 * self.interval_ns) as u64
    }

    /// Intended time of the next record not yet taken.
    pub fn next_intended(&self) -> u64 {
        self.intended(self.next)
    }

    /// Records taken so far.
    pub fn taken(&self) -> u64 {
        self.next
    }

    /// Take the next record: its sequence number and intended time.
    pub fn take(&mut self) -> (u64, u64) {
        let k = self.next;
        self.next += 1;
        (k, self.intended(k))
    }

    /// Records whose intended time is at or before `now_ns` and that are not taken yet (how
    /// far behind the producer is).
    pub fn due(&self, now_ns: u64) -> u64 {
        if now_ns < self.start_ns {
            return 0;
        }
        let through = ((now_ns - self.start_ns) as f64 / self.interval_ns).floor() as u64 + 1;
        // `intended` truncates: step back while the float estimate overshoots.
        let mut n = through;
        while n > 0 && self.intended(n - 1) > now_ns {
            n -= 1;
        }
        while self.intended(n) <= now_ns {
            n += 1;
        }
        n.saturating_sub(self.next)
    }

    /// Records with an intended time before `end_ns` (the schedule's total in a window).
    pub fn count_before(&self, end_ns: u64) -> u64 {
        if end_ns == 0 {
            return 0;
        }
        Schedule {
            next: 0,
            ..self.clone()
        }
        .due(end_ns - 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intended_times_are_evenly_spaced_without_drift() {
        let s = Schedule::new(1_000, 3.0, 0, 1); // interval 333 333 333.3 ns
        assert_eq!(s.intended(0), 1_000);
        assert_eq!(s.intended(1), 1_000 + 333_333_333);
        assert_eq!(s.intended(3), 1_000 + 1_000_000_000);
        // Three million records (11.6 days) later the time is still exact: computed from k,
        // never accumulated.
        assert_eq!(s.intended(3_000_000), 1_000 + 1_000_000_000_000_000);
    }

    #[test]
    fn due_counts_what_should_have_been_sent() {
        let mut s = Schedule::new(0, 1000.0, 0, 1); // every 1 ms
        assert_eq!(s.due(0), 1); // record 0 is due at t=0
        assert_eq!(s.due(999_999), 1);
        assert_eq!(s.due(1_000_000), 2);
        assert_eq!(s.due(10_500_000), 11);
        for _ in 0..4 {
            s.take();
        }
        assert_eq!(s.due(10_500_000), 7);
        assert_eq!(s.next_intended(), 4_000_000);
        assert_eq!(s.taken(), 4);
        // A producer that is ahead has nothing due.
        let mut ahead = Schedule::new(0, 1000.0, 0, 1);
        for _ in 0..20 {
            ahead.take();
        }
        assert_eq!(ahead.due(5_000_000), 0);
    }

    #[test]
    fn due_agrees_with_intended_at_every_boundary() {
        let s = Schedule::new(7, 7.0, 0, 1);
        for k in 0..1000u64 {
            let t = s.intended(k);
            assert_eq!(s.due(t), k + 1, "at intended({k})");
            assert_eq!(s.due(t - 1), k, "just before intended({k})");
        }
    }

    #[test]
    fn producers_sharing_a_rate_are_phased() {
        // 4 producers at 250/s each: together one record every ms, interleaved.
        let mut all: Vec<u64> = (0..4)
            .flat_map(|i| {
                let s = Schedule::new(0, 250.0, i, 4);
                (0..5).map(move |k| s.intended(k))
            })
            .collect();
        all.sort_unstable();
        let gaps: Vec<u64> = all.windows(2).map(|w| w[1] - w[0]).collect();
        assert!(gaps.iter().all(|g| *g == 1_000_000), "{gaps:?}");
    }

    #[test]
    fn count_before_a_window_end() {
        let s = Schedule::new(0, 100.0, 0, 1); // every 10 ms
        assert_eq!(s.count_before(1_000_000_000), 100); // t = 0, 10 ms, …, 990 ms
        assert_eq!(s.count_before(1), 1);
        assert_eq!(s.count_before(0), 0);
    }

    #[test]
    fn the_clock_moves_forward() {
        let a = mono_ns();
        sleep_until(a + 2_000_000, Duration::from_secs(1));
        assert!(mono_ns() >= a + 2_000_000);
    }
}
