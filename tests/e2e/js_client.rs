//! The JavaScript client's own tests (`clients/js/test/`, Node's built-in test runner) run
//! against real roles: an api, a projector, a gateway, and a second gateway whose NATS
//! connection loses the first stored message of one thread, so that its feed is behind the
//! client's own POST.

use crate::harness::gateway::{frame_id, stored_subject};
use crate::harness::proxy::Proxy;
use crate::harness::*;
use std::path::PathBuf;
use std::time::Duration;

/// Node.js runs the tests; 20 is the oldest the client supports (its `WebSocket` is behind a
/// flag there).
const NODE: &str = "node";

fn client_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("clients/js")
}

#[tokio::test]
async fn the_javascript_client_s_tests_pass_against_running_roles() {
    let mut app = spawn_app().await;
    let (proxy, _, lagging) = Proxy::gateway_behind(&mut app).await;
    let lagging_thread = app.new_thread().await;
    proxy.lose_next(&stored_subject(&lagging_thread));

    let run = tokio::process::Command::new(NODE)
        .args([
            "--experimental-websocket",
            "--test",
            "--test-reporter=tap",
            "test/",
        ])
        .current_dir(client_dir())
        .env("THREADLINE_API_URL", format!("http://{}", app.api_addr))
        .env("THREADLINE_WS_URL", format!("ws://{}", app.ws_addr))
        .env(
            "THREADLINE_LAGGING_WS_URL",
            format!("ws://{}", lagging.ws_addr),
        )
        .env("THREADLINE_LAGGING_THREAD", &lagging_thread)
        .kill_on_drop(true)
        .output();
    let out = within(
        "the JavaScript client's tests",
        Duration::from_secs(120),
        run,
    )
    .await
    .unwrap_or_else(|e| {
        panic!("cannot run `{NODE}` ({e}): Node.js 20 or newer is needed for these tests")
    });
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("{stdout}{stderr}");
    assert!(out.status.success(), "node --test failed: {}", out.status);
    for counted in ["# fail 0", "# skipped 0", "# cancelled 0"] {
        assert!(
            stdout.contains(counted),
            "expected {counted:?} in the output"
        );
    }

    // The lagging gateway's feed was behind for real: it lost the client's own message.
    let lost = proxy.lost();
    assert_eq!(lost.len(), 1, "the proxy was meant to lose one message");
    let lost = std::str::from_utf8(&lost[0]).expect("a UTF-8 payload");
    let listed = message_ids(&app.get_thread(&lagging_thread).await);
    assert_eq!(
        listed.first().and_then(|id| id.as_str()),
        Some(frame_id(lost).as_str()),
        "the message lost was the thread's first, the client's own"
    );
}

#[tokio::test]
async fn the_javascript_client_packs_with_npm() {
    let out = tokio::process::Command::new("npm")
        .args(["pack", "--dry-run", "--json"])
        .current_dir(client_dir())
        .output()
        .await
        .unwrap_or_else(|e| panic!("cannot run npm ({e}): it comes with Node.js"));
    assert!(
        out.status.success(),
        "npm pack refused the package: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let packed: serde_json::Value = serde_json::from_slice(&out.stdout).expect("npm's JSON");
    let mut files: Vec<&str> = packed[0]["files"]
        .as_array()
        .expect("the packed files")
        .iter()
        .filter_map(|f| f["path"].as_str())
        .collect();
    files.sort_unstable();
    assert_eq!(
        files,
        [
            "README.md",
            "package.json",
            "threadline.d.ts",
            "threadline.js"
        ]
    );
}
