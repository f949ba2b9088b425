// threadline's client for browsers and Node.js 20: the HTTP API (create a thread, post a
// message, read a thread) and `watch`, which listens on a thread's websocket and keeps doing
// so across drops, with nothing missed and nothing shown twice. No dependencies, no build
// step: this file is the module. The rules it follows are those of the server's
// docs/websocket-clients.md.

/** Close codes after which a watch reconnects (resuming with `since`). */
export const RETRY_CODES = Object.freeze([1001, 1006, 1012, 1013]);

/**
 * Close codes after which retrying cannot help: the client sent something the server will
 * not take (1009: too large; the others: a protocol error or a policy violation).
 */
export const STOP_CODES = Object.freeze([1002, 1003, 1007, 1008, 1009, 1010]);

/** The server's "too far behind" close: load the thread with GET, then resume. */
export const LOAD_THE_THREAD_FIRST = 4000;

/** The server's "this thread was erased" close: it is gone for good; the watch stops. */
export const THREAD_ERASED = 4404;

/** Reconnect delays, in milliseconds: the first ceiling and the largest. */
export const DEFAULT_BACKOFF = Object.freeze({ initial: 250, max: 10_000 });

/** A socket open this long counts as healthy: the next drop starts the backoff afresh. */
const STABLE_MS = 5_000;

/** Sockets closed before opening, in a row, after which the thread is read with GET. */
const FAILED_OPENS_BEFORE_GET = 3;

/** How long a socket may take to open before it is given up as refused. */
const CONNECT_TIMEOUT_MS = 10_000;

/** Message ids a watch remembers to drop repeats. */
const REMEMBERED_IDS = 10_000;

/** HTTP statuses worth retrying (with an Idempotency-Key, for a POST). */
const RETRY_STATUSES = new Set([408, 429, 500, 502, 503, 504]);

/**
 * What went wrong, as a value: an HTTP answer (`status` and the contract's JSON error body in
 * `body`), no answer at all (`status` 0), or a websocket closed for good (`code`).
 */
export class ThreadlineError extends Error {
  constructor(message, { kind, status = 0, body = null, code, cause } = {}) {
    super(message, cause === undefined ? undefined : { cause });
    this.name = "ThreadlineError";
    /** "http" (an error answer), "network" (no answer, or none in time), "closed" (a websocket closed for good), "refused" (a websocket refused: see `status`). */
    this.kind = kind;
    /** The HTTP status, 0 if there was no answer. */
    this.status = status;
    /** The answer's JSON body as the contract gives it (`{"detail": ...}` or one list of texts per field), or null. */
    this.body = body;
    /** The websocket close code, for kind "closed". */
    this.code = code;
  }

  /** Whether the same request may succeed later (a POST only with an Idempotency-Key). */
  get retryable() {
    return this.kind === "network" || (this.kind === "http" && RETRY_STATUSES.has(this.status));
  }
}

/**
 * The delay before retry number `attempt` (0 for the first), in milliseconds: exponential
 * with jitter, between half the ceiling and the ceiling, where the ceiling is `initial`
 * doubled `attempt` times, at most `max`.
 */
export function backoffDelay(attempt, { initial = DEFAULT_BACKOFF.initial, max = DEFAULT_BACKOFF.max, random = Math.random } = {}) {
  const ceiling = Math.min(max, initial * 2 ** Math.min(Math.max(attempt, 0), 30));
  return ceiling / 2 + random() * (ceiling / 2);
}

/** A new random UUID (version 4), also where `crypto.randomUUID` is missing (plain http). */
export function randomKey() {
  const c = globalThis.crypto;
  if (c && typeof c.randomUUID === "function") {
    return c.randomUUID();
  }
  const bytes = new Uint8Array(16);
  c.getRandomValues(bytes);
  bytes[6] = (bytes[6] & 0x0f) | 0x40;
  bytes[8] = (bytes[8] & 0x3f) | 0x80;
  const hex = Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}

/** A one-line text of an error body: `{"detail": …}` or `{"field": ["text", …], …}`. */
function describe(body) {
  if (body && typeof body === "object" && !Array.isArray(body)) {
    if (typeof body.detail === "string") {
      return body.detail;
    }
    return Object.entries(body)
      .map(([field, texts]) => `${field}: ${Array.isArray(texts) ? texts.join(" ") : JSON.stringify(texts)}`)
      .join("; ");
  }
  return "";
}

function httpError(status, body) {
  const text = describe(body);
  return new ThreadlineError(`HTTP ${status}${text ? `: ${text}` : ""}`, { kind: "http", status, body });
}

/**
 * A client of one threadline server.
 *
 * @param {object} [options] see threadline.d.ts
 */
