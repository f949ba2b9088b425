//! threadline on a 3-node NATS JetStream cluster with every stream at 3 replicas and two
//! replicas of each role: a node killed under keyed load (the event stream's leader for 5 s,
//! then a follower; in a second test the node both projectors are connected to), or a replica
//! of every role killed (a third test), loses nothing and doubles nothing for clients that
//! retry 503s with their `Idempotency-Key` and resume their sockets with `since`.
//! The figures the test prints (503s, the election's length, latency) are in
//! docs/behaviour.md.

use crate::harness::client::{PROJECTOR_CONSUMER, STREAM};
use crate::harness::*;
use serde_json::{json, Value};
use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The close code of a socket too far behind to resume: GET the thread first.
const LOAD_THE_THREAD_FIRST: u16 = 4000;

/// How long one post may take, retries of its 503s included.
const POST_DEADLINE: Duration = Duration::from_secs(60);

/// How long after a run in which the projectors' node was killed the read model may take to
/// hold every message: the events lost with the connection come again the consumer's
/// acknowledgement wait (`PROJECTOR_ACK_WAIT`, 5 s) after the kill, 2.5 s into a run of at
/// least 7.5 s; with room. (With the 30 s wait of earlier versions it took about 25 s.)
const CATCH_UP_BOUND: Duration = Duration::from_secs(15);

/// The index of the node that leads the event stream (nodes are named `n0`, `n1`, …).
async fn stream_leader(app: &App) -> usize {
    let jetstream = app.jetstream().await;
    eventually(
        "the event stream to have a leader",
        Duration::from_secs(60),
        || {
            let jetstream = jetstream.clone();
            async move {
                let mut stream = jetstream.get_stream(STREAM).await.ok()?;
                let info = stream.info().await.ok()?;
                let leader = info.cluster.as_ref()?.leader.clone()?;
                leader.strip_prefix('n')?.parse().ok()
            }
        },
    )
    .await
}

/// What a run of keyed posts saw.
struct Posted {
    /// The message ids answered 201, by poster, in the order each poster posted them.
    by_poster: Vec<Vec<String>>,
    /// How many answers were 503 (or a refused connection), each retried with its key.
    unavailable: usize,
    /// The longest time a post took until its 201, retries included.
    slowest: Duration,
    /// The time from the first post answered 503 to the last one that was.
    unavailable_span: Duration,
}

/// Posts `count` messages to `thread` at `per_second` through both api replicas (post `k`
/// through replica `k % 2`), each under its own `Idempotency-Key`, from `posters` clients
/// that post one at a time; a 503 or a refused connection is retried with the same key and
/// body through the other replica. `during` runs meanwhile.
async fn keyed_posts<F: std::future::Future<Output = ()>>(
    clients: &[Client; 2],
    thread: &str,
    count: usize,
    per_second: u32,
    during: F,
) -> Posted {
    const POSTERS: usize = 8;
    let started = Instant::now();
    let every = Duration::from_secs(1) / per_second;
    let failures: Arc<Mutex<Vec<Instant>>> = Arc::default();
    let posters: Vec<_> = (0..POSTERS)
        .map(|poster| {
            let clients = clients.clone();
            let thread = thread.to_owned();
            let failures = failures.clone();
            tokio::spawn(async move {
                let mut ids = Vec::new();
                let mut slowest = Duration::ZERO;
                for k in (poster..count).step_by(POSTERS) {
                    let due = started + every * k as u32;
                    tokio::time::sleep_until(due.into()).await;
                    let body = json!({"user": {"poster": poster}, "thread": thread,
                                      "body": format!("m{k}"), "send_by_user": true});
                    let key = new_id();
                    let sent = Instant::now();
                    let mut attempt = 0;
                    let id = loop {
                        let client = &clients[(k + attempt) % 2];
                        match client.post_with_key("/chat/message/", &body, &key).await {
                            Ok(r) if r.status == 201 => break r.json()["id"].clone(),
                            Ok(r) => assert_eq!(r.status, 503, "post {k}: {}", r.text),
                            Err(_) => {}
                        }
                        failures
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .push(Instant::now());
                        assert!(sent.elapsed() < POST_DEADLINE, "post {k} never got its 201");
                        attempt += 1;
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    };
                    slowest = slowest.max(sent.elapsed());
                    ids.push(id.as_str().expect("an id").to_owned());
                }
                (ids, slowest)
            })
        })
        .collect();
    during.await;
    let mut by_poster = Vec::new();
    let mut slowest = Duration::ZERO;
    for poster in posters {
        let (ids, slow) = poster.await.expect("a poster panicked");
        by_poster.push(ids);
        slowest = slowest.max(slow);
    }
    let failures = failures.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let unavailable_span = match (failures.first(), failures.last()) {
        (Some(first), Some(last)) => *last - *first,
        _ => Duration::ZERO,
    };
    Posted {
        by_poster,
        unavailable: failures.len(),
        slowest,
        unavailable_span,
    }
}

