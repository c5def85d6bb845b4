//! The primary's lock on one extent: I/O locks the stripe rows it touches
//! and shares the extent; whatever changes the extent's record (its epoch,
//! its chunks' states) holds the extent alone.
//!
//! Rows are taken before the extent, so a writer that escalates (drops its
//! share, then waits to hold the extent alone) never waits on someone who
//! waits on its rows. While any I/O holds a share the epoch cannot move,
//! so every chunk request of that I/O names the same epoch.

use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::{Notify, OwnedRwLockReadGuard, OwnedRwLockWriteGuard, RwLock};

/// Lock state of one extent.
#[derive(Default)]
pub struct ExtentLock {
    extent: Arc<RwLock<()>>,
    /// Row ranges `[first, last]` held by I/O in flight.
    rows: Mutex<Vec<(u64, u64)>>,
    released: Notify,
}

impl ExtentLock {
    /// Rows `first..=last`, then a share of the extent.
    pub async fn io(self: &Arc<Self>, first: u64, last: u64) -> Held {
        let rows = self.rows(first, last).await;
        let share = self.extent.clone().read_owned().await;
        Held {
            extent: self.extent.clone(),
            guard: Guard::Shared(share),
            _rows: Some(rows),
        }
    }

    /// The whole extent, alone.
    pub async fn exclusive(self: &Arc<Self>) -> Held {
        let alone = self.extent.clone().write_owned().await;
        Held {
            extent: self.extent.clone(),
            guard: Guard::Exclusive(alone),
            _rows: None,
        }
    }

    async fn rows(self: &Arc<Self>, first: u64, last: u64) -> RowGuard {
        loop {
            let released = self.released.notified();
            tokio::pin!(released);
            // Registered before the check, so a release in between wakes us.
            released.as_mut().enable();
            {
                let mut held = self.rows.lock();
                if !held.iter().any(|&(a, b)| a <= last && first <= b) {
                    held.push((first, last));
                    return RowGuard {
                        lock: self.clone(),
                        range: (first, last),
                    };
                }
            }
            released.await;
        }
    }
}

struct RowGuard {
    lock: Arc<ExtentLock>,
    range: (u64, u64),
}

impl Drop for RowGuard {
    fn drop(&mut self) {
        let mut held = self.lock.rows.lock();
        if let Some(i) = held.iter().position(|r| *r == self.range) {
            held.swap_remove(i);
        }
        drop(held);
        self.lock.released.notify_waiters();
    }
}

enum Guard {
    Shared(#[allow(dead_code)] OwnedRwLockReadGuard<()>),
    Exclusive(#[allow(dead_code)] OwnedRwLockWriteGuard<()>),
    /// Between dropping a share and holding the extent alone.
    None,
}

/// What an operation holds; released on drop.
pub struct Held {
    extent: Arc<RwLock<()>>,
    guard: Guard,
    _rows: Option<RowGuard>,
}

impl Held {
    /// Holds the extent alone (keeping the rows), to change its record.
    /// Others may change it while this waits: re-read it afterwards.
    pub async fn escalate(&mut self) {
        if matches!(self.guard, Guard::Exclusive(_)) {
            return;
        }
        self.guard = Guard::None;
        self.guard = Guard::Exclusive(self.extent.clone().write_owned().await);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::time::timeout;

    const SHORT: Duration = Duration::from_millis(50);

    #[tokio::test]
    async fn disjoint_rows_share_overlapping_rows_wait() {
        let l = Arc::new(ExtentLock::default());
        let a = l.io(0, 3).await;
        let _b = timeout(SHORT, l.io(4, 9))
            .await
            .expect("disjoint rows at once");
        assert!(timeout(SHORT, l.io(3, 3)).await.is_err(), "row 3 is held");
        drop(a);
        timeout(SHORT, l.io(3, 3)).await.expect("row 3 released");
    }

    #[tokio::test]
    async fn exclusive_waits_for_io_and_io_waits_for_exclusive() {
        let l = Arc::new(ExtentLock::default());
        let a = l.io(0, 0).await;
        assert!(timeout(SHORT, l.exclusive()).await.is_err());
        drop(a);
        let x = timeout(SHORT, l.exclusive()).await.expect("no I/O left");
        assert!(timeout(SHORT, l.io(5, 5)).await.is_err());
        drop(x);
        timeout(SHORT, l.io(5, 5)).await.expect("extent free");
    }

    #[tokio::test]
    async fn escalation_keeps_rows_and_waits_for_other_shares() {
        let l = Arc::new(ExtentLock::default());
        let mut a = l.io(0, 1).await;
        let b = l.io(2, 2).await;
        assert!(
            timeout(SHORT, a.escalate()).await.is_err(),
            "b holds a share"
        );
        // The cancelled escalation left `a` holding its rows only.
        assert!(
            timeout(SHORT, l.io(1, 1)).await.is_err(),
            "a keeps rows 0-1"
        );
        drop(b);
        timeout(SHORT, a.escalate()).await.expect("b is gone");
        assert!(
            timeout(SHORT, l.io(7, 7)).await.is_err(),
            "a holds the extent"
        );
    }
}
