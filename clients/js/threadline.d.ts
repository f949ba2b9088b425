// Type declarations of threadline.js.

/** Any JSON value but null or a blank string: who wrote, returned exactly as sent. */
export type User = unknown;

/** A message as the socket sends it and `POST /chat/message/` returns it. */
export interface Message {
  id: string;
  user: User;
  /** UTC, ISO 8601 with microseconds: `2026-11-24T03:22:40.123456Z`. */
  timestamp: string;
  body: string;
  /** True if the visitor wrote it, false if an agent did (via Slack). */
  send_by_user: boolean;
  thread: string;
}

/** A thread as `GET /chat/thread/<id>/` returns it, messages oldest first. */
export interface Thread {
  id: string;
  user: User;
  timestamp: string;
  messages: Omit<Message, "thread">[];
}

/** The fields of `POST /chat/message/`, as the contract names them. */
export interface NewMessage {
  thread: string;
  user: User;
  body: string;
  /** The contract's default is false (an agent's message). */
  send_by_user?: boolean;
}

/**
 * What went wrong, as a value: an error answer (`status` and the contract's JSON body), no
 * answer (`status` 0), or a websocket closed for good (`code`).
 */
export declare class ThreadlineError extends Error {
  readonly name: "ThreadlineError";
  /**
   * "http": an error answer; "network": no answer, or none in time; "closed": the socket was
   * closed with a code that retrying cannot fix; "refused": the thread cannot be watched (a
   * GET said why: `status`, `body`).
   */
  readonly kind: "http" | "network" | "closed" | "erased" | "refused";
  /** The HTTP status, 0 if there was no answer. */
  readonly status: number;
  /**
   * The answer's JSON body as the contract gives it: `{"detail": "..."}`, or one list of texts
   * per field (`{"body": ["This field may not be blank."]}`); null if there was none.
   */
  readonly body: Record<string, unknown> | null;
  /** The websocket close code, for kinds "closed" and "erased" (4404). */
  readonly code?: number;
  /** Whether the same request may succeed later. */
  readonly retryable: boolean;
}

export interface ClientOptions {
  /** The HTTP API, e.g. "https://chat.example.com"; in a browser, the page's origin by default. */
  baseUrl?: string;
  /** The websocket's base, e.g. "wss://chat.example.com"; by default `baseUrl` with ws(s). */
  websocketUrl?: string;
  /** Headers sent with every HTTP request (e.g. `Authorization`). */
  headers?: Record<string, string>;
  /** Retries of a GET, or of a POST with an Idempotency-Key, after a network error or a 408, 429 or 5xx. Default 4. */
  retries?: number;
  /** How long one HTTP attempt may take, in ms. Default 15000. */
  timeout?: number;
  /** Reconnect and retry delays, in ms. Default `{ initial: 250, max: 10000 }`. */
  backoff?: { initial?: number; max?: number };
  /** Replacements, for Node.js and tests. */
  fetch?: typeof fetch;
  WebSocket?: new (url: string) => WebSocket;
  random?: () => number;
  setTimeout?: (callback: () => void, ms: number) => unknown;
  clearTimeout?: (id: unknown) => void;
  now?: () => number;
  /** Where the `online` event comes from; `globalThis` by default, null for none. */
  events?: Pick<EventTarget, "addEventListener" | "removeEventListener"> | null;
}

export interface PostOptions {
  /**
   * Sent as `Idempotency-Key`, so that retries are stored once. A new random key by default;
   * `null` sends none, and then a POST is never retried.
   */
  idempotencyKey?: string | null | false;
  headers?: Record<string, string>;
}

export type WatchState =
  | { state: "connecting"; attempt: number }
  | { state: "open" }
  | { state: "waiting"; code: number; delay: number; attempt: number }
  | { state: "catching-up" }
  | { state: "closed"; error: ThreadlineError | null };

export interface WatchOptions {
  /**
   * The id of the last message already shown (from a GET, a frame, or the page's own POST):
   * the watch delivers what follows it. Without it, the thread's whole history first.
   */
  since?: string | null;
  /** Each change of the connection, for a status line. */
  onState?: (state: WatchState) => void;
  /** The error that stopped the watch for good. */
  onError?: (error: ThreadlineError) => void;
}

export interface Watch {
  readonly threadId: string;
  readonly state: WatchState["state"];
  /** The newest message delivered (or the `since` given): where a reconnect resumes. */
  readonly lastId: string | null;
  /** Resolves when the watch ends: null after `close()`, else the error that stopped it. */
  readonly done: Promise<ThreadlineError | null>;
  /** Replaces the socket now (what the `online` event does). */
  reconnect(): void;
  close(): void;
}

export interface Client {
  readonly baseUrl: string;
  readonly websocketUrl: string;
  createThread(user: User, options?: PostOptions): Promise<Thread>;
  getThread(threadId: string, options?: { headers?: Record<string, string> }): Promise<Thread>;
  postMessage(message: NewMessage, options?: PostOptions): Promise<Message>;
  /**
   * Listens on a thread: `onMessage` gets each of its messages once, in the thread's order,
   * across dropped sockets, restarted servers and lost networks, until `close()`.
   */
  watch(threadId: string, onMessage: (message: Message) => void, options?: WatchOptions): Watch;
}

export declare function createClient(options?: ClientOptions): Client;

/** The delay before retry `attempt` (0 first), in ms: within [ceiling / 2, ceiling), ceiling = min(max, initial * 2^attempt). */
export declare function backoffDelay(
  attempt: number,
  options?: { initial?: number; max?: number; random?: () => number },
): number;

/** A random UUID, also where `crypto.randomUUID` is missing. */
export declare function randomKey(): string;

export declare const RETRY_CODES: readonly number[];
export declare const STOP_CODES: readonly number[];
export declare const LOAD_THE_THREAD_FIRST: 4000;
export declare const THREAD_ERASED: 4404;
export declare const DEFAULT_BACKOFF: { readonly initial: number; readonly max: number };
