//! Summary math: latency histograms to percentiles, throughput over time, medians and ratios.
//!
//! Units: latencies are recorded in microseconds and reported in milliseconds; throughput is
//! reported in MiB/s (2^20 bytes, as Kafka's ProducerPerformance and the limit probe count).

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

pub const MIB: f64 = (1u64 << 20) as f64;
/// Largest latency a histogram holds (1 h); larger values are clamped to it.
const HIST_MAX_US: u64 = 3_600_000_000;

/// A latency histogram in µs, 3 significant digits.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, HIST_MAX_US, 3).expect("valid histogram bounds")
}

/// Record a latency given in nanoseconds (sub-µs values count as 1 µs).
pub fn record_ns(h: &mut Histogram<u64>, ns: u64) {
    h.saturating_record((ns / 1_000).clamp(1, HIST_MAX_US));
}

/// Percentiles of one histogram, in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Latency {
    pub count: u64,
    pub mean_ms: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub p9999_ms: f64,
    pub max_ms: f64,
}

impl Latency {
    pub fn from_histogram(h: &Histogram<u64>) -> Latency {
        if h.is_empty() {
            return Latency::default();
        }
        let ms = |us: u64| us as f64 / 1_000.0;
        Latency {
            count: h.len(),
            mean_ms: h.mean() / 1_000.0,
            p50_ms: ms(h.value_at_quantile(0.5)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            p999_ms: ms(h.value_at_quantile(0.999)),
            p9999_ms: ms(h.value_at_quantile(0.9999)),
            max_ms: ms(h.max()),
        }
    }

    /// Field-wise median over rounds (the count is the total).
    pub fn median_of(rounds: &[Latency]) -> Latency {
        let m = |f: fn(&Latency) -> f64| median(&rounds.iter().map(f).collect::<Vec<_>>());
        Latency {
            count: rounds.iter().map(|l| l.count).sum(),
            mean_ms: m(|l| l.mean_ms),
            p50_ms: m(|l| l.p50_ms),
            p99_ms: m(|l| l.p99_ms),
            p999_ms: m(|l| l.p999_ms),
            p9999_ms: m(|l| l.p9999_ms),
            max_ms: m(|l| l.max_ms),
        }
    }
}

/// Bytes and records per time bucket since the start of a run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Series {
    pub bucket_ms: u64,
    pub bytes: Vec<u64>,
    pub records: Vec<u64>,
}

impl Series {
    pub fn new(bucket_ms: u64) -> Series {
        assert!(bucket_ms > 0);
        Series {
            bucket_ms,
            ..Series::default()
        }
    }

    /// Count `bytes` (one record) at `offset_ns` after the start.
    pub fn add(&mut self, offset_ns: u64, bytes: u64) {
        let i = (offset_ns / (self.bucket_ms * 1_000_000)) as usize;
        if i >= self.bytes.len() {
            self.bytes.resize(i + 1, 0);
            self.records.resize(i + 1, 0);
        }
        self.bytes[i] += bytes;
        self.records[i] += 1;
    }

    pub fn merge(&mut self, other: &Series) {
        assert_eq!(self.bucket_ms, other.bucket_ms, "merging unlike series");
        if other.bytes.len() > self.bytes.len() {
            self.bytes.resize(other.bytes.len(), 0);
            self.records.resize(other.records.len(), 0);
        }
        for (i, (b, r)) in other.bytes.iter().zip(&other.records).enumerate() {
            self.bytes[i] += b;
            self.records[i] += r;
        }
    }

    /// MiB/s of each bucket.
    pub fn mib_per_sec(&self) -> Vec<f64> {
        let secs = self.bucket_ms as f64 / 1_000.0;
        self.bytes.iter().map(|b| *b as f64 / MIB / secs).collect()
    }
}

/// Bytes and records counted inside the measurement window, and the window's length.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Window {
    pub bytes: u64,
    pub records: u64,
    pub seconds: f64,
}

impl Window {
    pub fn mib_per_sec(&self) -> f64 {
        if self.seconds > 0.0 {
            self.bytes as f64 / MIB / self.seconds
        } else {
            0.0
        }
    }

    pub fn records_per_sec(&self) -> f64 {
        if self.seconds > 0.0 {
            self.records as f64 / self.seconds
        } else {
            0.0
        }
    }
}

