// The client against running threadline roles (tests/e2e/js_client.rs starts them and runs
// this file): resuming across a dropped socket, resuming from the id of its own POST through a
// gateway whose feed is behind, a refusal that stops retrying, and the error values.
//
//   THREADLINE_API_URL         the HTTP API, e.g. http://127.0.0.1:8000
//   THREADLINE_WS_URL          a gateway, e.g. ws://127.0.0.1:8001
//   THREADLINE_LAGGING_WS_URL  a gateway that will not receive the next stored message of
//   THREADLINE_LAGGING_THREAD  this thread (its NATS connection loses it)

import { test } from "node:test";
import assert from "node:assert/strict";
import net from "node:net";
import { createClient, ThreadlineError } from "../threadline.js";

const api = process.env.THREADLINE_API_URL;
const ws = process.env.THREADLINE_WS_URL;
const skip = api && ws ? false : "set THREADLINE_API_URL and THREADLINE_WS_URL (tests/e2e/js_client.rs does)";

/** Fast retries: the tests wait for reconnects, not for production's pace. */
const backoff = { initial: 50, max: 500 };

/** Waits until `check()` is truthy, polling; fails after `ms`. */
async function until(what, check, ms = 20_000) {
  const deadline = Date.now() + ms;
  for (;;) {
    const value = await check();
    if (value) {
      return value;
    }
    if (Date.now() > deadline) {
      assert.fail(`timed out waiting for ${what}`);
    }
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

/**
 * A TCP proxy in front of `url`'s host and port. `pause()` drops every connection (the client
 * sees its socket break, 1006) and holds new ones unanswered until `resume()`; `requests` are
 * the first lines of what clients sent (`GET /ws/chat/...?since=... HTTP/1.1`).
 */
async function tcpProxy(url) {
  const { hostname, port } = new URL(url);
  const open = new Set();
  const held = [];
  const requests = [];
  let paused = false;
  const server = net.createServer((client) => {
    open.add(client);
    client.on("close", () => open.delete(client));
    client.on("error", () => {});
    const connect = () => {
      if (client.destroyed) {
        return;
      }
      const upstream = net.connect(Number(port), hostname);
      open.add(upstream);
      upstream.on("close", () => {
        open.delete(upstream);
        client.destroy();
      });
      upstream.on("error", () => client.destroy());
      client.on("close", () => upstream.destroy());
      client.once("data", (chunk) => {
        requests.push(chunk.toString("latin1").split("\r\n")[0]);
        upstream.write(chunk);
        client.pipe(upstream);
      });
      upstream.pipe(client);
    };
    if (paused) {
      held.push(connect);
    } else {
      connect();
    }
  });
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  return {
    url: `ws://127.0.0.1:${server.address().port}`,
    requests,
    pause() {
      paused = true;
      for (const socket of open) {
        socket.destroy();
      }
    },
    resume() {
      paused = false;
      held.splice(0).forEach((connect) => connect());
    },
    close() {
      this.pause();
      server.close();
    },
  };
}

function say(client, thread, body) {
  return client.postMessage({ thread, user: { name: "Ada" }, body, send_by_user: true });
}

test("a socket dropped while 5 messages are posted resumes with since: nothing missed, nothing repeated", { skip }, async (t) => {
  const proxy = await tcpProxy(ws);
  t.after(() => proxy.close());
  const client = createClient({ baseUrl: api, websocketUrl: proxy.url, backoff });
  const thread = await client.createThread({ name: "Ada" });
  const got = [];
  const states = [];
  const watch = client.watch(thread.id, (m) => got.push(m.id), { onState: (s) => states.push(s.state) });
  t.after(() => watch.close());
  await until("the socket to open", () => watch.state === "open");
  const before = [];
  for (const body of ["one", "two"]) {
    before.push((await say(client, thread.id, body)).id);
  }
  await until("the first two messages", () => got.length === 2);

  proxy.pause();
  await until("the watch to see the drop", () => watch.state !== "open");
  const during = [];
  for (let i = 0; i < 5; i += 1) {
    during.push((await say(client, thread.id, `while down ${i}`)).id);
  }
  proxy.resume();
  const after = (await say(client, thread.id, "after")).id;
  await until("the message posted after the drop", () => got.includes(after));
  await new Promise((resolve) => setTimeout(resolve, 300)); // time for a repeat to show

  assert.deepEqual(got, [...before, ...during, after]);
  const listed = (await client.getThread(thread.id)).messages.map((m) => m.id);
  assert.deepEqual(got, listed, "the socket and GET agree");
  assert.ok(states.includes("waiting"), `the socket was meant to drop: ${states}`);
  const resumed = proxy.requests.filter((line) => line.includes(`?since=${before[1]} `));
  assert.equal(resumed.length, 1, `one reconnect from the last message seen: ${proxy.requests}`);
  watch.close();
  assert.equal(await watch.done, null);
});

test(
  "a watch resumes from the id of its own POST through a gateway whose feed has not shown it",
  { skip: skip || (process.env.THREADLINE_LAGGING_WS_URL ? false : "set THREADLINE_LAGGING_WS_URL and THREADLINE_LAGGING_THREAD") },
  async (t) => {
    const client = createClient({ baseUrl: api, websocketUrl: process.env.THREADLINE_LAGGING_WS_URL, backoff });
    const thread = process.env.THREADLINE_LAGGING_THREAD;
    // A watch that holds the thread's feed open on that gateway.
    const first = [];
    const holding = client.watch(thread, (m) => first.push(m.id));
    t.after(() => holding.close());
    await until("the first socket to open", () => holding.state === "open");

    // Its stored copy never reaches the gateway: the feed stays behind it.
    const own = await say(client, thread, "my own message");
    const got = [];
    const states = [];
    const resumed = client.watch(thread, (m) => got.push(m.id), {
      since: own.id,
      onState: (s) => states.push(s.state),
    });
    t.after(() => resumed.close());
    await until("the resumed socket to open, or to be refused", () => resumed.state !== "connecting");
    assert.deepEqual(states, ["connecting", "open"], "the first socket from the POST's id was accepted");

    const next = await say(client, thread, "the next one");
    await until("the next message on both", () => got.includes(next.id) && first.includes(next.id));
    await new Promise((resolve) => setTimeout(resolve, 300));
    assert.deepEqual(got, [next.id], "exactly what follows the POST's id");
    assert.deepEqual(first, [own.id, next.id], "the first socket got both, once, in order");
  },
);

test("watching a thread that does not exist stops with the 404 as a value", { skip }, async (t) => {
  const client = createClient({ baseUrl: api, websocketUrl: ws, backoff });
  const errors = [];
  const watch = client.watch("8f004f03-e83c-11f1-b324-000000000000", () => assert.fail("no message"), {
    onError: (e) => errors.push(e),
  });
  t.after(() => watch.close());
  const error = await watch.done;
  assert.ok(error instanceof ThreadlineError);
  assert.equal(error.kind, "refused");
  assert.equal(error.status, 404);
  assert.deepEqual(error.body, { detail: "Not found." });
  assert.deepEqual(errors, [error]);
  assert.equal(watch.state, "closed");
});

test("the server's errors reach the caller as values with the contract's JSON bodies", { skip }, async () => {
  const client = createClient({ baseUrl: api, websocketUrl: ws, backoff });
  const thread = await client.createThread({ name: "Ada" });

  const blank = await say(client, thread.id, "   ").catch((e) => e);
  assert.ok(blank instanceof ThreadlineError);
  assert.equal(blank.status, 400);
  assert.deepEqual(blank.body, { body: ["This field may not be blank."] });
  assert.equal(blank.retryable, false);

  const nullUser = await client.createThread(null).catch((e) => e);
  assert.deepEqual([nullUser.status, nullUser.body], [400, { user: ["This field may not be null."] }]);

  const unknown = await client.getThread("8f004f03-e83c-11f1-b324-000000000000").catch((e) => e);
  assert.deepEqual([unknown.kind, unknown.status, unknown.body], ["http", 404, { detail: "Not found." }]);

  const fields = { thread: thread.id, user: "u", body: "keyed", send_by_user: true };
  await client.postMessage(fields, { idempotencyKey: "key-1" });
  const reused = await client.postMessage({ ...fields, body: "another" }, { idempotencyKey: "key-1" }).catch((e) => e);
  assert.equal(reused.status, 422);
  assert.equal(reused.body.detail, "This Idempotency-Key was already used for a request with a different body.");

  const down = createClient({ baseUrl: "http://127.0.0.1:9", retries: 0 });
  const refused = await down.getThread(thread.id).catch((e) => e);
  assert.deepEqual([refused.kind, refused.status, refused.body], ["network", 0, null]);
});

test("a POST whose answer was lost is retried with its key and stored once", { skip }, async () => {
  let lose = true;
  const client = createClient({
    baseUrl: api,
    backoff,
    fetch: async (url, init) => {
      const response = await fetch(url, init);
      if (init.method === "POST" && url.endsWith("/chat/message/") && lose) {
        lose = false;
        throw new TypeError("the connection broke before the answer");
      }
      return response;
    },
  });
  const thread = await client.createThread({ name: "Ada" });
  const posted = await say(client, thread.id, "sent once");
  const listed = (await client.getThread(thread.id)).messages;
  assert.equal(lose, false, "the first answer was meant to be lost");
  assert.deepEqual(
    listed.map((m) => [m.id, m.body]),
    [[posted.id, "sent once"]],
  );
});
