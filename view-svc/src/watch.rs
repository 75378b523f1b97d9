//! Who is watching which page. Each member with watchers has a version
//! counter in a `tokio::sync::watch` channel: the projection bumps it and
//! never waits; each watcher re-reads the page at its own pace, and versions
//! it missed while busy collapse into one (drop and resync), so a slow or
//! vanished watcher delays nobody. Replicas tell each other whose page
//! changed (see [`crate::fanout`]), so a watcher is woken whichever replica
//! applied the event.

use std::collections::HashMap;
use std::sync::Mutex;

use rentalbook_plumbing::db::Db;
use tokio::sync::{mpsc, watch};

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
