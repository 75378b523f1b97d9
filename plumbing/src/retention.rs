//! Retention sweeps (SPEC §10, privacy): what a service keeps only for a
//! while is forgotten by a sweep that runs now and then. This module says up
//! to when a sweep reaches and how often it runs; what it forgets is each
//! service's own business.

use std::future::Future;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::time::Timestamp;

/// The moment up to which a sweep at `now` forgets: `retention` ago. None
/// when that is before any moment a database keeps (a retention of
/// millennia), which forgets nothing.
pub fn cutoff(now: Timestamp, retention: Duration) -> Option<Timestamp> {
    let retention = chrono::Duration::from_std(retention).ok()?;
    let cutoff = now.checked_sub_signed(retention)?;
    (cutoff.timestamp() >= EARLIEST).then_some(cutoff)
}

/// 0001-01-01T00:00:00Z, before which PostgreSQL and SQLite disagree on
/// what a timestamp is.
const EARLIEST: i64 = -62_135_596_800;

/// How long a sweep waits before the next: a tenth of the retention, at
/// most every 100 ms and at least every 10 min, so that nothing outlives its
/// retention by more than that.
pub fn interval(retention: Duration) -> Duration {
    (retention / 10).clamp(Duration::from_millis(100), Duration::from_secs(600))
}

/// Runs `sweep` with the cutoff of `retention` at once and then every
/// [`interval`], until `stop`. A failed round is logged and the next one
/// tries again; `sweep` answers how many things it forgot.
pub async fn sweep_periodically<F, Fut>(
    service: &'static str,
    what: &'static str,
    retention: Duration,
    stop: CancellationToken,
    mut sweep: F,
) where
    F: FnMut(Timestamp) -> Fut,
    Fut: Future<Output = anyhow::Result<u64>>,
{
    loop {
        if let Some(cutoff) = cutoff(crate::time::now(), retention) {
            let swept = tokio::select! {
                swept = sweep(cutoff) => swept,
                _ = stop.cancelled() => return,
            };
            match swept {
                Ok(0) => {}
                Ok(n) => tracing::info!(service, swept = n, "{what} past its retention forgotten"),
                Err(e) => tracing::warn!(
                    service,
                    error = format!("{e:#}"),
                    "{what} past its retention not forgotten yet; the next sweep tries again"
                ),
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(interval(retention)) => {}
            _ = stop.cancelled() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{TimeZone, Utc};

    #[test]
    fn a_sweep_runs_ten_times_per_retention_within_bounds() {
        let secs = Duration::from_secs;
        assert_eq!(interval(secs(10)), secs(1));
        assert_eq!(interval(secs(90 * 86_400)), secs(600));
        assert_eq!(
            interval(Duration::from_millis(10)),
            Duration::from_millis(100)
        );
        assert_eq!(interval(secs(2)), Duration::from_millis(200));
    }

    #[test]
    fn the_cutoff_is_the_retention_ago() {
        let now = Utc.with_ymd_and_hms(2026, 6, 1, 12, 0, 0).unwrap();
        assert_eq!(
            cutoff(now, Duration::from_secs(90 * 86_400)),
            Some(Utc.with_ymd_and_hms(2026, 3, 3, 12, 0, 0).unwrap())
        );
        assert_eq!(
            cutoff(now, Duration::from_millis(1500)),
            Some(
                Utc.with_ymd_and_hms(2026, 6, 1, 11, 59, 58).unwrap()
                    + chrono::Duration::milliseconds(500)
            )
        );
        // Further back than any stored moment: nothing is old enough.
        assert_eq!(cutoff(now, Duration::from_secs(3_000 * 365 * 86_400)), None);
        assert_eq!(cutoff(now, Duration::MAX), None);
    }
}
