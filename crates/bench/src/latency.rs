//! Latency percentiles from an HdrHistogram (3 significant digits, so a reported
//! percentile is within 0.1 % of the exact one).

use hdrhistogram::Histogram;

/// Highest value a histogram tracks (60 s in µs or 60 ms·1000 in ns); larger samples
/// are clamped to it.
pub const MAX_TRACKABLE: u64 = 60_000_000_000;

/// A new histogram for values from 1 to [`MAX_TRACKABLE`].
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_TRACKABLE, 3).expect("static histogram bounds")
}

/// Record a sample, clamped into the histogram's range.
pub fn record(h: &mut Histogram<u64>, v: u64) {
    let _ = h.record(v.clamp(1, MAX_TRACKABLE));
}

/// The percentiles a report shows.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Summary {
    /// Samples recorded.
    pub count: u64,
    /// Median.
    pub p50: u64,
    /// 90th percentile.
    pub p90: u64,
    /// 99th percentile.
    pub p99: u64,
    /// 99.9th percentile.
    pub p999: u64,
    /// Largest sample.
    pub max: u64,
    /// Mean.
    pub mean: f64,
}

impl Summary {
    /// Summarise a histogram (all zero when it is empty).
    pub fn of(h: &Histogram<u64>) -> Summary {
        if h.is_empty() {
            return Summary::default();
        }
        Summary {
            count: h.len(),
            p50: h.value_at_quantile(0.50),
            p90: h.value_at_quantile(0.90),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max(),
            mean: h.mean(),
        }
    }

    /// The same figures divided by `div` (e.g. ns → µs), as JSON.
    pub fn to_json(&self, div: f64) -> serde_json::Value {
        serde_json::json!({
            "count": self.count,
            "p50": self.p50 as f64 / div,
            "p90": self.p90 as f64 / div,
            "p99": self.p99 as f64 / div,
            "p999": self.p999 as f64 / div,
            "max": self.max as f64 / div,
            "mean": self.mean / div,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Exact nearest-rank percentile of sorted data.
    fn exact(sorted: &[u64], q: f64) -> u64 {
        let rank = ((q * sorted.len() as f64).ceil() as usize).max(1);
        sorted[rank - 1]
    }

    fn within(got: u64, want: u64, rel: f64) -> bool {
        (got as f64 - want as f64).abs() <= want as f64 * rel + 1.0
    }

    #[test]
    fn uniform_distribution() {
        let mut h = histogram();
        for v in 1..=100_000u64 {
            record(&mut h, v);
        }
        let s = Summary::of(&h);
        assert_eq!(s.count, 100_000);
        assert!(within(s.p50, 50_000, 0.001), "p50 {}", s.p50);
        assert!(within(s.p90, 90_000, 0.001), "p90 {}", s.p90);
        assert!(within(s.p99, 99_000, 0.001), "p99 {}", s.p99);
        assert!(within(s.p999, 99_900, 0.001), "p999 {}", s.p999);
        assert!(within(s.max, 100_000, 0.001));
        assert!((s.mean - 50_000.5).abs() < 50.0, "mean {}", s.mean);
    }

    #[test]
    fn skewed_distribution_matches_exact_percentiles() {
        // 99 % fast (100–199 µs), 0.9 % slow (5 ms), 0.1 % very slow (80 ms): the
        // tail percentiles must land in the right mode.
        let mut data = Vec::new();
        for i in 0..99_000u64 {
            data.push(100 + i % 100);
        }
        data.extend(std::iter::repeat_n(5_000, 900));
        data.extend(std::iter::repeat_n(80_000, 100));
        let mut h = histogram();
        for &v in &data {
            record(&mut h, v);
        }
        data.sort_unstable();
        let s = Summary::of(&h);
        for (got, q) in [(s.p50, 0.5), (s.p90, 0.9), (s.p99, 0.99), (s.p999, 0.999)] {
            let want = exact(&data, q);
            assert!(within(got, want, 0.001), "q {q}: got {got}, exact {want}");
        }
        assert_eq!(s.p99, 199);
        assert!(within(s.p999, 5_000, 0.001));
        assert!(within(s.max, 80_000, 0.001));
    }

    #[test]
    fn empty_and_clamped() {
        assert_eq!(Summary::of(&histogram()), Summary::default());
        let mut h = histogram();
        record(&mut h, 0);
        record(&mut h, u64::MAX);
        let s = Summary::of(&h);
        assert_eq!(s.count, 2);
        assert!(s.max >= MAX_TRACKABLE);
    }

    #[test]
    fn json_scales() {
        let mut h = histogram();
        record(&mut h, 2_000);
        let j = Summary::of(&h).to_json(1000.0);
        assert_eq!(j["p50"].as_f64(), Some(2.0));
    }
}
