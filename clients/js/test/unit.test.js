// The client's rules without a server: backoff bounds, what each close code does, repeats
// dropped, the `online` event, retries of POSTs, and the error values. A fake WebSocket,
// fetch and clock stand in for the browser's.

import { test } from "node:test";
import assert from "node:assert/strict";
import { backoffDelay, createClient, randomKey, ThreadlineError, DEFAULT_BACKOFF } from "../threadline.js";

const THREAD = "8f004f03-e83c-11f1-b324-c900d5c1fc87";

/** A websocket the test drives: every one made is kept, newest last. */
class FakeSocket {
  static made = [];

  constructor(url) {
    this.url = url;
    this.closedWith = null;
    FakeSocket.made.push(this);
  }

  static last() {
    return FakeSocket.made.at(-1);
  }

  open() {
    this.onopen?.({});
  }

  send(message) {
    this.onmessage?.({ data: JSON.stringify(message) });
  }

  drop(code) {
    this.onclose?.({ code });
  }

  close(code) {
    this.closedWith = code ?? 1005;
  }
}

/** Timers that run only when the test says so; `now` moves with them. */
class Clock {
  constructor() {
    this.time = 0;
    this.timers = new Map();
    this.next = 1;
  }

  setTimeout = (fn, ms) => {
    const id = this.next++;
    this.timers.set(id, { fn, at: this.time + ms, ms });
    return id;
  };

  clearTimeout = (id) => {
    this.timers.delete(id);
  };

  now = () => this.time;

  /** The delays pending, soonest first. */
  pending() {
    return [...this.timers.values()].map((t) => t.ms);
  }

  /** Runs the soonest timer. */
  tick() {
    const [id, timer] = [...this.timers.entries()].sort((a, b) => a[1].at - b[1].at)[0] ?? [];
    assert.ok(timer, "a timer was meant to be pending");
    this.timers.delete(id);
    this.time = Math.max(this.time, timer.at);
    timer.fn();
  }

  advance(ms) {
    this.time += ms;
  }
}

function message(n) {
  return {
    id: `00000000-0000-1000-8000-${String(n).padStart(12, "0")}`,
    user: { name: "Ada" },
    timestamp: "2026-11-24T19:23:43.615589Z",
    body: `m${n}`,
    send_by_user: true,
    thread: THREAD,
  };
}

function json(status, body) {
  return new Response(body === undefined ? "" : JSON.stringify(body), {
    status,
    headers: { "Content-Type": "application/json" },
  });
}

/** A client on fakes; `fetch` answers GET /chat/thread/ with `thread()`. */
function fakeClient({ thread = () => ({ id: THREAD, user: "x", timestamp: "t", messages: [] }), fetch, events = null } = {}) {
  FakeSocket.made = [];
  const clock = new Clock();
  const requests = [];
  const fetchImpl =
    fetch ??
    (async (url, init) => {
      requests.push({ url, init });
      return json(200, thread());
    });
  const client = createClient({
    baseUrl: "http://chat.test",
    WebSocket: FakeSocket,
    fetch: fetchImpl,
    random: () => 0.5,
    setTimeout: clock.setTimeout,
    clearTimeout: clock.clearTimeout,
    now: clock.now,
    events,
  });
  return { client, clock, requests };
}

/** Lets pending promise callbacks run. */
const settle = () => new Promise((resolve) => setImmediate(resolve));

test("backoff doubles from its first ceiling up to its largest, jittered within the upper half", () => {
  const initial = DEFAULT_BACKOFF.initial;
  const low = (attempt) => backoffDelay(attempt, { random: () => 0 });
  const high = (attempt) => backoffDelay(attempt, { random: () => 0.999999 });
  assert.equal(low(0), initial / 2);
  assert.ok(high(0) < initial && high(0) > initial * 0.99);
  for (let attempt = 0; attempt < 40; attempt += 1) {
    const ceiling = Math.min(DEFAULT_BACKOFF.max, initial * 2 ** attempt);
    assert.equal(low(attempt), ceiling / 2, `attempt ${attempt}`);
    assert.ok(high(attempt) < ceiling, `attempt ${attempt}`);
  }
  assert.equal(low(5), 4_000, "250 ms doubled 5 times (8 s), halved");
  assert.equal(low(6), 5_000, "capped at 10 s, halved");
  assert.equal(backoffDelay(3, { initial: 100, max: 1_000, random: () => 0.5 }), 600);
  for (let i = 0; i < 1000; i += 1) {
    const delay = backoffDelay(i % 12);
    assert.ok(delay >= 125 && delay < 10_000, `${delay} out of bounds`);
  }
});