/// A socket on `client`'s gateway that starts after message `from` and resumes with `since`
/// (its last message) whenever it drops or falls silent, and, told it is too far behind
/// (4000), takes what it missed from GET first, until it has `expected` messages or two
/// minutes have passed; the ids it received, in order.
fn listener(
    client: Client,
    thread: String,
    from: String,
    expected: usize,
) -> tokio::task::JoinHandle<Vec<String>> {
    tokio::spawn(async move {
        let deadline = Instant::now() + Duration::from_secs(120);
        let mut ids: Vec<String> = Vec::new();
        let mut resumed = 0;
        let mut loaded = 0;
        while ids.len() < expected && Instant::now() < deadline {
            let since = ids.last().unwrap_or(&from);
            let path = format!("/ws/chat/{thread}/?since={since}");
            let Ok(mut ws) = client.try_connect_ws(&path).await else {
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            };
            resumed += 1;
            while ids.len() < expected {
                match ws.try_next_text(Duration::from_secs(5)).await {
                    Some(text) => {
                        let message: Value = serde_json::from_str(&text).expect("JSON");
                        ids.push(message["id"].as_str().expect("an id").to_owned());
                    }
                    None => break,
                }
            }
            // Too far behind for a resume (the gateway sends at most 1,000 messages before
            // the live ones): as the contract's clients do, the thread from GET, then a
            // socket from its last message.
            if ws.closed_with() == Some(LOAD_THE_THREAD_FIRST) {
                loaded += 1;
                let since = ids.last().unwrap_or(&from).clone();
                let listed: Vec<String> = client.get_thread(&thread).await["messages"]
                    .as_array()
                    .expect("messages")
                    .iter()
                    .map(|m| m["id"].as_str().expect("an id").to_owned())
                    .collect();
                let at = listed
                    .iter()
                    .position(|id| *id == since)
                    .expect("GET lists the message the listener got last");
                ids.extend(listed[at + 1..].iter().cloned());
            }
        }
        eprintln!(
            "listener on {}: {} messages, {resumed} connection(s), the thread loaded {loaded} time(s)",
            client.ws_addr,
            ids.len()
        );
        ids
    })
}

/// Every post got its 201 (keyed_posts asserts it), and GET on both api replicas and every
/// listener hold each message once, in each poster's order.
async fn assert_exactly_once(
    app: &App,
    thread: &str,
    before: &[String],
    posted: &Posted,
    listened: Vec<Vec<String>>,
) {
    let mut all: Vec<String> = before.to_vec();
    all.extend(posted.by_poster.iter().flatten().cloned());
    let distinct: HashSet<&String> = all.iter().collect();
    assert_eq!(distinct.len(), all.len(), "one id answered to two posts");
    let in_order = |seen: &[String], whose: &str| {
        assert_eq!(
            seen.len(),
            all.len(),
            "{whose}: {} messages, {} posted",
            seen.len(),
            all.len()
        );
        let seen_set: HashSet<&String> = seen.iter().collect();
        assert_eq!(seen_set.len(), seen.len(), "{whose} holds a message twice");
        assert_eq!(
            seen_set, distinct,
            "{whose} does not hold exactly the posted messages"
        );
        for ids in &posted.by_poster {
            let positions: Vec<usize> = ids
                .iter()
                .map(|id| seen.iter().position(|s| s == id).expect("seen"))
                .collect();
            assert!(
                positions.windows(2).all(|w| w[0] < w[1]),
                "{whose}: a poster's messages out of order"
            );
        }
    };
    for api in 0..2 {
        let body = app.client(api, 0).get_thread(thread).await;
        let ids: Vec<String> = body["messages"]
            .as_array()
            .expect("messages")
            .iter()
            .map(|m| m["id"].as_str().expect("an id").to_owned())
            .collect();
        in_order(&ids, &format!("GET on api #{api}"));
    }
    for (gateway, ids) in listened.iter().enumerate() {
        let mut ids = ids.clone();
        // A listener that joined after the first messages resumes from the thread's start.
        let missing: Vec<String> = before
            .iter()
            .filter(|b| !ids.contains(b))
            .cloned()
            .collect();
        ids.splice(0..0, missing);
        in_order(&ids, &format!("the listener on gateway #{gateway}"));
    }
}

