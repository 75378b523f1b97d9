//! Who is watching which page or list. Each member with watchers (and each
//! of the desk's live lists, under a key no member id can be) has a
//! version counter in a `tokio::sync::watch` channel: the projection bumps
//! it and never waits; each watcher re-reads at its own pace, and versions
//! it missed while busy collapse into one (drop and resync), so a slow or
//! vanished watcher delays nobody. Replicas tell each other what changed
//! (see [`crate::fanout`]), so a watcher is woken whichever replica applied
//! the event. [`stream`] is the loop every watch RPC runs.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Mutex;
use std::time::Duration;

use rentalbook_plumbing::db::Db;
use rentalbook_plumbing::time::{self, Timestamp};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::Status;

pub struct Watchers {
    pub db: Db,
    members: Mutex<HashMap<String, watch::Sender<u64>>>,
    /// Where a change is passed on to the other replicas' watchers (by a
    /// task that publishes them), when there can be other replicas.
    fanout: Option<mpsc::Sender<String>>,
}

impl Watchers {
    pub fn new(db: Db) -> Self {
        Self {
            db,
            members: Mutex::new(HashMap::new()),
            fanout: None,
        }
    }

    /// Passes every change on to `fanout` as well, dropping it when that is
    /// full: a wake-up, never a fact, so losing one under a flood only
    /// delays a watcher on another replica until its next change.
    pub fn with_fanout(mut self, fanout: mpsc::Sender<String>) -> Self {
        self.fanout = Some(fanout);
        self
    }

    /// A receiver that changes whenever the member's page may have changed.
    pub fn subscribe(&self, member: &str) -> watch::Receiver<u64> {
        let mut members = self.members.lock().unwrap_or_else(|e| e.into_inner());
        members
            .entry(member.to_owned())
            .or_insert_with(|| watch::channel(0).0)
            .subscribe()
    }

    /// Tells the member's watchers, here and on the other replicas.
    pub fn notify(&self, member: &str) {
        self.notify_here(member);
        if let Some(fanout) = &self.fanout
            && fanout.try_send(member.to_owned()).is_err()
        {
            metrics::counter!("mypage_fanout_dropped_total").increment(1);
        }
    }

    /// Tells the member's watchers on this replica, if any; forgets members
    /// nobody watches.
    pub fn notify_here(&self, member: &str) {
        let mut members = self.members.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(sender) = members.get(member) {
            if sender.receiver_count() == 0 {
                members.remove(member);
            } else {
                sender.send_modify(|v| *v += 1);
            }
        }
        metrics::gauge!("mypage_watched_members").set(members.len() as f64);
    }
}

/// The longest a watch stream waits for its next rebuild or heartbeat.
const LONGEST_WAIT: Duration = Duration::from_secs(86_400);

/// Messages a slow watcher may have queued before it holds up only itself.
const WATCH_BUFFER: usize = 4;

/// How long the end of a stream whose token expired waits for room behind
/// a slow watcher's queued messages before the stream just ends.
const EXPIRY_NOTICE: Duration = Duration::from_secs(5);

/// How a watch stream runs.
pub struct StreamSettings {
    /// Ends the stream when the service shuts down.
    pub shutdown: CancellationToken,
    /// How long the stream may stay silent before what it last sent is sent
    /// again: proxies on the way (Envoy's stream idle timeout) reset a
    /// stream on which nothing moves.
    pub heartbeat: Duration,
    /// When the caller's sign-in stops being taken.
    pub expires: Option<Instant>,
    /// How long to let a burst of changes gather before reading again (a
    /// list many events change at once).
    pub settle: Duration,
    /// The gauge of open streams of this kind.
    pub gauge: &'static str,
}

