//! Wake-ups across view-svc replicas. The replica that applies an event
//! wakes its own watchers at once and tells the others through the bus's
//! notices (core NATS, not stored); every replica wakes its watchers for the
//! members it hears of. Notices are best effort: one lost while NATS is away
//! leaves a watcher on another replica a change behind until that member's
//! page changes again. The embedded bus has one process and no notices.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use rentalbook_plumbing::bus::EventBus;
use rentalbook_plumbing::time::Backoff;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::watch::Watchers;

/// The bus topic of "this member's page changed".
pub const TOPIC: &str = "view.pages";

/// A notice: the sending replica's id, a space, the member.
fn notice(replica: &str, member: &str) -> String {
    format!("{replica} {member}")
}

/// The member of a notice from another replica; `None` for this replica's
/// own notices and for anything that is not a notice.
fn member_of<'a>(notice: &'a [u8], replica: &str) -> Option<&'a str> {
    let (from, member) = std::str::from_utf8(notice).ok()?.split_once(' ')?;
    (from != replica && !member.is_empty()).then_some(member)
}

/// Publishes the members whose pages this replica changed.
pub async fn publish(
    bus: Arc<dyn EventBus>,
    replica: String,
    mut changes: mpsc::Receiver<String>,
    stop: CancellationToken,
) {
    loop {
        let member = tokio::select! {
            m = changes.recv() => match m {
                Some(m) => m,
                None => return,
            },
            _ = stop.cancelled() => return,
        };
        if let Err(e) = bus.notify(TOPIC, notice(&replica, &member).into()).await {
            tracing::debug!(
                error = format!("{e:#}"),
                "could not tell the other replicas of a change"
            );
        }
    }
}

/// Wakes this replica's watchers for the pages other replicas changed,
/// listening again whenever the bus goes away.
pub async fn listen(
    bus: Arc<dyn EventBus>,
    replica: String,
    watchers: Arc<Watchers>,
    stop: CancellationToken,
) {
    let mut backoff = Backoff::new(Duration::from_millis(100));
    loop {
        let notices = tokio::select! {
            n = bus.notices(TOPIC) => n,
            _ = stop.cancelled() => return,
        };
        let mut notices = match notices {
            Ok(Some(n)) => {
                backoff.reset();
                n
            }
            Ok(None) => return,
            Err(e) => {
                let delay = backoff.next_delay();
                tracing::warn!(error = format!("{e:#}"), retry_in = ?delay, "cannot listen for the other replicas' changes");
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = stop.cancelled() => return,
                }
                continue;
            }
        };
        loop {
            let next = tokio::select! {
                n = notices.next() => n,
                _ = stop.cancelled() => return,
            };
            let Some(notice) = next else { break };
            if let Some(member) = member_of(&notice, &replica) {
                watchers.notify_here(member);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notices_name_the_member_and_skip_the_own_replica() {
        let n = notice("r1", "alice");
        assert_eq!(member_of(n.as_bytes(), "r2"), Some("alice"));
        assert_eq!(member_of(n.as_bytes(), "r1"), None, "its own");
        assert_eq!(member_of(b"r1", "r2"), None);
        assert_eq!(member_of(b"r1 ", "r2"), None);
        assert_eq!(member_of(&[0xff, b' ', b'a'], "r2"), None);
    }
}
