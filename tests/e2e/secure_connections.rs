//! The roles against servers that insist on security, set up by the test: a nats-server that
//! requires TLS with client certificates and credentials (user/password, token, NKey), and a
//! PostgreSQL that accepts TLS connections only, reached with `sslmode=verify-full`, with and
//! without a client certificate.

use crate::harness::deployment::secure::{
    require_tls, Attempt, ClientCertificate, NatsAuth, Operator, Pki, SecureNats,
};
use crate::harness::deployment::{create_streams, env, send, servers, Env, Roles};
use crate::harness::postgres::Postgres;
use crate::harness::*;
use futures::StreamExt;
use serde_json::json;
use std::time::Duration;

/// NATS settings for the secure server: its URL, the test CA, the client certificate.
fn nats_tls(nats: &SecureNats, pki: &Pki) -> Env {
    env(&[
        ("NATS_URL", &nats.url()),
        ("NATS_TLS_CA", &pki.ca.display().to_string()),
        ("NATS_TLS_CERT", &pki.client_cert.display().to_string()),
        ("NATS_TLS_KEY", &pki.client_key.display().to_string()),
    ])
}

fn with(mut base: Env, more: &[(&str, &str)]) -> Env {
    base.extend(env(more));
    base
}

#[tokio::test]
async fn every_role_works_over_tls_with_credentials_to_nats_and_tls_only_postgres() {
    let pki = Pki::new();
    let nats = SecureNats::start(&pki, &NatsAuth::UserPassword("threadline", "s3cret"));
    let pg = Postgres::start().await;
    let database_url = require_tls(&pg, &pki, "threadline", ClientCertificate::NotAsked).await;
    let settings = with(
        nats_tls(&nats, &pki),
        &[
            ("NATS_USER", "threadline"),
            ("NATS_PASSWORD", "s3cret"),
            ("DATABASE_URL", &database_url),
        ],
    );
    let mut roles = Roles::default();
    let (api, thread) = api_and_projector_serve_a_thread(&mut roles, &settings).await;
    let gateway = roles.spawn("gateway", &settings).await;
    let (mut socket, _) = within(
        "opening a websocket",
        Duration::from_secs(15),
        tokio_tungstenite::connect_async(format!("ws://{gateway}/ws/chat/{thread}/")),
    )
    .await
    .expect("websocket");
    let posted = send(
        api,
        "POST",
        "/chat/message/",
        &[],
        Some(&json!({"user": "Ada", "thread": thread, "body": "over TLS", "send_by_user": true})),
    )
    .await;
    assert_eq!(posted.status, 201, "{}", posted.text);
    let frame = within("the frame", Duration::from_secs(15), socket.next())
        .await
        .expect("a frame")
        .expect("a frame");
    assert_eq!(frame.into_text().expect("text").as_str(), posted.text);
    let got = send(api, "GET", &format!("/chat/thread/{thread}/"), &[], None).await;
    assert_eq!(got.status, 200, "{}", got.text);
    assert_eq!(got.json()["messages"][0]["body"], "over TLS");

    // Every database connection of the roles is encrypted, and a plain one is refused.
    let admin = sqlx::PgPool::connect(&database_url)
        .await
        .expect("connecting over TLS");
    let (encrypted, plain): (i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE s.ssl), count(*) FILTER (WHERE NOT s.ssl) \
         FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
         WHERE a.datname = 'threadline' AND a.client_addr IS NOT NULL",
    )
    .fetch_one(&admin)
    .await
    .expect("pg_stat_ssl");
    assert!(encrypted >= 3, "{encrypted} encrypted connections");
    assert_eq!(plain, 0);
    let refused = sqlx::PgPool::connect(&format!("{}?sslmode=disable", pg.url("threadline"))).await;
    assert!(
        refused.is_err_and(|e| e.to_string().contains("pg_hba.conf")),
        "a plain connection was accepted"
    );
}

/// Waits until the attempt logs a line containing one of `needles`.
async fn refused_with(attempt: &Attempt, needles: &[&str]) {
    eventually(
        &format!("a refusal mentioning one of {needles:?}"),
        PROJECTION_TIMEOUT,
        || async {
            needles
                .iter()
                .any(|n| attempt.logs.contains(n))
                .then_some(())
        },
    )
    .await;
    assert!(
        !attempt.logs.contains("listening on"),
        "{}",
        attempt.logs.dump()
    );
}

#[tokio::test]
async fn wrong_credentials_an_unknown_ca_or_no_client_certificate_are_refused() {
    let pki = Pki::new();
    let nats = SecureNats::start(&pki, &NatsAuth::Token("the-token"));
    let tls = nats_tls(&nats, &pki);

    let wrong_token = Attempt::start("gateway", &with(tls.clone(), &[("NATS_TOKEN", "nope")]));
    refused_with(&wrong_token, &["uthorization violation"]).await;

    let other_ca = Pki::new();
    let untrusted = with(
        tls.clone(),
        &[
            ("NATS_TOKEN", "the-token"),
            ("NATS_TLS_CA", &other_ca.ca.display().to_string()),
        ],
    );
    let unknown_ca = Attempt::start("gateway", &untrusted);
    refused_with(&unknown_ca, &["invalid peer certificate"]).await;

    let no_client_cert = env(&[
        ("NATS_URL", &nats.url()),
        ("NATS_TLS_CA", &pki.ca.display().to_string()),
        ("NATS_TOKEN", "the-token"),
    ]);
    let anonymous = Attempt::start("gateway", &no_client_cert);
    refused_with(&anonymous, &["BadCertificate", "CertificateRequired"]).await;

    // With everything right the same server is reached.
    let settings = with(tls, &[("NATS_TOKEN", "the-token")]);
    create_streams(&settings).await;
    let mut roles = Roles::default();
    let gateway = roles.spawn("gateway", &settings).await;
    assert_eq!(send(gateway, "GET", "/readyz", &[], None).await.status, 200);
}