/// Sends what `read` makes now, then again whenever `changes` moves (or the
/// moment `read` named passes) and it differs by `same`, until the caller
/// goes, the sign-in expires or the service shuts down.
pub fn stream<T, R, Fut>(
    mut changes: watch::Receiver<u64>,
    mut read: R,
    same: fn(&T, &T) -> bool,
    settings: StreamSettings,
) -> ReceiverStream<Result<T, Status>>
where
    T: Clone + Send + 'static,
    R: FnMut(Timestamp) -> Fut + Send + 'static,
    Fut: Future<Output = Result<(T, Option<Timestamp>), Status>> + Send,
{
    let (out, receiver) = mpsc::channel(WATCH_BUFFER);
    let StreamSettings {
        shutdown,
        heartbeat,
        expires,
        settle,
        gauge,
    } = settings;
    metrics::gauge!(gauge).increment(1.0);
    tokio::spawn(async move {
        let mut last: Option<T> = None;
        let mut sent_at = Instant::now();
        'build: loop {
            changes.mark_unchanged();
            let now = time::now();
            let (message, next_change) = match read(now).await {
                Ok(m) => m,
                Err(e) => {
                    let _ = out.send(Err(e)).await;
                    break;
                }
            };
            if last.as_ref().is_none_or(|l| !same(l, &message)) {
                if out.send(Ok(message.clone())).await.is_err() {
                    break;
                }
                last = Some(message);
                sent_at = Instant::now();
            }
            // Wake for a change, for the next moment the clock changes what
            // is shown, or not at all; a day at most for either wait, so
            // that no deadline can overflow.
            let clock = next_change
                .and_then(|t| (t - now).to_std().ok())
                .map(|d| d + Duration::from_millis(5))
                .unwrap_or(Duration::from_secs(3600))
                .min(LONGEST_WAIT);
            let rebuild_at = Instant::now() + clock;
            let silence = heartbeat.min(LONGEST_WAIT);
            loop {
                tokio::select! {
                    changed = changes.changed() => {
                        if changed.is_err() {
                            break 'build;
                        }
                        if !settle.is_zero() {
                            tokio::select! {
                                _ = tokio::time::sleep(settle) => {}
                                _ = shutdown.cancelled() => break 'build,
                            }
                        }
                        continue 'build;
                    }
                    _ = tokio::time::sleep_until(rebuild_at) => continue 'build,
                    _ = tokio::time::sleep_until(sent_at + silence) => {
                        // What was sent is still current (any change wakes
                        // the loop above), so it is resent as it is, without
                        // a read. A full buffer means the stream is not
                        // idle: nothing to add then.
                        if let Some(message) = &last
                            && let Err(mpsc::error::TrySendError::Closed(_)) = out.try_send(Ok(message.clone()))
                        {
                            break 'build;
                        }
                        sent_at = Instant::now();
                    }
                    // Armed once the expiry comes before the next rebuild
                    // (a day at most away).
                    _ = tokio::time::sleep_until(expires.unwrap_or(rebuild_at)),
                        if expires.is_some_and(|e| e <= rebuild_at) => {
                        let expired = rentalbook_plumbing::error::unauthenticated(
                            "the sign-in has expired: sign in again to keep following this page",
                        );
                        let _ = tokio::time::timeout(EXPIRY_NOTICE, out.send(Err(expired))).await;
                        break 'build;
                    }
                    _ = out.closed() => break 'build,
                    _ = shutdown.cancelled() => break 'build,
                }
            }
        }
        metrics::gauge!(gauge).decrement(1.0);
    });
    ReceiverStream::new(receiver)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn notifications_reach_only_the_member_and_collapse() {
        let db = Db::connect("sqlite::memory:", 1).await.unwrap();
        let w = Watchers::new(db);
        let mut alice = w.subscribe("alice");
        let bob = w.subscribe("bob");
        w.notify("alice");
        w.notify("alice");
        w.notify("alice");
        assert!(alice.has_changed().unwrap());
        assert_eq!(*alice.borrow_and_update(), 3, "three changes, one wake-up");
        assert!(!bob.has_changed().unwrap());
        drop(bob);
        w.notify("bob");
        assert!(
            !w.members.lock().unwrap().contains_key("bob"),
            "forgotten once unwatched"
        );
    }
}