test("a drop reconnects after the backoff, resuming from the newest message, and repeats are dropped", async () => {
  const { client, clock } = fakeClient();
  const got = [];
  const watch = client.watch(THREAD, (m) => got.push(m.body), { since: message(1).id });
  const first = FakeSocket.last();
  assert.equal(first.url, `ws://chat.test/ws/chat/${THREAD}/?since=${message(1).id}`);
  first.open();
  first.send(message(2));
  first.send(message(2));
  first.send(message(3));
  for (const code of [1001, 1006, 1013]) {
    const socket = FakeSocket.last();
    socket.drop(code);
    assert.equal(watch.state, "waiting", `after ${code}`);
    assert.equal(FakeSocket.made.at(-1), socket, "no socket before the delay");
    clock.tick();
    assert.equal(FakeSocket.last().url, `ws://chat.test/ws/chat/${THREAD}/?since=${message(3).id}`);
    FakeSocket.last().open();
  }
  // The server sends from the since on; one it sent before is not shown again.
  FakeSocket.last().send(message(3));
  FakeSocket.last().send(message(4));
  assert.deepEqual(got, ["m2", "m3", "m4"]);
  assert.equal(watch.lastId, message(4).id);
  watch.close();
  assert.equal(FakeSocket.last().closedWith, 1000);
  assert.equal(await watch.done, null);
});

test("sockets that keep dropping wait longer each time, up to the bound; a healthy one starts afresh", () => {
  const { client, clock } = fakeClient();
  client.watch(THREAD, () => {}, { since: message(1).id });
  const delays = [];
  for (let i = 0; i < 8; i += 1) {
    FakeSocket.last().open();
    FakeSocket.last().drop(1006);
    delays.push(clock.pending()[0]);
    clock.tick();
  }
  assert.deepEqual(delays, [187.5, 375, 750, 1500, 3000, 6000, 7500, 7500]);
  FakeSocket.last().open();
  clock.advance(5_000);
  FakeSocket.last().drop(1006);
  assert.deepEqual(clock.pending(), [187.5], "open 5 s: the backoff starts again");
});

test("1012 (a server restarting) reconnects at once, with jitter only", () => {
  const { client, clock } = fakeClient();
  client.watch(THREAD, () => {}, { since: message(1).id });
  FakeSocket.last().open();
  clock.advance(10_000);
  FakeSocket.last().drop(1012);
  assert.deepEqual(clock.pending(), [125], "random() * the first ceiling");
});

test("1009 stops the watch with the error as a value", async () => {
  const { client, clock } = fakeClient();
  const errors = [];
  const watch = client.watch(THREAD, () => {}, { since: message(1).id, onError: (e) => errors.push(e) });
  FakeSocket.last().open();
  FakeSocket.last().drop(1009);
  const error = await watch.done;
  assert.ok(error instanceof ThreadlineError);
  assert.equal(error.kind, "closed");
  assert.equal(error.code, 1009);
  assert.deepEqual(errors, [error]);
  assert.equal(watch.state, "closed");
  assert.deepEqual(clock.pending(), [], "no retry");
});

test("4404 (the thread was erased) stops the watch for good, as an erased error", async () => {
  const { client, clock } = fakeClient();
  const watch = client.watch(THREAD, () => {}, { since: message(1).id });
  FakeSocket.last().open();
  FakeSocket.last().drop(4404);
  const error = await watch.done;
  assert.ok(error instanceof ThreadlineError);
  assert.equal(error.kind, "erased");
  assert.equal(error.code, 4404);
  assert.equal(watch.state, "closed");
  assert.deepEqual(clock.pending(), [], "no retry");
});

