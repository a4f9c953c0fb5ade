//! Latency summaries for the benchmarks.

use std::time::Duration;

use hdrhistogram::Histogram;

/// Latencies recorded in microseconds.
pub struct Latencies(Histogram<u64>);

impl Latencies {
    pub fn new() -> Latencies {
        Latencies(
            Histogram::new_with_bounds(1, 120_000_000, 3)
                .expect("static histogram bounds are valid"),
        )
    }

    pub fn record(&mut self, d: Duration) {
        let us = (d.as_micros() as u64).clamp(1, 120_000_000);
        self.0.record(us).expect("value clamped into bounds");
    }

    pub fn merge(&mut self, other: &Latencies) {
        self.0.add(&other.0).expect("same bounds");
    }

    pub fn len(&self) -> u64 {
        self.0.len()
    }

    /// The given quantile, in milliseconds.
    pub fn ms(&self, q: f64) -> f64 {
        self.0.value_at_quantile(q) as f64 / 1000.0
    }

    /// The distribution as (quantile, milliseconds) points, finer in the tail, for
    /// plots and JSON.
    pub fn cdf(&self) -> Vec<(f64, f64)> {
        let mut qs: Vec<f64> = (0..=95).map(|i| i as f64 / 100.0).collect();
        qs.extend([0.96, 0.97, 0.98, 0.99, 0.995, 0.999, 1.0]);
        qs.into_iter().map(|q| (q, self.ms(q))).collect()
    }
}

/// The median of some figures (NaN for none).
pub fn median(mut values: Vec<f64>) -> f64 {
    values.retain(|v| !v.is_nan());
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(|a, b| a.total_cmp(b));
    let mid = values.len() / 2;
    if values.len() % 2 == 1 {
        values[mid]
    } else {
        (values[mid - 1] + values[mid]) / 2.0
    }
}
