//! A role's `GET /metrics`, read as Prometheus' text format.

use super::app::App;
use std::net::SocketAddr;

/// Sum of the samples of `name` whose labels include every one of `labels`; `None` if there
/// is no such sample.
pub fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut found = None;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let (metric, label_text) = series.split_once('{').unwrap_or((series, ""));
        if metric != name {
            continue;
        }
        if labels
            .iter()
            .all(|(k, v)| label_text.contains(&format!("{k}=\"{v}\"")))
        {
            let value: f64 = value.parse().expect("a sample value");
            found = Some(found.unwrap_or(0.0) + value);
        }
    }
    found
}

pub async fn scrape(app: &App, addr: SocketAddr) -> String {
    let response = app.request_to(addr, "GET", "/metrics", None, None).await;
    assert_eq!(response.status, 200, "{}", response.text);
    assert!(
        response
            .content_type
            .as_deref()
            .is_some_and(|ct| ct.starts_with("text/plain")),
        "content type {:?}",
        response.content_type
    );
    response.text
}