test("4000 (too far behind) loads the thread, delivers what follows, and resumes from its last message", async () => {
  const listed = [1, 2, 3, 4].map(message).map(({ thread, ...m }) => m);
  const { client, requests } = fakeClient({ thread: () => ({ id: THREAD, messages: listed }) });
  const got = [];
  const watch = client.watch(THREAD, (m) => got.push(m), { since: message(2).id });
  FakeSocket.last().open();
  FakeSocket.last().drop(4000);
  await settle();
  assert.equal(requests.length, 1);
  assert.equal(requests[0].url, `http://chat.test/chat/thread/${THREAD}/`);
  assert.deepEqual(got, [message(3), message(4)], "GET's messages get their thread, as frames have it");
  assert.equal(FakeSocket.last().url, `ws://chat.test/ws/chat/${THREAD}/?since=${message(4).id}`);
  watch.close();
});

test("without since, the thread is read once the socket is open, and frames wait for it", async () => {
  let listed = [];
  const { client } = fakeClient({ thread: () => ({ id: THREAD, messages: listed }) });
  const got = [];
  const watch = client.watch(THREAD, (m) => got.push(m.body));
  assert.equal(FakeSocket.last().url, `ws://chat.test/ws/chat/${THREAD}/`);
  listed = [message(1), message(2)];
  FakeSocket.last().open();
  // Stored after the socket opened: one the GET lists too, and one it does not.
  FakeSocket.last().send(message(2));
  FakeSocket.last().send(message(3));
  assert.deepEqual(got, [], "frames wait for the GET");
  await settle();
  assert.deepEqual(got, ["m1", "m2", "m3"]);
  assert.equal(watch.lastId, message(3).id);
  watch.close();
});

test("sockets refused before opening: a GET that says 404 stops the watch with its body", async () => {
  const { client, clock } = fakeClient({
    fetch: async () => json(404, { detail: "Not found." }),
  });
  const watch = client.watch(THREAD, () => {}, { since: message(1).id });
  for (let i = 0; i < 3; i += 1) {
    FakeSocket.last().drop(1006);
    if (i < 2) {
      clock.tick();
    }
  }
  const error = await watch.done;
  assert.equal(error.kind, "refused");
  assert.equal(error.status, 404);
  assert.deepEqual(error.body, { detail: "Not found." });
  assert.equal(FakeSocket.made.length, 3);
});

test("a handshake that hangs is given up after 10 s, as a refusal", () => {
  const { client, clock } = fakeClient();
  const watch = client.watch(THREAD, () => {}, { since: message(1).id });
  assert.deepEqual(clock.pending(), [10_000]);
  clock.tick();
  assert.equal(FakeSocket.made[0].closedWith, 1000, "the hanging socket is closed");
  assert.equal(watch.state, "waiting");
  clock.tick();
  assert.equal(FakeSocket.made.length, 2);
  watch.close();
});

test("a handshake that fails with an error and no close (Node.js 20) counts as refused", () => {
  const { client, clock } = fakeClient();
  const watch = client.watch(THREAD, () => {}, { since: message(1).id });
  FakeSocket.last().onerror({});
  assert.equal(watch.state, "waiting");
  assert.equal(clock.pending().length, 1);
  watch.close();
});

test("sockets refused before opening on a since not in the thread resume from the thread's last message", async () => {
  const { client, clock } = fakeClient({ thread: () => ({ id: THREAD, messages: [message(7)] }) });
  const got = [];
  const watch = client.watch(THREAD, (m) => got.push(m.body), { since: "00000000-0000-1000-8000-999999999999" });
  for (let i = 0; i < 3; i += 1) {
    FakeSocket.last().drop(1006);
    if (i < 2) {
      clock.tick();
    }
  }
  await settle();
  assert.deepEqual(got, ["m7"]);
  clock.tick();
  assert.equal(FakeSocket.last().url, `ws://chat.test/ws/chat/${THREAD}/?since=${message(7).id}`);
  watch.close();
});

