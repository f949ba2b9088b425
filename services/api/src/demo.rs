//! The demo page at `/demo/` (only with `DEMO_PAGE=true`): a visitor's chat widget and an
//! agent's panel on one thread, both live, built on the JavaScript client of `clients/js`.
//! Its files are compiled into the binary, the client module from that very folder, and are
//! served with their content types and a Content-Security-Policy that lets the page load only
//! its own files and talk only to its own origin and the gateway it names.

use axum::http::{header, HeaderName, HeaderValue};
use axum::response::IntoResponse;
use axum::routing::{get, MethodRouter};
use axum::Router;
use clap::{ArgAction, Args};
use std::sync::Arc;

/// Whether the api serves the demo page, and where the page finds the websocket.
#[derive(Debug, Clone, Default, Args)]
pub struct DemoSettings {
    /// Serve the demo page at /demo/: a visitor's chat widget and an agent's panel, live.
    /// For trials and development; anyone who reaches the API can use it.
    #[arg(long, env = "DEMO_PAGE", default_value_t = false, action = ArgAction::Set)]
    pub demo_page: bool,

    /// Where the demo page opens websockets (`ws://…` or `wss://…`, e.g. ws://localhost:8001)
    /// when the gateway is not on the page's own origin; unset: the page's origin (the `all`
    /// role, or api and gateway behind one proxy).
    #[arg(long, env = "DEMO_WEBSOCKET_URL", value_parser = WebsocketUrl::parse)]
    pub demo_websocket_url: Option<WebsocketUrl>,
}

/// A websocket base URL that is safe to write into the page and its policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebsocketUrl {
    url: String,
    /// `scheme://host[:port]`, for the policy's `connect-src`.
    origin: String,
}

impl WebsocketUrl {
    pub fn parse(text: &str) -> Result<Self, String> {
        let bad = || format!("{text:?} is not a websocket URL like ws://localhost:8001");
        let url = text.trim().trim_end_matches('/');
        let (scheme, rest) = url.split_once("://").ok_or_else(bad)?;
        let safe = |c: char| c.is_ascii_alphanumeric() || "-._~:/[]%".contains(c);
        if !matches!(scheme, "ws" | "wss") || !rest.chars().all(safe) {
            return Err(bad());
        }
        let authority = rest.split('/').next().unwrap_or_default();
        if authority.is_empty() || authority.starts_with(':') {
            return Err(bad());
        }
        Ok(Self {
            url: url.to_owned(),
            origin: format!("{scheme}://{authority}"),
        })
    }
}

const INDEX: &str = include_str!("demo/index.html");
const SCRIPT: &str = include_str!("demo/demo.js");
const STYLE: &str = include_str!("demo/demo.css");
/// The client module that the page imports: the package of `clients/js`, one copy.
const CLIENT: &str = include_str!("../../../clients/js/threadline.js");

/// The placeholder in `index.html` that carries the websocket URL to the page's script.
const WEBSOCKET_URL_META: &str = r#"<meta name="threadline-websocket-url" content="">"#;

const HTML: &str = "text/html; charset=utf-8";
const JAVASCRIPT: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";

/// The demo's routes, or none when it is off.
pub fn router<S: Clone + Send + Sync + 'static>(settings: &DemoSettings) -> Router<S> {
    if !settings.demo_page {
        return Router::new();
    }
    let websocket = settings.demo_websocket_url.as_ref();
    let page = page(websocket);
    let policy = policy(websocket);
    Router::new()
        .route("/demo", file(HTML, page.clone(), &policy))
        .route("/demo/", file(HTML, page, &policy))
        .route("/demo/demo.js", file(JAVASCRIPT, SCRIPT.into(), &policy))
        .route("/demo/demo.css", file(CSS, STYLE.into(), &policy))
        .route(
            "/demo/threadline.js",
            file(JAVASCRIPT, CLIENT.into(), &policy),
        )
}

/// `index.html` with the websocket URL in its placeholder.
fn page(websocket: Option<&WebsocketUrl>) -> Arc<str> {
    let Some(websocket) = websocket else {
        return INDEX.into();
    };
    // The URL's characters are checked: none needs escaping in an attribute.
    let meta = format!(
        r#"<meta name="threadline-websocket-url" content="{}">"#,
        websocket.url
    );
    INDEX.replacen(WEBSOCKET_URL_META, &meta, 1).into()
}

/// The page may load only its own files and connect only to its origin (the API, and the
/// websocket on the same host) and the gateway of `DEMO_WEBSOCKET_URL`.
fn policy(websocket: Option<&WebsocketUrl>) -> HeaderValue {
    let connect = match websocket {
        Some(websocket) => format!("'self' {}", websocket.origin),
        None => "'self'".to_owned(),
    };
    let policy = format!(
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
         connect-src {connect}; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    );
    HeaderValue::from_str(&policy).expect("the policy's characters are checked")
}