export function createClient(options = {}) {
  const location = globalThis.location;
  const baseUrl = trimSlash(options.baseUrl ?? (location ? location.origin : ""));
  if (!baseUrl) {
    throw new TypeError("createClient: give baseUrl (e.g. \"https://chat.example.com\")");
  }
  const websocketUrl = trimSlash(options.websocketUrl || baseUrl.replace(/^http/, "ws"));
  const fetchImpl = options.fetch ?? globalThis.fetch?.bind(globalThis);
  const WebSocketImpl = options.WebSocket ?? globalThis.WebSocket;
  const random = options.random ?? Math.random;
  const setTimer = options.setTimeout ?? ((fn, ms) => globalThis.setTimeout(fn, ms));
  const clearTimer = options.clearTimeout ?? ((id) => globalThis.clearTimeout(id));
  const now = options.now ?? (() => Date.now());
  const events = options.events === undefined ? globalThis : options.events;
  const backoff = { ...DEFAULT_BACKOFF, ...options.backoff, random };
  const retries = options.retries ?? 4;
  const timeout = options.timeout ?? 15_000;
  const defaultHeaders = { ...options.headers };

  const sleep = (ms) => new Promise((resolve) => setTimer(resolve, ms));

  /** One request, retried (if `retry`) while the error is one that may pass. */
  async function request(method, path, { body, headers, retry }) {
    const all = { Accept: "application/json", ...defaultHeaders, ...headers };
    if (body !== undefined) {
      all["Content-Type"] = "application/json";
    }
    const init = { method, headers: all, body: body === undefined ? undefined : JSON.stringify(body) };
    for (let attempt = 0; ; attempt += 1) {
      let error;
      try {
        return await attemptOnce(`${baseUrl}${path}`, init);
      } catch (e) {
        error = e;
      }
      if (!retry || !error.retryable || attempt >= retries) {
        throw error;
      }
      await sleep(backoffDelay(attempt, backoff));
    }
  }

  async function attemptOnce(url, init) {
    const controller = typeof AbortController === "function" ? new AbortController() : null;
    let timedOut = false;
    const timer = setTimer(() => {
      timedOut = true;
      controller?.abort();
    }, timeout);
    try {
      let response;
      try {
        response = await fetchImpl(url, { ...init, signal: controller?.signal });
      } catch (cause) {
        const why = timedOut ? `no answer within ${timeout} ms` : String(cause?.message ?? cause);
        throw new ThreadlineError(`${init.method} ${url}: ${why}`, { kind: "network", cause });
      }
      const text = await response.text().catch(() => "");
      let parsed = null;
      try {
        parsed = text ? JSON.parse(text) : null;
      } catch {
        parsed = null;
      }
      if (!response.ok) {
        throw httpError(response.status, parsed);
      }
      return parsed;
    } finally {
      clearTimer(timer);
    }
  }

  /** The key a POST is sent with: the caller's, a new one, or none (`null` / `false`). */
  function keyOf(idempotencyKey) {
    if (idempotencyKey === null || idempotencyKey === false) {
      return null;
    }
    return idempotencyKey ?? randomKey();
  }

  function post(path, body, opts = {}) {
    const key = keyOf(opts.idempotencyKey);
    const headers = { ...opts.headers };
    if (key) {
      headers["Idempotency-Key"] = key;
    }
    // Without a key a retried POST could be stored twice: it is sent once.
    return request("POST", path, { body, headers, retry: key !== null });
  }

  const client = {
    baseUrl,
    websocketUrl,

    /** `POST /chat/thread/`: a new thread for `user` (any JSON but null or blank). */
    createThread(user, opts) {
      return post("/chat/thread/", { user }, opts);
    },

    /** `GET /chat/thread/<id>/`: the thread with its messages, oldest first. */
    getThread(threadId, opts = {}) {
      return request("GET", `/chat/thread/${encodeURIComponent(threadId)}/`, {
        headers: opts.headers,
        retry: true,
      });
    },

    /** `POST /chat/message/` with the contract's fields: `{thread, user, body, send_by_user}`. */
    postMessage(message, opts) {
      return post("/chat/message/", message, opts);
    },

    /** Listens on a thread; see threadline.d.ts. */
    watch(threadId, onMessage, opts = {}) {
      if (typeof WebSocketImpl !== "function") {
        throw new TypeError(
          "watch: no WebSocket here; pass createClient({ WebSocket }) (Node.js 20: run with --experimental-websocket)",
        );
      }
      return new Watch({
        client,
        threadId,
        onMessage,
        opts,
        WebSocketImpl,
        websocketUrl,
        backoff,
        setTimer,
        clearTimer,
        now,
        events,
      });
    },
  };
  return client;
}

function trimSlash(url) {
  return String(url).replace(/\/+$/, "");
}