/// A 3-node cluster with two replicas of each role, a client of each api replica (on the
/// gateway of the same index), and a thread holding one message: the app, the clients, the
/// thread and that message's id.
async fn cluster_with_a_thread() -> (App, [Client; 2], String, Vec<String>) {
    let app = options()
        .nats_cluster(3)
        .replicas("api", 2)
        .replicas("projector", 2)
        .replicas("gateway", 2)
        .start()
        .await;
    let clients = [app.client(0, 0), app.client(1, 1)];
    let thread = clients[0].new_thread().await;
    let first = clients[0].say(&thread, "before").await;
    let before = vec![first.json()["id"].as_str().expect("an id").to_owned()];
    (app, clients, thread, before)
}

#[tokio::test]
async fn a_node_killed_under_keyed_load_loses_nothing_and_doubles_nothing() {
    let (mut app, clients, thread, before) = cluster_with_a_thread().await;

    // 1. The event stream's leader's node, SIGKILLed for 5 s mid-run, then restarted.
    let leader = stream_leader(&app).await;
    eprintln!("the event stream's leader: n{leader}");
    let listeners: Vec<_> = (0..2)
        .map(|g| listener(app.client(g, g), thread.clone(), before[0].clone(), 1_500))
        .collect();
    // Watched from another node, each question bounded: the leader's node is gone.
    let (user, password) = app.nats_login("operator").expect("the operator's login");
    let watcher = Client::new(
        app.addr("api", 0),
        app.addr("gateway", 0),
        app.nats_node((leader + 1) % 3).url(),
    )
    .with_nats_login(&user, &password);
    let mut jetstream = watcher.jetstream().await;
    jetstream.set_timeout(Duration::from_millis(500));
    let election = Arc::new(Mutex::new(None));
    // What the api replicas' /readyz says meanwhile.
    let stop = tokio_util::sync::CancellationToken::new();
    let apis = (0..2)
        .map(|i| (format!("api #{i}"), app.addr("api", i)))
        .collect();
    let readyz = watch_readyz(app.client(0, 0), apis, stop.clone());
    let posted = {
        let app_ref = &mut app;
        let election = election.clone();
        keyed_posts(&clients, &thread, 1_500, 200, async move {
            tokio::time::sleep(Duration::from_millis(2_500)).await;
            app_ref.nats_node(leader).kill();
            let killed = Instant::now();
            // The election: until another node answers as the stream's leader.
            let elected = async {
                loop {
                    if let Ok(mut stream) = jetstream.get_stream(STREAM).await {
                        if let Ok(info) = stream.info().await {
                            let now = info.cluster.as_ref().and_then(|c| c.leader.clone());
                            if now.is_some_and(|n| n != format!("n{leader}")) {
                                return killed.elapsed();
                            }
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            };
            // The node comes back after 5 s, whether or not the others have elected a leader
            // by then (nats-server's election timeout is several seconds).
            let restart = async {
                tokio::time::sleep(Duration::from_secs(5).saturating_sub(killed.elapsed())).await;
                app_ref.nats_node(leader).start_again();
            };
            let (took, ()) = tokio::join!(
                tokio::time::timeout(Duration::from_secs(30), elected),
                restart
            );
            *election.lock().unwrap_or_else(|e| e.into_inner()) = took.ok();
        })
        .await
    };
    let election = *election.lock().unwrap_or_else(|e| e.into_inner());
    let mut listened = Vec::new();
    for l in listeners {
        listened.push(l.await.expect("a listener panicked"));
    }
    let new_leader = stream_leader(&app).await;
    // Every api replica says it is ready again once a leader is elected, and said why it was
    // not meanwhile.
    for api in 0..2 {
        let client = app.client(api, 0);
        let addr = app.addr("api", api);
        eventually(
            &format!("api #{api} to answer /readyz with 200 again"),
            Duration::from_secs(30),
            || async {
                let answer = client.try_request_to(addr, "GET", "/readyz", None, None);
                matches!(answer.await, Ok(r) if r.status == 200).then_some(())
            },
        )
        .await;
    }
    stop.cancel();
    let readyz = readyz.await.expect("the readyz watcher panicked");
    for (name, answers) in &readyz {
        let reasons: HashSet<&str> = answers
            .iter()
            .map(|(_, status, body)| {
                if body.contains("no leader") {
                    "no leader"
                } else if body.contains("not connected") {
                    "not connected"
                } else if *status == 0 {
                    "no answer"
                } else {
                    "other"
                }
            })
            .collect();
        eprintln!(
            "{name}: /readyz not 200 {} times, from {:?} to {:?} after the watch began: {reasons:?}",
            answers.len(),
            answers.first().map(|a| a.0),
            answers.last().map(|a| a.0)
        );
    }
    assert!(
        readyz
            .iter()
            .flat_map(|(_, a)| a)
            .any(|(_, status, body)| *status == 503
                && body.contains("the event stream has no leader")),
        "no api replica's /readyz said the stream had no leader during the election: {readyz:?}"
    );
    eprintln!(
        "leader killed: {} posts, {} answers 503 (retried), 503s for {:?}, slowest post {:?}, \
         election {election:?}, leader now n{new_leader}",
        1_500, posted.unavailable, posted.unavailable_span, posted.slowest
    );
    assert!(
        election.is_some(),
        "no other node led the stream within 30 s"
    );
    assert_exactly_once(&app, &thread, &before, &posted, listened).await;
    let mut before: Vec<String> = before;
    before.extend(posted.by_poster.iter().flatten().cloned());

    // 2. A follower's node: nothing a client notices beyond retried 503s.
    let leader = stream_leader(&app).await;
    let follower = (leader + 1) % 3;
    let posted = {
        let app_ref = &mut app;
        keyed_posts(&clients, &thread, 300, 200, async move {
            tokio::time::sleep(Duration::from_millis(500)).await;
            app_ref.nats_node(follower).kill();
        })
        .await
    };
    eprintln!(
        "follower n{follower} killed: {} answers 503 (retried), slowest post {:?}",
        posted.unavailable, posted.slowest
    );
    assert_exactly_once(&app, &thread, &before, &posted, Vec::new()).await;
    app.nats_node(follower).start_again();
    stream_leader(&app).await;
}

/// Where the projector stands against the stream, as the test prints it: the stream's last
/// sequence and message count, the consumer's acknowledgement floor and what it has out, and
/// the thread's rows in the read model.
async fn projection_state(
    jetstream: &async_nats::jetstream::Context,
    db: &sqlx::PgPool,
    thread: &str,
) -> String {
    let stream = match jetstream.get_stream(STREAM).await {
        Ok(mut stream) => match stream.info().await {
            Ok(info) => format!(
                "stream last seq {} ({} messages)",
                info.state.last_sequence, info.state.messages
            ),
            Err(e) => format!("stream info: {e}"),
        },
        Err(e) => format!("stream: {e}"),
    };
    let consumer = match jetstream.get_stream(STREAM).await {
        Ok(stream) => match stream.consumer_info(PROJECTOR_CONSUMER).await {
            Ok(info) => format!(
                "consumer: ack floor {}, delivered {}, ack pending {}, redelivered {}, \
                 pending {}, leader {:?}",
                info.ack_floor.stream_sequence,
                info.delivered.stream_sequence,
                info.num_ack_pending,
                info.num_redelivered,
                info.num_pending,
                info.cluster.as_ref().and_then(|c| c.leader.clone())
            ),
            Err(e) => format!("consumer info: {e}"),
        },
        Err(e) => format!("stream: {e}"),
    };
    let id = uuid::Uuid::parse_str(thread).expect("a thread id");
    let rows: Result<(i64, Option<i64>), _> =
        sqlx::query_as("SELECT count(*), max(stream_seq) FROM messages WHERE thread_id = $1")
            .bind(id)
            .fetch_one(db)
            .await;
    let rows = match rows {
        Ok((count, last)) => format!("read model: {count} messages, last seq {last:?}"),
        Err(e) => format!("read model: {e}"),
    };
    format!("{stream}; {consumer}; {rows}")
}

#[tokio::test]
async fn the_projectors_node_killed_under_keyed_load_loses_nothing() {
    let mut app = options()
        .nats_cluster(3)
        .replicas("api", 2)
        .replicas("projector", 0)
        .replicas("gateway", 2)
        .start()
        .await;
    // Both projectors connect to one node that does not lead the event stream (the leader's
    // loss is the test above): a seed list of that node alone; they learn the others from it.
    let leader = stream_leader(&app).await;
    let node = (leader + 1) % 3;
    let node_url = app.nats_node(node).url();
    for _ in 0..2 {
        app.start_replica("projector", &[("NATS_URL", &node_url)])
            .await;
    }
    let clients = [app.client(0, 0), app.client(1, 1)];
    let thread = clients[0].new_thread().await;
    let first = clients[0].say(&thread, "before").await;
    let before = vec![first.json()["id"].as_str().expect("an id").to_owned()];

    // Watched from the two other nodes.
    let (user, password) = app.nats_login("operator").expect("the operator's login");
    let others: Vec<String> = (1..3)
        .map(|i| app.nats_node((node + i) % 3).url())
        .collect();
    let watcher = Client::new(app.addr("api", 0), app.addr("gateway", 0), others.join(","))
        .with_nats_login(&user, &password);
    let mut jetstream = watcher.jetstream().await;
    jetstream.set_timeout(Duration::from_secs(2));
    let db = app.db().await;
    eprintln!(
        "projectors on n{node}, stream leader n{leader}; {}",
        projection_state(&jetstream, &db, &thread).await
    );

    let posted = {
        let app_ref = &mut app;
        keyed_posts(&clients, &thread, 1_500, 200, async move {
            tokio::time::sleep(Duration::from_millis(2_500)).await;
            app_ref.nats_node(node).kill();
            tokio::time::sleep(Duration::from_secs(5)).await;
            app_ref.nats_node(node).start_again();
        })
        .await
    };
    let done = Instant::now();
    eprintln!(
        "projectors' node killed: {} answers 503 (retried), slowest post {:?}; {}",
        posted.unavailable,
        posted.slowest,
        projection_state(&jetstream, &db, &thread).await
    );
    for projector in 0..2 {
        assert!(
            app.logs("projector", projector)
                .contains("lost the connection to NATS"),
            "projector #{projector} was not connected to n{node}"
        );
    }
    // The events the broker had sent down the lost connection are delivered again after the
    // consumer's acknowledgement wait (5 s from the kill); until then the read model lacks
    // them and the acknowledgement floor stays below them.
    let expected = before.len() + posted.by_poster.iter().map(Vec::len).sum::<usize>();
    let full = format!("read model: {expected} messages");
    eventually(
        "the read model to hold every message",
        CATCH_UP_BOUND,
        || {
            let (jetstream, db, thread, full) = (&jetstream, &db, &thread, &full);
            async move {
                let state = projection_state(jetstream, db, thread).await;
                eprintln!("{:>6.1?} after the run: {state}", done.elapsed());
                if state.contains(full.as_str()) {
                    return Some(());
                }
                tokio::time::sleep(Duration::from_secs(2)).await;
                None
            }
        },
    )
    .await;
    assert_exactly_once(&app, &thread, &before, &posted, Vec::new()).await;
    eprintln!("caught up {:?} after the run", done.elapsed());
}

/// How often each `/readyz` is asked while replicas are killed.
const READYZ_EVERY: Duration = Duration::from_millis(200);

/// A `/readyz` answer that was not 200: how long after the watch began it came, its status
/// (0 for no answer) and its body.
type NotReady = (Duration, u16, String);

/// Asks `/readyz` of each of `addrs` (named) every [`READYZ_EVERY`] until `stop` fires; for
/// each, its answers that were not 200.
fn watch_readyz(
    client: Client,
    addrs: Vec<(String, std::net::SocketAddr)>,
    stop: tokio_util::sync::CancellationToken,
) -> tokio::task::JoinHandle<Vec<(String, Vec<NotReady>)>> {
    tokio::spawn(async move {
        let started = Instant::now();
        let mut seen: Vec<(String, Vec<NotReady>)> = addrs
            .iter()
            .map(|(name, _)| (name.clone(), Vec::new()))
            .collect();
        while !stop.is_cancelled() {
            for (i, (_, addr)) in addrs.iter().enumerate() {
                let answer = client
                    .try_request_to(*addr, "GET", "/readyz", None, None)
                    .await;
                let (status, body) = match answer {
                    Ok(r) => (r.status, r.text),
                    Err(e) => (0, e.to_string()),
                };
                if status != 200 {
                    seen[i].1.push((started.elapsed(), status, body));
                }
            }
            tokio::time::sleep(READYZ_EVERY).await;
        }
        seen
    })
}

#[tokio::test]
async fn a_replica_of_every_role_killed_under_keyed_load_loses_nothing_and_doubles_nothing() {
    let (mut app, clients, thread, before) = cluster_with_a_thread().await;
    let listeners: Vec<_> = (0..2)
        .map(|g| listener(app.client(g, g), thread.clone(), before[0].clone(), 1_500))
        .collect();
    // The replicas that stay: each says it is ready throughout.
    let stop = tokio_util::sync::CancellationToken::new();
    let survivors = ["api", "projector", "gateway"]
        .map(|role| (format!("{role} #0"), app.addr(role, 0)))
        .to_vec();
    let readyz = watch_readyz(app.client(0, 0), survivors, stop.clone());

    // api #1 (with posts in flight through it), projector #1 (with a batch in hand) and
    // gateway #1 (with a listener on it) SIGKILLed 2.5 s into the run, started again 3 s later.
    let posted = {
        let app_ref = &mut app;
        keyed_posts(&clients, &thread, 1_500, 200, async move {
            tokio::time::sleep(Duration::from_millis(2_500)).await;
            for role in ["api", "projector", "gateway"] {
                app_ref.kill(role, 1);
            }
            tokio::time::sleep(Duration::from_secs(3)).await;
            for role in ["api", "projector", "gateway"] {
                app_ref.restart(role, 1).await;
            }
        })
        .await
    };
    let mut listened = Vec::new();
    for l in listeners {
        listened.push(l.await.expect("a listener panicked"));
    }
    stop.cancel();
    let readyz = readyz.await.expect("the readyz watcher panicked");
    eprintln!(
        "a replica of each role killed: {} answers 503 or no answer (retried), slowest post {:?}",
        posted.unavailable, posted.slowest
    );
    for (name, answers) in &readyz {
        assert!(
            answers.is_empty(),
            "{name} answered /readyz other than 200 while it could serve: {answers:?}"
        );
    }
    // The api killed had posts in flight: each was retried through the other with its key.
    assert!(
        posted.unavailable > 0,
        "no post was in flight on the api killed"
    );
    assert_exactly_once(&app, &thread, &before, &posted, listened).await;
    // The restarted replicas serve: a post through the api restarted reaches the listener on
    // the gateway restarted.
    let client = app.client(1, 1);
    let mut ws = client.connect_ws(&thread).await;
    let after = client.say(&thread, "after the restarts").await;
    assert_eq!(after.status, 201, "{}", after.text);
    assert_eq!(ws.next_text().await, after.text);
}
