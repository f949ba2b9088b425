//! The demo page (`/demo/`, `DEMO_PAGE=true`) in a real browser: Debian's Chromium, headless,
//! driven through chromedriver by WebDriver, against real roles. A message posted from the
//! visitor's panel shows in both panels; an agent's reply published straight to NATS (the Slack
//! path) shows in the visitor's panel within a second; the page's gateway stopped while 5
//! messages are posted and started again: the page shows each once, in order, without a
//! reload. The page also works on its own origin (`threadline all`) and on a phone's width,
//! and the README's snippet, saved as a page of another origin, chats.
//!
//! The test saves a screenshot of the page at `$CARGO_TARGET_TMPDIR/demo.png`; with
//! `UPDATE_SCREENSHOTS=1` it also writes it to `docs/images/demo.png`, the README's image.
//! `scripts/test` installs `chromium` and `chromium-driver` when they are missing.

use crate::harness::process::{drain, Logs};
use crate::harness::*;
use fantoccini::{Client as Browser, ClientBuilder, Locator};
use serde_json::{json, Value};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const CHROMEDRIVER: &str = "chromedriver";
const CHROMIUM: &str = "/usr/bin/chromium";

/// How long the page may take to show what the test waits for, reconnects included.
const PAGE_TIMEOUT: Duration = Duration::from_secs(30);

/// chromedriver and the browser session it started; the browser goes with its session, and
/// chromedriver (with whatever it started) is killed by its process group on drop.
struct Chromium {
    driver: Child,
    browser: Option<Browser>,
    _profile: TempDir,
}

/// A directory removed on drop: the browser's profile, new for each run.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl Chromium {
    async fn start() -> Chromium {
        let logs = Logs::new("chromedriver");
        let mut driver = Command::new(CHROMEDRIVER)
            .arg("--port=0")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Its own process group, so that the browser processes it starts go with it.
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start {CHROMEDRIVER} ({e}): install Debian's chromium and \
                     chromium-driver (scripts/test does)"
                )
            });
        let lines = drain(driver.stdout.take().expect("stdout"), logs.clone());
        drain(driver.stderr.take().expect("stderr"), logs.clone());
        let port = tokio::task::spawn_blocking(move || {
            let deadline = Instant::now() + Duration::from_secs(30);
            while let Ok(line) =
                lines.recv_timeout(deadline.saturating_duration_since(Instant::now()))
            {
                if let Some(port) =
                    line.strip_prefix("ChromeDriver was started successfully on port ")
                {
                    return port.trim_end_matches('.').parse::<u16>().ok();
                }
            }
            None
        })
        .await
        .expect("reading chromedriver's output")
        .unwrap_or_else(|| panic!("chromedriver did not start:\n{}", logs.dump()));

        let profile = TempDir(std::env::temp_dir().join(format!("tl-e2e-chromium-{}", new_id())));
        let mut args = vec![
            "--headless".to_owned(),
            "--disable-gpu".to_owned(),
            "--disable-dev-shm-usage".to_owned(),
            "--disable-quic".to_owned(),
            "--no-first-run".to_owned(),
            // This machine reaches no outside host: nothing in the background tries to.
            "--disable-background-networking".to_owned(),
            "--disable-component-update".to_owned(),
            "--disable-sync".to_owned(),
            "--window-size=1280,860".to_owned(),
            format!("--user-data-dir={}", profile.0.display()),
        ];
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            // Chromium's sandbox refuses to run as root.
            args.push("--no-sandbox".to_owned());
        }
        let mut capabilities = serde_json::Map::new();
        capabilities.insert("browserName".into(), json!("chrome"));
        capabilities.insert(
            "goog:chromeOptions".into(),
            json!({ "binary": CHROMIUM, "args": args }),
        );
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        let browser = ClientBuilder::new(connector)
            .capabilities(capabilities)
            .connect(&format!("http://127.0.0.1:{port}"))
            .await
            .unwrap_or_else(|e| panic!("cannot start {CHROMIUM}: {e}\n{}", logs.dump()));
        Chromium {
            driver,
            browser: Some(browser),
            _profile: profile,
        }
    }

    fn page(&self) -> &Browser {
        self.browser
            .as_ref()
            .expect("the browser runs until the end")
    }

    /// Ends the session (the browser quits), then chromedriver.
    async fn quit(mut self) {
        if let Some(browser) = self.browser.take() {
            let _ = browser.close().await;
        }
    }
}