/** Ids seen, the oldest forgotten past a bound. */
class Seen {
  constructor(max) {
    this.max = max;
    this.set = new Set();
  }

  has(id) {
    return this.set.has(id);
  }

  add(id) {
    this.set.add(id);
    if (this.set.size > this.max) {
      this.set.delete(this.set.values().next().value);
    }
  }
}

/**
 * One thread listened to: a websocket, reopened after every drop from the newest message it
 * delivered (`since`), until closed. See threadline.d.ts for the promises.
 */
class Watch {
  #c;
  #cursor;
  #seen = new Seen(REMEMBERED_IDS);
  #socket = null;
  #timer = null;
  #attempt = 0;
  #failedOpens = 0;
  #openedAt = null;
  #closed = false;
  /** Bumped by `reconnect()` and `close()`: a GET still running for an earlier plan is ignored. */
  #generation = 0;
  #resolveDone;
  #onOnline;

  constructor(c) {
    this.#c = c;
    this.#cursor = c.opts.since ?? null;
    this.threadId = c.threadId;
    this.state = "connecting";
    /** Resolves once the watch ends: null if closed by `close()`, else the error that stopped it. */
    this.done = new Promise((resolve) => {
      this.#resolveDone = resolve;
    });
    if (c.events && typeof c.events.addEventListener === "function") {
      this.#onOnline = () => this.reconnect();
      c.events.addEventListener("online", this.#onOnline);
    }
    this.#connect();
  }

  /** The id of the newest message delivered (or the `since` given): where a reconnect resumes. */
  get lastId() {
    return this.#cursor;
  }

  /** Reconnects now (the network came back): a socket that may be dead is replaced. */
  reconnect() {
    if (this.#closed) {
      return;
    }
    this.#generation += 1;
    this.#attempt = 0;
    this.#failedOpens = 0;
    this.#connect();
  }

  /** Stops listening for good. */
  close() {
    this.#finish(null);
  }

  #finish(error) {
    if (this.#closed) {
      return;
    }
    this.#closed = true;
    this.#generation += 1;
    this.#clearTimer();
    this.#abandonSocket();
    if (this.#onOnline) {
      this.#c.events.removeEventListener("online", this.#onOnline);
    }
    this.#setState("closed", { error });
    if (error) {
      this.#c.opts.onError?.(error);
    }
    this.#resolveDone(error);
  }

