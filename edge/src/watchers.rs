//! How many live event streams (My Page `:watch`) each caller holds on this
//! edge, within `MAX_WATCHERS_PER_MEMBER`. A stream is counted once the
//! backend has accepted it, so only a caller whose token the service
//! verified takes a place: a forged token naming someone else cannot use up
//! their places. One stream past the cap is refused; the caller's open
//! streams go on (a reloading page keeps the one it has, and a page that
//! reconnects in a loop is told to wait rather than cutting off another).

use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};

pub struct Watchers {
    max: NonZeroUsize,
    open: Mutex<HashMap<String, usize>>,
}

/// A caller's place among the open streams, given back when dropped.
pub struct Place {
    watchers: Arc<Watchers>,
    caller: String,
}

impl Watchers {
    pub fn new(max: NonZeroUsize) -> Arc<Self> {
        Arc::new(Self {
            max,
            open: Mutex::new(HashMap::new()),
        })
    }

    pub fn max(&self) -> usize {
        self.max.get()
    }

    /// A place for one more of `caller`'s streams, unless they hold the
    /// most already.
    pub fn admit(self: &Arc<Self>, caller: &str) -> Option<Place> {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let held = open.entry(caller.to_owned()).or_insert(0);
        if *held >= self.max.get() {
            return None;
        }
        *held += 1;
        Some(Place {
            watchers: self.clone(),
            caller: caller.to_owned(),
        })
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        let mut open = self.watchers.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(held) = open.get_mut(&self.caller) {
            *held -= 1;
            if *held == 0 {
                open.remove(&self.caller);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_caller_holds_at_most_the_cap() {
        let w = Watchers::new(NonZeroUsize::new(2).unwrap());
        let a1 = w.admit("alice").unwrap();
        let a2 = w.admit("alice").unwrap();
        assert!(w.admit("alice").is_none());
        let b = w.admit("bob").unwrap();
        let held = |who: &str| w.open.lock().unwrap().get(who).copied();
        assert_eq!((held("alice"), held("bob")), (Some(2), Some(1)));
        drop(a1);
        let a3 = w.admit("alice").unwrap();
        drop((a2, a3, b));
        assert!(
            w.open.lock().unwrap().is_empty(),
            "callers without streams are forgotten"
        );
    }
}