impl Drop for Chromium {
    fn drop(&mut self) {
        // SAFETY: kill has no preconditions; the group is chromedriver's own (process_group(0)).
        unsafe {
            libc::kill(-(self.driver.id() as i32), libc::SIGKILL);
        }
        let _ = self.driver.wait();
    }
}

/// Runs `script` in the page (its `arguments` are `args`) and returns its value.
async fn run(page: &Browser, script: &str, args: Vec<Value>) -> Value {
    page.execute(script, args)
        .await
        .unwrap_or_else(|e| panic!("running {script:?} in the page: {e}"))
}

/// The ids of the messages a panel (`visitor` or `agent`) shows, top to bottom.
async fn shown(page: &Browser, panel: &str) -> Vec<String> {
    let ids = run(
        page,
        "return [...document.querySelectorAll(`#${arguments[0]}-messages li`)].map(li => li.dataset.id);",
        vec![json!(panel)],
    )
    .await;
    serde_json::from_value(ids).expect("a list of ids")
}

/// A panel's connection state (`open` when its socket is live).
async fn state(page: &Browser, panel: &str) -> String {
    let state = run(
        page,
        "return document.getElementById(`${arguments[0]}-status`).dataset.state || '';",
        vec![json!(panel)],
    )
    .await;
    state.as_str().unwrap_or_default().to_owned()
}

