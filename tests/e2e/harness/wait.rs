//! Bounded waiting: a condition polled until it holds or a deadline passes, never a fixed
//! sleep standing in for readiness.

use std::future::Future;
use std::time::{Duration, Instant};

/// Polls `check` until it returns `Some`, for at most `timeout`; panics naming `what`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(5);
    loop {
        let attempt =
            tokio::time::timeout(deadline.saturating_duration_since(Instant::now()), check()).await;
        if let Ok(Some(found)) = attempt {
            return found;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(100));
    }
}

/// Runs `fut` for at most `timeout`; panics naming `what` if it takes longer.
pub async fn within<T>(what: &str, timeout: Duration, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(timeout, fut).await {
        Ok(value) => value,
        Err(_) => panic!("timed out after {timeout:?}: {what}"),
    }
}
