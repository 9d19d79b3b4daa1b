//! Counts requests in flight so that shutdown can wait for exactly them, no longer.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::Notify;

#[derive(Default)]
pub(crate) struct Drain {
    in_flight: AtomicUsize,
    idle: Notify,
}

/// Held by a request for its whole life; dropping it marks the request finished.
pub(crate) struct InFlight<'a>(&'a Drain);

impl Drain {
    pub(crate) fn enter(&self) -> InFlight<'_> {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight(self)
    }

    pub(crate) fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }

    /// Waits until no request is in flight, or `timeout` passes. Returns how many were still
    /// running when it gave up (0 on a clean drain).
    pub(crate) async fn wait_idle(&self, timeout: Duration) -> usize {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let idle = self.idle.notified();
            let left = self.in_flight();
            if left == 0 {
                return 0;
            }
            if tokio::time::timeout_at(deadline, idle).await.is_err() {
                return self.in_flight();
            }
        }
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if self.0.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[tokio::test]
    async fn wait_idle_returns_when_the_last_request_finishes() {
        let drain = Arc::new(Drain::default());
        let (entered, release) = tokio::sync::oneshot::channel::<()>();
        let (go, released) = tokio::sync::oneshot::channel::<()>();
        let request = {
            let drain = drain.clone();
            tokio::spawn(async move {
                let _request = drain.enter();
                let _ = entered.send(());
                let _ = released.await;
            })
        };
        release.await.unwrap();
        let waiter = {
            let drain = drain.clone();
            tokio::spawn(async move { drain.wait_idle(Duration::from_secs(10)).await })
        };
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        go.send(()).unwrap();
        request.await.unwrap();
        assert_eq!(waiter.await.unwrap(), 0);
    }

    #[tokio::test]
    async fn wait_idle_gives_up_at_the_timeout_and_reports_what_is_left() {
        let drain = Arc::new(Drain::default());
        let _request = drain.enter();
        assert_eq!(drain.wait_idle(Duration::from_millis(20)).await, 1);
    }
}