/// Polls the page until `check` holds, for at most `timeout`.
async fn until<F, Fut>(what: &str, timeout: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !check().await {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn type_into(page: &Browser, css: &str, text: &str) {
    let field = page
        .find(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("no {css}: {e}"));
    field.clear().await.expect("clearing a field");
    field.send_keys(text).await.expect("typing");
}

async fn click(page: &Browser, css: &str) {
    page.find(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("no {css}: {e}"))
        .click()
        .await
        .unwrap_or_else(|e| panic!("clicking {css}: {e}"));
}

/// Opens the demo at `url`, starts a chat as Ada and waits until both panels are live; the
/// thread's id.
async fn start_chat(page: &Browser, url: &str) -> String {
    page.goto(url).await.expect("opening the demo page");
    type_into(page, "#visitor-name", "Ada").await;
    click(page, "#start").await;
    until("both panels to be live", PAGE_TIMEOUT, || async {
        state(page, "visitor").await == "open" && state(page, "agent").await == "open"
    })
    .await;
    let thread = run(
        page,
        "return document.getElementById('agent-thread').value;",
        vec![],
    )
    .await;
    thread.as_str().expect("the thread's id").to_owned()
}

/// Sends `text` from the visitor's panel; its id once both panels show it.
async fn say_from_visitor(page: &Browser, text: &str) -> String {
    type_into(page, "#visitor-input", text).await;
    click(page, "#visitor-form button").await;
    let deadline = Instant::now() + PAGE_TIMEOUT;
    loop {
        let found = run(
            page,
            "const [text] = arguments;
             const find = (panel) => [...document.querySelectorAll(`#${panel}-messages li`)]
               .find(li => li.querySelector('.body').textContent === text);
             const visitor = find('visitor'), agent = find('agent');
             return visitor && agent && visitor.dataset.id === agent.dataset.id ? visitor.dataset.id : null;",
            vec![json!(text)],
        )
        .await;
        if let Some(id) = found.as_str() {
            return id.to_owned();
        }
        assert!(
            Instant::now() < deadline,
            "{text:?} did not show in both panels"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Where the test keeps its screenshot, and the README's copy.
fn save_screenshot(png: &[u8]) {
    let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("demo.png");
    std::fs::write(&out, png).expect("writing the screenshot");
    eprintln!("screenshot of the demo page: {}", out.display());
    if std::env::var("UPDATE_SCREENSHOTS").is_ok_and(|v| v == "1") {
        let readme = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("docs/images/demo.png");
        std::fs::write(&readme, png).expect("writing docs/images/demo.png");
        eprintln!("and {}", readme.display());
    }
}

#[tokio::test]
async fn the_demo_page_chats_live_and_heals_after_its_gateway_restarts() {
    // The api starts once the gateway listens: the page learns the gateway's address from it.
    let mut app = options().replicas("api", 0).start().await;
    let gateway = app.addr("gateway", 0);
    let websocket = format!("ws://{gateway}");
    let api_index = app
        .start_replica(
            "api",
            &[("DEMO_PAGE", "true"), ("DEMO_WEBSOCKET_URL", &websocket)],
        )
        .await;
    let api = app.client(api_index, 0);
    let demo = format!("http://{}/demo/", api.api_addr);
    let served = api.get("/demo/").await;
    assert_eq!(served.status, 200);
    assert_eq!(
        served.content_type.as_deref(),
        Some("text/html; charset=utf-8")
    );

    let chromium = Chromium::start().await;
    let page = chromium.page();
    let thread = start_chat(page, &demo).await;
    run(page, "window.notReloaded = true;", vec![]).await;

    // A message from the visitor's panel shows in both panels.
    let hello = say_from_visitor(page, "Hello! Where is my order #1042?").await;

    // An agent's reply published straight to NATS, as the Slack integration does, shows in the
    // visitor's panel within a second.
    let reply = new_id();
    let published = Instant::now();
    api.publish_event(
        &api.message_subject(&thread),
        &[("Nats-Msg-Id", &reply)],
        agent_reply(
            &reply,
            &thread,
            "Hi Ada! It left our warehouse this morning.",
        ),
    )
    .await;
    until(
        "the agent's reply in the visitor's panel",
        PAGE_TIMEOUT,
        || async { shown(page, "visitor").await.contains(&reply) },
    )
    .await;
    let took = published.elapsed();
    assert!(
        took < Duration::from_secs(1),
        "the agent's reply took {took:?} to show in the visitor's panel"
    );
    let thanks = say_from_visitor(page, "Great, thank you!").await;
    assert_eq!(
        shown(page, "visitor").await,
        [hello.as_str(), &reply, &thanks]
    );
    assert_eq!(
        shown(page, "agent").await,
        [hello.as_str(), &reply, &thanks]
    );
    save_screenshot(&page.screenshot().await.expect("a screenshot"));

    // The page's gateway stops (a rolling restart: its sockets close with 1012) while 5
    // messages are posted, then starts again on its address.
    app.terminate("gateway", 0);
    let status = app.wait_exit("gateway", 0, Duration::from_secs(30)).await;
    assert!(status.success(), "the gateway exited with {status}");
    until(
        "the visitor's panel to see its socket go",
        PAGE_TIMEOUT,
        || async { state(page, "visitor").await != "open" },
    )
    .await;
    let mut posted = Vec::new();
    for n in 1..=5 {
        let message = api
            .post_message(&json!({
                "thread": thread,
                "user": {"name": "Support agent"},
                "body": format!("While the gateway was down: {n} of 5"),
                "send_by_user": false,
            }))
            .await
            .expect(201);
        posted.push(message["id"].as_str().expect("an id").to_owned());
    }
    app.restart("gateway", 0).await;

    let expected: Vec<String> = [hello, reply, thanks].into_iter().chain(posted).collect();
    for panel in ["visitor", "agent"] {
        until(
            &format!("the {panel}'s panel to show every message"),
            PAGE_TIMEOUT,
            || async {
                shown(page, panel).await.len() >= expected.len()
                    && state(page, panel).await == "open"
            },
        )
        .await;
        assert_eq!(
            shown(page, panel).await,
            expected,
            "the {panel}'s panel: each once, in order"
        );
    }
    let listed: Vec<String> = message_ids(&api.get_thread(&thread).await)
        .iter()
        .filter_map(|v| v.as_str().map(str::to_owned))
        .collect();
    assert_eq!(listed, expected, "the page and GET agree");
    assert_eq!(
        run(page, "return window.notReloaded === true;", vec![]).await,
        json!(true),
        "the page was not reloaded"
    );

    // On a phone's width the panels stack and nothing runs off the screen.
    page.set_window_size(390, 844)
        .await
        .expect("resizing the window");
    let fits = run(
        page,
        "const visitor = document.getElementById('visitor').getBoundingClientRect();
         const agent = document.getElementById('agent').getBoundingClientRect();
         return document.documentElement.scrollWidth <= window.innerWidth
           && visitor.right <= window.innerWidth && agent.top >= visitor.bottom;",
        vec![],
    )
    .await;
    assert_eq!(fits, json!(true), "the page on a 390 px wide screen");
    chromium.quit().await;
}

#[tokio::test]
async fn the_demo_page_works_on_its_own_origin() {
    let app = options()
        .all_in_one()
        .env("DEMO_PAGE", "true")
        .start()
        .await;
    let chromium = Chromium::start().await;
    let page = chromium.page();
    let thread = start_chat(page, &format!("http://{}/demo/", app.api_addr)).await;
    let said = say_from_visitor(page, "Hello from the same origin").await;
    assert_eq!(message_ids(&app.get_thread(&thread).await), [json!(said)]);
    assert_eq!(shown(page, "visitor").await, [said]);
    chromium.quit().await;
}

/// The README's page for a website (the first `html` block of its "Website client" section).
fn readme_snippet() -> String {
    let readme = include_str!("../../README.md");
    let section = readme
        .split("## Website client")
        .nth(1)
        .expect("the README's Website client section");
    let start = section.find("```html\n").expect("an html block") + "```html\n".len();
    let end = start + section[start..].find("```").expect("the block's end");
    section[start..end].to_owned()
}

#[tokio::test]
async fn the_readme_s_snippet_chats_in_a_blank_page() {
    // The website: the README's page and the client module beside it, on an origin of its own.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("binding the website");
    let site = format!("http://{}", listener.local_addr().expect("an address"));
    let mut app = options()
        .all_in_one()
        .env("CORS_ALLOWED_ORIGINS", site.as_str())
        .start()
        .await;
    let page_html =
        readme_snippet().replace("http://localhost:8000", &format!("http://{}", app.api_addr));
    let module = include_str!("../../clients/js/threadline.js");
    let website = axum::Router::new()
        .route(
            "/",
            axum::routing::get(move || async move { axum::response::Html(page_html) }),
        )
        .route(
            "/threadline.js",
            axum::routing::get(move || async move {
                ([("content-type", "text/javascript; charset=utf-8")], module)
            }),
        );
    let server = tokio::spawn(async move { axum::serve(listener, website).await });

    let chromium = Chromium::start().await;
    let page = chromium.page();
    page.goto(&format!("{site}/"))
        .await
        .expect("opening the page");
    let said = "Hello from a blank page";
    let field = page
        .wait()
        .at_most(PAGE_TIMEOUT)
        .for_element(Locator::Css("#text"))
        .await
        .expect("the text field");
    field.send_keys(said).await.expect("typing");
    click(page, "#compose button").await;
    let items = || async {
        let texts = run(
            page,
            "return [...document.querySelectorAll('#messages li')].map(li => li.textContent);",
            vec![],
        )
        .await;
        serde_json::from_value::<Vec<String>>(texts).expect("texts")
    };
    until("the visitor's message", PAGE_TIMEOUT, || async {
        items().await == [format!("You: {said}")]
    })
    .await;

    // The page's thread is the only one this app holds.
    let db = app.db().await;
    let thread: String = eventually(
        "the page's thread in the read model",
        PROJECTION_TIMEOUT,
        || {
            let db = db.clone();
            async move {
                sqlx::query_scalar::<_, String>("select id::text from threads")
                    .fetch_optional(&db)
                    .await
                    .expect("reading the threads")
            }
        },
    )
    .await;
    let reply = new_id();
    app.publish_event(
        &app.message_subject(&thread),
        &[("Nats-Msg-Id", &reply)],
        agent_reply(&reply, &thread, "Hi! How can I help?"),
    )
    .await;
    until("the agent's reply", PAGE_TIMEOUT, || async {
        items().await
            == [
                format!("You: {said}"),
                "Agent: Hi! How can I help?".to_owned(),
            ]
    })
    .await;
    chromium.quit().await;
    server.abort();
}