#[tokio::test]
async fn an_nkey_seed_authenticates_to_nats() {
    let pki = Pki::new();
    let user = nkeys::KeyPair::new_user();
    let nats = SecureNats::start(&pki, &NatsAuth::NKey(user.public_key()));
    let seed = user.seed().expect("the user's seed");
    let settings = with(nats_tls(&nats, &pki), &[("NATS_NKEY_SEED", &seed)]);
    create_streams(&settings).await;
    let mut roles = Roles::default();
    let gateway = roles.spawn("gateway", &settings).await;
    assert_eq!(send(gateway, "GET", "/readyz", &[], None).await.status, 200);

    let stranger = nkeys::KeyPair::new_user().seed().expect("another seed");
    let refused = Attempt::start(
        "gateway",
        &with(nats_tls(&nats, &pki), &[("NATS_NKEY_SEED", &stranger)]),
    );
    refused_with(&refused, &["uthorization violation"]).await;
}

#[tokio::test]
async fn a_creds_file_logs_in_to_a_nats_in_operator_mode() {
    let pki = Pki::new();
    let operator = Operator::new();
    let creds = operator.creds_file.display().to_string();
    // Kept to the end of the test: dropping the operator removes the creds file.
    let auth = NatsAuth::Operator(operator);
    let nats = SecureNats::start(&pki, &auth);
    let pg = Postgres::start().await;
    let settings = with(
        nats_tls(&nats, &pki),
        &[
            ("NATS_CREDS_FILE", &creds),
            ("DATABASE_URL", &pg.url("threadline")),
        ],
    );
    let mut roles = Roles::default();
    api_and_projector_serve_a_thread(&mut roles, &settings).await;

    // A user of another operator's account is not let in.
    let stranger = Operator::new();
    let refused = Attempt::start(
        "gateway",
        &with(
            nats_tls(&nats, &pki),
            &[(
                "NATS_CREDS_FILE",
                &stranger.creds_file.display().to_string(),
            )],
        ),
    );
    refused_with(&refused, &["uthorization violation"]).await;
}

#[tokio::test]
async fn a_database_url_without_tls_is_refused_by_a_tls_only_postgres() {
    let pki = Pki::new();
    let (nats, pg) = servers().await;
    require_tls(&pg, &pki, "threadline", ClientCertificate::NotAsked).await;
    let plain = env(&[
        ("NATS_URL", &nats.url()),
        (
            "DATABASE_URL",
            &format!("{}?sslmode=disable", pg.url("threadline")),
        ),
    ]);
    let attempt = Attempt::start("api", &plain);
    refused_with(&attempt, &["no encryption", "pg_hba.conf"]).await;
}

#[tokio::test]
async fn a_postgres_that_wants_client_certificates_takes_the_roles_with_sslcert_and_sslkey() {
    let pki = Pki::new();
    let (nats, pg) = servers().await;
    let database_url = require_tls(&pg, &pki, "threadline", ClientCertificate::Required).await;
    let settings = env(&[("NATS_URL", &nats.url()), ("DATABASE_URL", &database_url)]);
    let mut roles = Roles::default();
    api_and_projector_serve_a_thread(&mut roles, &settings).await;

    // The same URL without the certificate is refused by the server.
    let without = database_url
        .split('&')
        .filter(|part| !part.starts_with("sslcert=") && !part.starts_with("sslkey="))
        .collect::<Vec<_>>()
        .join("&");
    let anonymous = env(&[("NATS_URL", &nats.url()), ("DATABASE_URL", &without)]);
    let attempt = Attempt::start("api", &anonymous);
    refused_with(&attempt, &["requires a valid client certificate"]).await;
}

/// Starts the api and the projector with `settings`; a thread is created and read back. The
/// api's address and the thread's id.
async fn api_and_projector_serve_a_thread(
    roles: &mut Roles,
    settings: &Env,
) -> (std::net::SocketAddr, String) {
    let api = roles.spawn("api", settings).await;
    roles.spawn("projector", settings).await;
    let created = send(
        api,
        "POST",
        "/chat/thread/",
        &[],
        Some(&json!({"user": "Ada"})),
    )
    .await;
    assert_eq!(created.status, 201, "{}", created.text);
    let thread = created.json()["id"].as_str().expect("id").to_owned();
    let got = send(api, "GET", &format!("/chat/thread/{thread}/"), &[], None).await;
    assert_eq!(got.status, 200, "{}", got.text);
    (api, thread)
}