  #setState(state, detail = {}) {
    this.state = state;
    this.#c.opts.onState?.({ state, ...detail });
  }

  #clearTimer() {
    if (this.#timer !== null) {
      this.#c.clearTimer(this.#timer);
      this.#timer = null;
    }
  }

  /** Closes the current socket, if any, so that nothing more of it counts. */
  #abandonSocket() {
    const socket = this.#socket;
    this.#socket = null;
    if (socket) {
      socket.onopen = socket.onmessage = socket.onclose = socket.onerror = null;
      try {
        socket.close(1000);
      } catch {
        // Closing a socket that is still connecting may throw in some runtimes.
      }
    }
  }

  #url() {
    const since = this.#cursor ? `?since=${encodeURIComponent(this.#cursor)}` : "";
    return `${this.#c.websocketUrl}/ws/chat/${encodeURIComponent(this.threadId)}/${since}`;
  }

  #connect() {
    if (this.#closed) {
      return;
    }
    this.#clearTimer();
    this.#abandonSocket();
    this.#setState("connecting", { attempt: this.#attempt });
    // Without a place to resume from, the socket's first frames may follow messages the watch
    // has not delivered: the thread is read with GET once the socket is open, and frames wait.
    const catchUp = this.#cursor === null;
    let socket;
    try {
      socket = new this.#c.WebSocketImpl(this.#url());
    } catch (cause) {
      this.#finish(new ThreadlineError(`cannot open ${this.#url()}: ${cause?.message ?? cause}`, { kind: "closed", cause }));
      return;
    }
    this.#socket = socket;
    let opened = false;
    let waiting = null;
    // A handshake that hangs (a network that drops packets) is given up, as a refusal.
    this.#timer = this.#c.setTimer(() => {
      this.#timer = null;
      closed(1006);
    }, CONNECT_TIMEOUT_MS);
    socket.onopen = () => {
      if (this.#socket !== socket) {
        return;
      }
      this.#clearTimer();
      opened = true;
      this.#openedAt = this.#c.now();
      this.#failedOpens = 0;
      this.#setState("open");
      if (catchUp) {
        waiting = [];
        this.#readThread().then((ok) => {
          if (this.#socket !== socket) {
            return;
          }
          if (!ok) {
            // Frames alone could leave a gap: start over once the thread can be read.
            this.#abandonSocket();
            this.#retry(1006);
            return;
          }
          const frames = waiting;
          waiting = null;
          frames.forEach((message) => this.#deliver(message));
        });
      }
    };
    socket.onmessage = (event) => {
      if (this.#socket !== socket || typeof event.data !== "string") {
        return;
      }
      let message;
      try {
        message = JSON.parse(event.data);
      } catch {
        return;
      }
      if (waiting) {
        waiting.push(message);
      } else {
        this.#deliver(message);
      }
    };
    const closed = (code) => {
      if (this.#socket !== socket) {
        return;
      }
      this.#abandonSocket();
      this.#closedBy(code, opened);
    };
    // A refused handshake closes with 1006 in browsers; some runtimes (Node.js 20) only
    // report the error.
    socket.onerror = () => {
      if (!opened) {
        closed(1006);
      }
    };
    socket.onclose = (event) => closed(event.code);
  }

  #closedBy(code, opened) {
    if (code === THREAD_ERASED) {
      this.#finish(new ThreadlineError("the thread was erased", { kind: "erased", code }));
      return;
    }
    if (STOP_CODES.includes(code)) {
      this.#finish(new ThreadlineError(`the server closed the socket with ${code}`, { kind: "closed", code }));
      return;
    }
    if (code === LOAD_THE_THREAD_FIRST) {
      this.#reloadThenConnect();
      return;
    }
    if (opened && this.#openedAt !== null && this.#c.now() - this.#openedAt >= STABLE_MS) {
      this.#attempt = 0;
    }
    if (!opened) {
      this.#failedOpens += 1;
      if (this.#failedOpens >= FAILED_OPENS_BEFORE_GET) {
        this.#failedOpens = 0;
        this.#checkThenRetry(code);
        return;
      }
    }
    this.#retry(code);
  }

  /** Waits (jittered exponential backoff; right away with jitter after 1012), then reconnects. */
  #retry(code) {
    if (this.#closed) {
      return;
    }
    this.#clearTimer();
    const delay =
      code === 1012 && this.#attempt === 0
        ? this.#c.backoff.random() * this.#c.backoff.initial
        : backoffDelay(this.#attempt, this.#c.backoff);
    this.#attempt += 1;
    this.#setState("waiting", { code, delay, attempt: this.#attempt });
    this.#timer = this.#c.setTimer(() => {
      this.#timer = null;
      this.#connect();
    }, delay);
  }

  /** After 4000 (too far behind): the thread from GET, then a socket from its last message. */
  async #reloadThenConnect() {
    this.#setState("catching-up");
    const generation = this.#generation;
    const ok = await this.#readThread();
    if (this.#closed || generation !== this.#generation) {
      return;
    }
    if (ok) {
      this.#connect();
    } else {
      this.#retry(LOAD_THE_THREAD_FIRST);
    }
  }

  /**
   * After several sockets refused before opening (a browser does not say why): a GET tells a
   * thread that is gone (stop, with the 404) from a `since` that is not in it (resume from
   * the thread's last message) or a server that is down (go on waiting).
   */
  async #checkThenRetry(code) {
    this.#setState("catching-up");
    const generation = this.#generation;
    await this.#readThread();
    if (!this.#closed && generation === this.#generation) {
      this.#retry(code);
    }
  }

  /**
   * Reads the thread with GET and delivers what follows the newest message delivered (all of
   * it if that is not among them), in order; the last one listed is where the next socket
   * resumes. False if the thread could not be read now; a thread that is gone stops the watch.
   */
  async #readThread() {
    let thread;
    try {
      thread = await this.#c.client.getThread(this.threadId);
    } catch (error) {
      if (error.kind === "http" && (error.status === 404 || error.status === 400)) {
        this.#finish(new ThreadlineError(`the thread cannot be watched: ${error.message}`, {
          kind: "refused",
          status: error.status,
          body: error.body,
          cause: error,
        }));
      }
      return false;
    }
    if (this.#closed) {
      return false;
    }
    const messages = Array.isArray(thread?.messages) ? thread.messages : [];
    const at = this.#cursor === null ? -1 : messages.findIndex((m) => m.id === this.#cursor);
    for (const message of messages.slice(at + 1)) {
      // A GET's messages leave out `thread`; a frame has it last.
      this.#deliver({ ...message, thread: this.threadId });
    }
    const last = messages.at(-1);
    if (last) {
      this.#cursor = last.id;
    }
    return true;
  }

  #deliver(message) {
    if (this.#closed || !message || typeof message.id !== "string" || this.#seen.has(message.id)) {
      return;
    }
    this.#seen.add(message.id);
    this.#cursor = message.id;
    try {
      this.#c.onMessage(message);
    } catch (error) {
      // The caller's bug must not stop the watch; it still surfaces as an uncaught error.
      queueMicrotask(() => {
        throw error;
      });
    }
  }
}