/// Median; the mean of the middle two for an even count; NaN for none. NaNs sort last.
pub fn median(values: &[f64]) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// `a / b`, or None when either is missing, not finite, or b is not positive.
pub fn ratio(a: f64, b: f64) -> Option<f64> {
    (a.is_finite() && b.is_finite() && b > 0.0 && a >= 0.0).then(|| a / b)
}

/// `value` as a percentage of `limit`.
pub fn percent_of(value: f64, limit: f64) -> Option<f64> {
    ratio(value, limit).map(|r| r * 100.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_a_known_distribution() {
        let mut h = new_histogram();
        // 1..=10 000 µs, once each: p50 = 5 ms, p99 = 9.9 ms, p99.9 = 9.99 ms.
        for us in 1..=10_000u64 {
            record_ns(&mut h, us * 1_000);
        }
        let l = Latency::from_histogram(&h);
        assert_eq!(l.count, 10_000);
        let close = |a: f64, b: f64| (a - b).abs() <= b * 0.001 + 1e-9;
        assert!(close(l.p50_ms, 5.0), "{l:?}");
        assert!(close(l.p99_ms, 9.9), "{l:?}");
        assert!(close(l.p999_ms, 9.99), "{l:?}");
        assert!(close(l.p9999_ms, 9.999), "{l:?}");
        assert!(close(l.max_ms, 10.0), "{l:?}");
        assert!(close(l.mean_ms, 5.0005), "{l:?}");
    }

    #[test]
    fn one_slow_record_in_a_thousand_moves_p999_not_p99() {
        let mut h = new_histogram();
        for _ in 0..998 {
            record_ns(&mut h, 1_000_000); // 1 ms
        }
        record_ns(&mut h, 500_000_000); // 500 ms
        record_ns(&mut h, 500_000_000);
        let l = Latency::from_histogram(&h);
        assert!((l.p99_ms - 1.0).abs() < 0.01, "{l:?}");
        assert!((l.p999_ms - 500.0).abs() < 1.0, "{l:?}");
    }

    #[test]
    fn sub_microsecond_and_huge_values_are_clamped_not_lost() {
        let mut h = new_histogram();
        record_ns(&mut h, 10);
        record_ns(&mut h, u64::MAX);
        assert_eq!(h.len(), 2);
        assert_eq!(h.min(), 1);
        assert!(Latency::from_histogram(&h).max_ms >= 3_599_000.0);
        assert_eq!(
            Latency::from_histogram(&new_histogram()),
            Latency::default()
        );
    }

    #[test]
    fn series_buckets_and_merges() {
        let mut a = Series::new(1_000);
        a.add(0, 1 << 20);
        a.add(999_999_999, 1 << 20);
        a.add(2_500_000_000, 3 << 20);
        assert_eq!(a.records, vec![2, 0, 1]);
        assert_eq!(a.mib_per_sec(), vec![2.0, 0.0, 3.0]);
        let mut b = Series::new(1_000);
        b.add(4_000_000_000, 1 << 20);
        a.merge(&b);
        assert_eq!(a.mib_per_sec(), vec![2.0, 0.0, 3.0, 0.0, 1.0]);
        let mut half = Series::new(500);
        half.add(600_000_000, 1 << 20);
        assert_eq!(half.mib_per_sec(), vec![0.0, 2.0]);
    }

    #[test]
    fn window_rates() {
        let w = Window {
            bytes: 30 << 20,
            records: 30_720,
            seconds: 10.0,
        };
        assert_eq!(w.mib_per_sec(), 3.0);
        assert_eq!(w.records_per_sec(), 3_072.0);
        assert_eq!(Window::default().mib_per_sec(), 0.0);
    }

    #[test]
    fn medians_and_ratios() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert!(median(&[]).is_nan());
        assert_eq!(ratio(116.0, 58.0), Some(2.0));
        assert_eq!(ratio(1.0, 0.0), None);
        assert_eq!(ratio(f64::NAN, 1.0), None);
        assert_eq!(percent_of(392.0, 784.0), Some(50.0));
        let rounds = [
            Latency {
                count: 10,
                p999_ms: 5.0,
                ..Latency::default()
            },
            Latency {
                count: 20,
                p999_ms: 1.0,
                ..Latency::default()
            },
            Latency {
                count: 30,
                p999_ms: 3.0,
                ..Latency::default()
            },
        ];
        let m = Latency::median_of(&rounds);
        assert_eq!((m.count, m.p999_ms), (60, 3.0));
    }
}
