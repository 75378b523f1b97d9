//! Latency histograms (HdrHistogram, microseconds, 3 significant digits),
//! errors by code, and counters. Each worker records into its own
//! [`Recorder`]; recorders are merged when a phase ends, so recording takes
//! no lock.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::client::CallError;

/// Microseconds, 1 µs .. 10 min.
fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid histogram bounds")
}

/// What a phase's workers saw.
#[derive(Clone)]
pub struct Recorder {
    /// Latency of each call, by RPC name, successful or not.
    pub calls: BTreeMap<&'static str, Histogram<u64>>,
    /// Failed calls by RPC and code.
    pub errors: BTreeMap<(&'static str, String), u64>,
    /// Event-to-view lag, by what was waited for.
    pub lag: BTreeMap<&'static str, Histogram<u64>>,
    /// Changes whose view never arrived within the wait.
    pub lag_missed: u64,
    /// Whole journeys: reserved, READY, rented, returned.
    pub journeys: u64,
    /// Journeys given up (a refusal or an error on the way, or no READY in time).
    pub journeys_abandoned: u64,
    /// Time from Reserve's answer to READY, for the journeys that waited.
    pub ready_wait: Histogram<u64>,
    /// Whole-journey time, Reserve's call to Return's answer.
    pub journey_time: Histogram<u64>,
}

impl Default for Recorder {
    fn default() -> Self {
        Self {
            calls: BTreeMap::new(),
            errors: BTreeMap::new(),
            lag: BTreeMap::new(),
            lag_missed: 0,
            journeys: 0,
            journeys_abandoned: 0,
            ready_wait: histogram(),
            journey_time: histogram(),
        }
    }
}

fn micros(d: Duration) -> u64 {
    (d.as_micros() as u64).max(1)
}

impl Recorder {
    /// Records a call that started at `started` and ended now.
    pub fn call<T>(
        &mut self,
        rpc: &'static str,
        started: Instant,
        result: &Result<T, CallError>,
    ) -> Duration {
        let took = started.elapsed();
        self.calls
            .entry(rpc)
            .or_insert_with(histogram)
            .saturating_record(micros(took));
        if let Err(e) = result {
            self.error(rpc, e);
        }
        took
    }

    pub fn error(&mut self, rpc: &'static str, e: &CallError) {
        *self
            .errors
            .entry((rpc, format!("{:?}", e.code)))
            .or_default() += 1;
    }

    pub fn lag(&mut self, what: &'static str, d: Duration) {
        self.lag
            .entry(what)
            .or_insert_with(histogram)
            .saturating_record(micros(d));
    }

    pub fn merge(&mut self, other: &Recorder) {
        for (k, h) in &other.calls {
            let _ = self.calls.entry(k).or_insert_with(histogram).add(h);
        }
        for (k, n) in &other.errors {
            *self.errors.entry(k.clone()).or_default() += n;
        }
        for (k, h) in &other.lag {
            let _ = self.lag.entry(k).or_insert_with(histogram).add(h);
        }
        self.lag_missed += other.lag_missed;
        self.journeys += other.journeys;
        self.journeys_abandoned += other.journeys_abandoned;
        let _ = self.ready_wait.add(&other.ready_wait);
        let _ = self.journey_time.add(&other.journey_time);
    }

    pub fn total_calls(&self) -> u64 {
        self.calls.values().map(|h| h.len()).sum()
    }

    pub fn total_errors(&self) -> u64 {
        self.errors.values().sum()
    }

    pub fn calls_of(&self, rpc: &str) -> u64 {
        self.calls.get(rpc).map_or(0, |h| h.len())
    }

    pub fn errors_of(&self, rpc: &str) -> u64 {
        self.errors
            .iter()
            .filter(|((r, _), _)| *r == rpc)
            .map(|(_, n)| n)
            .sum()
    }

    /// Every lag sample, whatever was waited for.
    pub fn all_lag(&self) -> Histogram<u64> {
        let mut all = histogram();
        for h in self.lag.values() {
            let _ = all.add(h);
        }
        all
    }
}

/// Percentiles of a histogram, in milliseconds.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Latency {
    pub count: u64,
    pub mean_ms: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl Latency {
    pub fn of(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Self::default();
        }
        let ms = |us: u64| us as f64 / 1000.0;
        Self {
            count: h.len(),
            mean_ms: h.mean() / 1000.0,
            p50_ms: ms(h.value_at_quantile(0.50)),
            p90_ms: ms(h.value_at_quantile(0.90)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            max_ms: ms(h.max()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recorders_merge_and_summarise() {
        let mut a = Recorder::default();
        let mut b = Recorder::default();
        let t = Instant::now();
        a.call::<()>("GetBook", t, &Ok(()));
        b.call::<()>(
            "GetBook",
            t,
            &Err(CallError {
                code: tonic::Code::Unavailable,
                message: String::new(),
            }),
        );
        b.lag("reserved", Duration::from_millis(3));
        b.journeys = 2;
        a.merge(&b);
        assert_eq!(a.calls_of("GetBook"), 2);
        assert_eq!(a.errors_of("GetBook"), 1);
        assert_eq!(a.journeys, 2);
        let lag = Latency::of(&a.all_lag());
        assert_eq!(lag.count, 1);
        assert!((lag.p50_ms - 3.0).abs() < 0.01);
    }
}
