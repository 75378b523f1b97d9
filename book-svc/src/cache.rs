//! Books as GetBook last read them, so that most look-ups need no trip to the
//! database. Every change this process commits to a book drops its entry, and
//! a generation count keeps a read that raced the change from putting the old
//! row back. Entries also age out after a time to live, which bounds how long
//! a change committed by another replica takes to show here.

use std::collections::HashMap;
use std::sync::RwLock;
use std::time::Duration;

// Tokio's clock, so that tests move time instead of sleeping through it.
use tokio::time::Instant;

use crate::store::books;

pub struct BookCache {
    ttl: Duration,
    capacity: usize,
    inner: RwLock<Inner>,
}

#[derive(Default)]
struct Inner {
    /// Changes seen so far; a read may fill the cache only if none came
    /// while it read.
    generation: u64,
    entries: HashMap<String, (Instant, books::Model)>,
}

impl BookCache {
    /// A zero `ttl` turns the cache off. At most `capacity` books are held.
    pub fn new(ttl: Duration, capacity: usize) -> Self {
        Self {
            ttl,
            capacity,
            inner: RwLock::default(),
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Inner> {
        self.inner.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Inner> {
        self.inner.write().unwrap_or_else(|e| e.into_inner())
    }

    /// The book, if held and younger than the time to live.
    pub fn get(&self, book_id: &str) -> Option<books::Model> {
        if self.ttl.is_zero() {
            return None;
        }
        let inner = self.read();
        let (at, book) = inner.entries.get(book_id)?;
        (at.elapsed() < self.ttl).then(|| book.clone())
    }

    /// To call before reading a book from the database; hand it to
    /// [`BookCache::put`] with what was read.
    pub fn generation(&self) -> u64 {
        self.read().generation
    }

    /// Holds a book read from the database, unless a change was committed
    /// since `generation` was taken (the read may predate it).
    pub fn put(&self, generation: u64, book: books::Model) {
        if self.ttl.is_zero() || self.capacity == 0 {
            return;
        }
        let mut inner = self.write();
        if inner.generation != generation {
            return;
        }
        if inner.entries.len() >= self.capacity && !inner.entries.contains_key(&book.book_id) {
            let ttl = self.ttl;
            inner.entries.retain(|_, (at, _)| at.elapsed() < ttl);
            if inner.entries.len() >= self.capacity {
                inner.entries.clear();
            }
        }
        inner
            .entries
            .insert(book.book_id.clone(), (Instant::now(), book));
    }

    /// To call once a change to the book has committed.
    pub fn forget(&self, book_id: &str) {
        let mut inner = self.write();
        inner.generation += 1;
        inner.entries.remove(book_id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn book(id: &str, total: i32) -> books::Model {
        books::Model {
            book_id: id.into(),
            isbn: None,
            title: "Dune".into(),
            author: "Frank Herbert".into(),
            title_key: "dune".into(),
            search_text: "dune\nfrank herbert\n".into(),
            total_copies: total,
            circulating_copies: total,
            held_copies: 0,
            on_loan_copies: 0,
            waiting: 0,
            availability_seq: 0,
            registered_at: rentalbook_plumbing::time::now(),
            revision: 0,
        }
    }

    #[test]
    fn a_read_that_raced_a_change_is_not_kept() {
        let cache = BookCache::new(Duration::from_secs(60), 10);
        let before = cache.generation();
        cache.forget("b1");
        cache.put(before, book("b1", 1));
        assert!(cache.get("b1").is_none(), "the row read before the change");

        let now = cache.generation();
        cache.put(now, book("b1", 2));
        assert_eq!(cache.get("b1").unwrap().total_copies, 2);
        cache.forget("b1");
        assert!(cache.get("b1").is_none(), "dropped by the change");
    }

    #[tokio::test(start_paused = true)]
    async fn entries_age_out_and_the_size_is_bounded() {
        let cache = BookCache::new(Duration::from_millis(20), 2);
        for id in ["b1", "b2", "b3"] {
            cache.put(cache.generation(), book(id, 1));
        }
        let held = ["b1", "b2", "b3"]
            .iter()
            .filter(|id| cache.get(id).is_some())
            .count();
        assert!((1..=2).contains(&held), "{held} books held");
        assert!(cache.get("b3").is_some(), "the newest is held");
        tokio::time::advance(Duration::from_millis(19)).await;
        assert!(cache.get("b3").is_some(), "younger than the time to live");
        tokio::time::advance(Duration::from_millis(2)).await;
        assert!(cache.get("b3").is_none(), "aged out");

        let off = BookCache::new(Duration::ZERO, 10);
        off.put(off.generation(), book("b1", 1));
        assert!(off.get("b1").is_none());
    }
}