test("the online event replaces the socket at once, without waiting out the backoff", () => {
  const events = new EventTarget();
  const { client, clock } = fakeClient({ events });
  const watch = client.watch(THREAD, () => {}, { since: message(1).id });
  FakeSocket.last().open();
  FakeSocket.last().drop(1006);
  assert.equal(clock.pending().length, 1);
  events.dispatchEvent(new Event("online"));
  assert.deepEqual(clock.pending(), [10_000], "the wait is cancelled: only the new handshake's bound");
  assert.equal(FakeSocket.made.length, 2);
  FakeSocket.last().open();
  events.dispatchEvent(new Event("online"));
  assert.equal(FakeSocket.made[1].closedWith, 1000, "a socket that may be dead is replaced");
  assert.equal(FakeSocket.made.length, 3);
  watch.close();
  events.dispatchEvent(new Event("online"));
  assert.equal(FakeSocket.made.length, 3, "a closed watch ignores it");
});

test("HTTP errors are values with the contract's status and JSON body", async () => {
  const { client } = fakeClient({
    fetch: async () => json(400, { body: ["This field may not be blank."], thread: ["“x” is not a valid UUID."] }),
  });
  const error = await client.postMessage({ thread: "x", user: "u", body: " " }).catch((e) => e);
  assert.ok(error instanceof ThreadlineError);
  assert.equal(error.kind, "http");
  assert.equal(error.status, 400);
  assert.deepEqual(error.body, { body: ["This field may not be blank."], thread: ["“x” is not a valid UUID."] });
  assert.equal(error.message, "HTTP 400: body: This field may not be blank.; thread: “x” is not a valid UUID.");
  assert.equal(error.retryable, false);
});

test("a POST is retried with the same Idempotency-Key after a failure; without a key it is sent once", async () => {
  const sent = [];
  let failures = 2;
  const { client, clock } = fakeClient({
    fetch: async (url, init) => {
      sent.push(init.headers["Idempotency-Key"]);
      if (failures-- > 0) {
        throw new TypeError("fetch failed");
      }
      return json(201, message(1));
    },
  });
  const posting = client.postMessage({ thread: THREAD, user: "u", body: "hi" });
  await settle();
  clock.tick();
  await settle();
  clock.tick();
  assert.deepEqual(await posting, message(1));
  assert.equal(sent.length, 3);
  assert.match(sent[0], /^[0-9a-f-]{36}$/);
  assert.ok(sent.every((key) => key === sent[0]), "one key for every attempt");

  sent.length = 0;
  failures = 1;
  const error = await client.postMessage({ thread: THREAD, user: "u", body: "hi" }, { idempotencyKey: null }).catch((e) => e);
  assert.equal(error.kind, "network");
  assert.equal(error.status, 0);
  assert.deepEqual(sent, [undefined], "sent once, without a key");
});

test("a 503 is retried, a 422 is not", async () => {
  const answers = [json(503, { detail: "busy" }), json(422, { detail: "This Idempotency-Key was already used for a request with a different body." })];
  const { client, clock } = fakeClient({ fetch: async () => answers.shift() });
  const posting = client.createThread({ name: "Ada" }, { idempotencyKey: "k1" }).catch((e) => e);
  await settle();
  clock.tick();
  const error = await posting;
  assert.equal(error.status, 422);
  assert.equal(error.body.detail, "This Idempotency-Key was already used for a request with a different body.");
  assert.equal(answers.length, 0);
});

test("random keys are version 4 UUIDs, also without crypto.randomUUID", () => {
  const key = randomKey();
  assert.match(key, /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
  const original = globalThis.crypto.randomUUID;
  try {
    Object.defineProperty(globalThis.crypto, "randomUUID", { value: undefined, configurable: true });
    assert.match(randomKey(), /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
  } finally {
    Object.defineProperty(globalThis.crypto, "randomUUID", { value: original, configurable: true });
  }
});
