//! Serving a router until shutdown: stop accepting, let in-flight requests finish (bounded).

use axum::Router;
use std::future::IntoFuture;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Serves `router` on `listener` until `shutdown` fires, then gives in-flight requests up to
/// `grace` to finish.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: CancellationToken,
    grace: Duration,
) -> std::io::Result<()> {
    let addr = listener.local_addr()?;
    tracing::info!("listening on {addr}");
    let stop = shutdown.clone();
    let server = axum::serve(listener, router)
        .with_graceful_shutdown(async move {
            stop.cancelled().await;
        })
        .into_future();
    tokio::pin!(server);
    tokio::select! {
        result = &mut server => result,
        _ = async {
            shutdown.cancelled().await;
            tokio::time::sleep(grace).await;
        } => {
            tracing::warn!("in-flight requests did not finish within {grace:?}; stopping anyway");
            Ok(())
        }
    }
}
