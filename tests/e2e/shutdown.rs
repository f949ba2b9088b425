//! Graceful shutdown on SIGTERM: websockets get a going-away close frame, every role exits.

use crate::harness::*;
use std::time::Duration;

const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(30);

#[tokio::test]
async fn sigterm_closes_websockets_with_going_away_and_every_role_exits_cleanly() {
    let mut app = spawn_app().await;
    let thread = app.new_thread().await;
    let mut ws = app.connect_ws(&thread).await;

    app.signal("gateway", libc::SIGTERM);
    assert_eq!(
        ws.next_close().await,
        Some(1001),
        "expected a going-away close frame"
    );
    let status = app.wait_exit("gateway", SHUTDOWN_TIMEOUT).await;
    assert!(status.success(), "gateway exited with {status}");

    for role in ["api", "projector"] {
        app.signal(role, libc::SIGTERM);
        let status = app.wait_exit(role, SHUTDOWN_TIMEOUT).await;
        assert!(status.success(), "{role} exited with {status}");
    }
}