fn file<S: Clone + Send + Sync + 'static>(
    content_type: &'static str,
    body: Arc<str>,
    policy: &HeaderValue,
) -> MethodRouter<S> {
    let policy = policy.clone();
    get(move || {
        let (body, policy) = (body.clone(), policy.clone());
        async move {
            (
                [
                    (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
                    (header::CONTENT_SECURITY_POLICY, policy),
                    (
                        header::X_CONTENT_TYPE_OPTIONS,
                        HeaderValue::from_static("nosniff"),
                    ),
                    (
                        header::REFERRER_POLICY,
                        HeaderValue::from_static("no-referrer"),
                    ),
                    (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
                    (
                        CROSS_ORIGIN_OPENER_POLICY,
                        HeaderValue::from_static("same-origin"),
                    ),
                ],
                body.to_string(),
            )
                .into_response()
        }
    })
    .fallback(threadline_runtime::server::method_not_allowed)
}

const CROSS_ORIGIN_OPENER_POLICY: HeaderName =
    HeaderName::from_static("cross-origin-opener-policy");

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use tower::ServiceExt;

    fn settings(on: bool, websocket: Option<&str>) -> DemoSettings {
        DemoSettings {
            demo_page: on,
            demo_websocket_url: websocket.map(|url| WebsocketUrl::parse(url).expect("a URL")),
        }
    }

    async fn get(
        settings: &DemoSettings,
        path: &str,
    ) -> (StatusCode, Vec<(String, String)>, String) {
        let response = router::<()>(settings)
            .oneshot(Request::get(path).body(Body::empty()).expect("a request"))
            .await
            .expect("an answer");
        let status = response.status();
        let headers = response
            .headers()
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or_default().to_owned()))
            .collect();
        let body = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .expect("a body");
        (status, headers, String::from_utf8_lossy(&body).into_owned())
    }

    fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
        headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    #[tokio::test]
    async fn the_page_and_its_files_are_served_with_their_types_and_a_policy() {
        let on = settings(true, None);
        for (path, content_type, body) in [
            ("/demo/", HTML, INDEX),
            ("/demo", HTML, INDEX),
            ("/demo/demo.js", JAVASCRIPT, SCRIPT),
            ("/demo/demo.css", CSS, STYLE),
            ("/demo/threadline.js", JAVASCRIPT, CLIENT),
        ] {
            let (status, headers, served) = get(&on, path).await;
            assert_eq!(status, StatusCode::OK, "{path}");
            assert_eq!(
                header(&headers, "content-type"),
                Some(content_type),
                "{path}"
            );
            assert_eq!(served, body, "{path}");
            let policy = header(&headers, "content-security-policy").expect("a policy");
            assert!(policy.contains("default-src 'none'"), "{policy}");
            assert!(policy.contains("script-src 'self'"), "{policy}");
            assert!(policy.contains("connect-src 'self';"), "{policy}");
            assert_eq!(header(&headers, "x-content-type-options"), Some("nosniff"));
        }
        assert!(CLIENT.contains("export function createClient"));
        assert!(SCRIPT.contains(r#"from "/demo/threadline.js""#));
    }

    #[tokio::test]
    async fn a_websocket_url_goes_into_the_page_and_the_policy() {
        let on = settings(true, Some("ws://127.0.0.1:8001/"));
        let (_, headers, page) = get(&on, "/demo/").await;
        assert!(page
            .contains(r#"<meta name="threadline-websocket-url" content="ws://127.0.0.1:8001">"#));
        let policy = header(&headers, "content-security-policy").expect("a policy");
        assert!(
            policy.contains("connect-src 'self' ws://127.0.0.1:8001;"),
            "{policy}"
        );
        let behind = settings(true, Some("wss://chat.example.com/realtime"));
        let (_, headers, page) = get(&behind, "/demo/").await;
        assert!(page.contains(r#"content="wss://chat.example.com/realtime""#));
        let policy = header(&headers, "content-security-policy").expect("a policy");
        assert!(
            policy.contains("connect-src 'self' wss://chat.example.com;"),
            "{policy}"
        );
    }

    #[tokio::test]
    async fn without_the_setting_there_is_no_demo() {
        let (status, _, _) = get(&settings(false, None), "/demo/").await;
        assert_eq!(status, StatusCode::NOT_FOUND);
    }

    #[test]
    fn only_plain_websocket_urls_are_taken() {
        for good in [
            "ws://localhost:8001",
            "wss://chat.example.com",
            "ws://[::1]:8001/base",
        ] {
            assert!(WebsocketUrl::parse(good).is_ok(), "{good}");
        }
        for bad in [
            "http://localhost:8001",
            "localhost:8001",
            "ws://",
            "ws://:8001",
            "ws://x\"><script>",
            "ws://a b",
            "wss://example.com; script-src *",
            "ws://user@example.com",
        ] {
            assert!(WebsocketUrl::parse(bad).is_err(), "{bad}");
        }
    }
}
