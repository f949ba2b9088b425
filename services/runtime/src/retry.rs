//! Retrying a start-up step until a dependency answers, as a service should when the broker
//! or the database is not up yet.

use std::future::Future;
use std::time::Duration;
use threadline_ports::{report, Cause};
use tokio_util::sync::CancellationToken;

/// Runs `attempt` until it succeeds, waiting longer between tries (up to 5 s) and logging one
/// line per failure. Returns `None` if `shutdown` fires first.
pub async fn until_ready<T, E, F, Fut>(
    what: &str,
    shutdown: &CancellationToken,
    mut attempt: F,
) -> Option<T>
where
    E: Into<Cause>,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let mut delay = Duration::from_millis(100);
    loop {
        let result = tokio::select! {
            _ = shutdown.cancelled() => return None,
            result = attempt() => result,
        };
        match result {
            Ok(value) => return Some(value),
            Err(err) => {
                let err: Cause = err.into();
                tracing::error!("{what} failed: {}; retrying in {delay:?}", report(&*err));
                tokio::select! {
                    _ = shutdown.cancelled() => return None,
                    _ = tokio::time::sleep(delay) => {}
                }
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
}
