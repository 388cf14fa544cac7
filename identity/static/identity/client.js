/**
 * IdentityClient: a browser (or Node) client for the identity protocol, v1,
 * and the topics of v2 (subscribe, publish, members).
 *
 * No DOM access and no dependencies, so third-party pages can load it as an
 * ES module as it is. The wire contract it speaks is described in the
 * project's protocol documentation.
 *
 *     import { IdentityClient } from "/static/identity/client.js";
 *
 *     const client = new IdentityClient();            // same origin as the page
 *     client.on("state", ({ state, retryAt }) => ...);
 *     client.on("identity", ({ user, expiresAt }) => ...);
 *     client.on("signedout", ({ reason }) => ...);
 *     const { user } = await client.signIn(username, password);  // signed in now
 *     const echo = await client.sendMessage("hello");  // {text, user}
 *
 *     // Topics (v2): the server declares them; subscriptions outlive reconnects.
 *     client.on("event", ({ topic, event, data, from }) => ...);
 *     client.on("members", ({ topic, members, event, user }) => ...);
 *     client.on("unsubscribed", ({ topic, reason }) => ...);
 *     const { members } = await client.subscribe("room.lobby");
 *     await client.publish("room.lobby", { text: "hi" });
 *
 *     // A page that may already hold this tab's tokens (a reload):
 *     if (client.start()) { ... wait for the "identity" event before requests ... }
 *
 * Constructor options (all optional):
 *   baseUrl     HTTP origin of the server; default `location.origin`.
 *   wsUrl       WebSocket endpoint; default `ws(s)://<baseUrl host>/ws/`.
 *   storage     a Storage-like object (getItem/setItem/removeItem) for the
 *               tokens; default `sessionStorage` (one identity per tab, kept
 *               across reloads), or memory when there is none.
 *   storageKey  default "identity.tokens".
 *   backoff     `{ base, cap }` in milliseconds, default `{ base: 1000,
 *               cap: 30000 }`: reconnect delays are random(0, min(cap,
 *               base * 2^attempt)) ("full jitter"), so a restarted server is
 *               not hit by every client at the same instant.
 *   requestTimeout  milliseconds to wait for a reply, default 10000.
 *   WebSocket, fetch, random   injectable for tests and non-browser hosts.
 *
 * Methods:
 *   start() -> boolean        connect with the stored tokens, if any.
 *   signIn(username, password, {timeout}) -> Promise<{user, expiresAt}>
 *                             POST /api/token/, store the pair, connect and
 *                             authenticate; resolves once the server has
 *                             registered the identity (the `auth` reply), so
 *                             requests can follow at once. Rejects with
 *                             HttpError (`status`, `detail`, `retryAfter`
 *                             seconds on a 429) when the server refuses the
 *                             credentials, or with IdentityError when the
 *                             socket does not get the identity: the `auth`
 *                             error's `code` and `message`, "connection_failed"
 *                             (the socket could not open or closed first),
 *                             "timeout" (no identity within `timeout` ms,
 *                             default `requestTimeout`), "cancelled" (signOut()
 *                             or another signIn() meanwhile). After a
 *                             rejection the client holds no tokens.
 *   signOut() -> Promise<void>  blacklist the refresh token, send `logout`,
 *                             close, clear storage; emits `signedout`
 *                             with reason "signed_out".
 *   stop()                    close and stop reconnecting, keep the tokens.
 *   retryNow()                skip the rest of a pending backoff delay.
 *   refresh() -> Promise<void>  rotate the token pair now (single-flight).
 *   request(action, payload, {timeout}) -> Promise<payload>   send a frame
 *                             with an integer `ref`; resolves with the reply's
 *                             payload, rejects with IdentityError (`code`,
 *                             `message`, `action`) on an `error` reply, a
 *                             timeout ("timeout") or no open socket
 *                             ("not_connected", "connection_closed").
 *   sendMessage(text), sendDirect(to, text), presence(), whoami(), ping(x)
 *                             shorthands for request().
 *   subscribe(topic) -> Promise<payload>   `{topic, subscribed: true}`, plus
 *                             `members` on a topic that keeps presence (also
 *                             emitted as a `members` event). Rejects like
 *                             request(): "unknown_topic", "forbidden",
 *                             "topic_limit", ... The server forgets
 *                             subscriptions with the socket (and the identity),
 *                             so after every reconnect (or in-band re-auth
 *                             that follows `session` `expired`) the client
 *                             subscribes again to every topic it holds.
 *   unsubscribe(topic) -> Promise<payload>  `{topic, subscribed: false}`; the
 *                             topic is forgotten at once, connected or not.
 *   publish(topic, data, event) -> Promise<payload>  `{topic}`; `event` is an
 *                             optional string (the server's default is
 *                             "message"). Only where the topic lets clients
 *                             publish ("forbidden" otherwise).
 *   on(type, listener) -> unsubscribe function;  off(type, listener).
 *
 * Properties (read-only): state ("connecting" | "online" | "offline"),
 *   retryAt (epoch ms of the next reconnect, or null), user ({id, username}
 *   or null), expiresAt (UNIX seconds or null), signedIn (tokens held),
 *   topics (the topics this client holds and keeps subscribed, an array).
 *   Subscriptions belong to one sign-in: signIn() and every `signedout`
 *   forget them.
 *
 * Events (listener receives one object):
 *   state      {state, retryAt}   "online" means authenticated; "offline"
 *              with retryAt null means no reconnect is planned.
 *   identity   {user, expiresAt}  after every successful `auth`, including
 *              the in-band re-auth that follows a token refresh.
 *   signedout  {reason}  the tokens were dropped: "signed_out" (signOut()),
 *              a server reason after close 4403/4429 (kicked, user_inactive,
 *              user_deleted, token_revoked, too_many_attempts, rate_limited),
 *              "session_expired" (refresh refused), or an `auth` error code.
 *   disconnect {code, reason, reconnect}  every socket close; `reason` comes
 *              from the server's `disconnect` push (or null), `reconnect`
 *              says whether this client will try again.
 *   message    {text, user}     replies to `message`.
 *   direct     {from, text}     pushes from other users' `send`.
 *   presence   {users} (the reply to `presence`) or {event, user} (pushes).
 *   session    {event, expires_at?}  the server's session pushes.
 *   event      {topic, event, data, from}  something was published to a
 *              subscribed topic; `from` is a USER, or null when the server
 *              published. The publisher's own sockets get it too.
 *   members    {topic, members} (a subscribe reply, re-subscriptions after a
 *              reconnect included: the whole list) or {topic, event: "join" |
 *              "leave", user} (pushes; a join may name a user already listed).
 *   unsubscribed {topic, reason}  the server ended a subscription: "forbidden"
 *              (the user lost the right; the topic is dropped, not subscribed
 *              again) or "identity" (the socket lost its identity; subscribed
 *              again after the next `auth`). Also emitted when a
 *              re-subscription after a reconnect is refused, with the error's
 *              code as `reason` ("forbidden", "unknown_topic", ...); the topic
 *              is dropped then too.
 *   error      {code, message, action}  an `error` frame that answered no
 *              pending request.
 *
 * Tokens are sent in the first frame, never in the URL, so they stay out of
 * access logs.
 */

const DEFAULT_BACKOFF = Object.freeze({ base: 1000, cap: 30000 });
const DEFAULT_REQUEST_TIMEOUT = 10000;
const DEFAULT_STORAGE_KEY = "identity.tokens";

/** Close codes of protocol v1. */
export const CloseCode = Object.freeze({
  MESSAGE_TOO_BIG: 1009,
  AUTH_TIMEOUT: 4401,
  FORBIDDEN: 4403,
  TOO_MANY: 4429,
  SLOW_READER: 4408, // this server's: the page stopped reading its socket
});

// After these the server wants a new sign-in, not a retry with the same tokens.
const FINAL_CLOSE_CODES = new Set([CloseCode.FORBIDDEN, CloseCode.TOO_MANY]);
const FALLBACK_REASON = {
  [CloseCode.FORBIDDEN]: "identity_withdrawn",
  [CloseCode.TOO_MANY]: "rate_limited",
};

// `auth` failures a fresh access token can cure; the rest need a new sign-in.
const REFRESHABLE_AUTH_ERRORS = new Set(["token_expired", "token_revoked"]);
// A user over their socket limit may get in once another tab closes; a server
// that lost its channel layer (Redis) answers again once it is back.
const TRANSIENT_AUTH_ERRORS = new Set(["connection_limit", "service_unavailable"]);

// Refusals of a re-subscription that waiting will not cure: the topic is dropped.
const FINAL_SUBSCRIBE_ERRORS = new Set([
  "forbidden",
  "unknown_topic",
  "topic_limit",
  "invalid_payload",
]);
// Failures that the next connect retries by itself: nothing to report.
const CONNECTION_ERRORS = new Set(["not_connected", "connection_closed", "timeout"]);

// When the token lifetime is shorter than the server's expiry notice, every
// re-auth is answered by another `expiring`; this floor stops a refresh loop.
const MIN_HINTED_REFRESH_INTERVAL = 5000;

/** An `error` reply, or a request that could not be answered. */
export class IdentityError extends Error {
  constructor(code, message = code, action = null) {
    super(message);
    this.name = "IdentityError";
    this.code = code;
    this.action = action;
  }
}

/** A non-2xx answer from one of the token endpoints. */
export class HttpError extends Error {
  constructor(status, detail, retryAfter = null) {
    super(detail || `HTTP ${status}`);
    this.name = "HttpError";
    this.status = status;
    this.detail = detail;
    // Seconds, from a Retry-After header (a throttled sign-in), or null.
    this.retryAfter = retryAfter;
  }
}

/** Full-jitter backoff: random(0, min(cap, base * 2^attempt)) milliseconds. */
export function backoffDelay(attempt, { base, cap } = DEFAULT_BACKOFF, random = Math.random) {
  const ceiling = Math.min(cap, base * 2 ** Math.min(attempt, 30));
  return Math.floor(random() * ceiling);
}

/** The WebSocket endpoint that belongs to an HTTP origin. */
export function webSocketUrl(baseUrl) {
  const url = new URL("/ws/", baseUrl);
  url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
  return url.href;
}

function connectionFailed() {
  return new IdentityError("connection_failed", "Could not connect to the server.");
}

function memoryStorage() {
  const items = new Map();
  return {
    getItem: (key) => (items.has(key) ? items.get(key) : null),
    setItem: (key, value) => items.set(key, String(value)),
    removeItem: (key) => items.delete(key),
  };
}

function defaultStorage() {
  try {
    // Accessing sessionStorage throws where storage is disabled.
    if (globalThis.sessionStorage) return globalThis.sessionStorage;
  } catch {
    // fall through to memory
  }
  return memoryStorage();
}

function isTokenPair(value) {
  return Boolean(value) && typeof value.access === "string" && typeof value.refresh === "string";
}

function detailOf(body) {
  if (body && typeof body.detail === "string") return body.detail;
  return null;
}

/** Retry-After in whole seconds (the delta form; this server sends no dates). */
function retryAfterOf(response) {
  const seconds = Number.parseInt(response.headers?.get?.("Retry-After") ?? "", 10);
  return Number.isFinite(seconds) && seconds >= 0 ? seconds : null;
}

export class IdentityClient {
  constructor(options = {}) {
    this._baseUrl = options.baseUrl ?? globalThis.location?.origin;
    if (!this._baseUrl) throw new TypeError("IdentityClient needs a baseUrl outside a page");
    this._wsUrl = options.wsUrl ?? webSocketUrl(this._baseUrl);
    this._storage = options.storage ?? defaultStorage();
    this._storageKey = options.storageKey ?? DEFAULT_STORAGE_KEY;
    this._backoff = { ...DEFAULT_BACKOFF, ...options.backoff };
    this._requestTimeout = options.requestTimeout ?? DEFAULT_REQUEST_TIMEOUT;
    this._WebSocket = options.WebSocket ?? globalThis.WebSocket;
    // Unbound, window.fetch throws "Illegal invocation".
    this._fetch = options.fetch ?? globalThis.fetch.bind(globalThis);
    this._random = options.random ?? Math.random;

    this._listeners = new Map();
    this._pending = new Map();
    this._nextRef = 1;
    this._ws = null;
    this._attempt = 0;
    this._retryTimer = null;
    this._refreshing = null;
    this._lastHintedRefresh = -Infinity;
    this._lastDisconnect = null;
    this._signingIn = null; // {resolve, reject, timer} while signIn() waits for `auth`
    // Topics this client keeps subscribed, and those the current socket's
    // identity holds on the server now; the difference is re-subscribed after
    // the next `auth`.
    this._topics = new Set();
    this._subscribed = new Set();

    this._state = "offline";
    this._retryAt = null;
    this._user = null;
    this._expiresAt = null;
    this._tokens = this._loadTokens();
  }

  get state() {
    return this._state;
  }

  get retryAt() {
    return this._retryAt;
  }

  get user() {
    return this._user;
  }

  get expiresAt() {
    return this._expiresAt;
  }

  get signedIn() {
    return this._tokens !== null;
  }

  get topics() {
    return [...this._topics];
  }

  // ---- events --------------------------------------------------------------

  /** Subscribe to an event; returns a function that unsubscribes. */
  on(type, listener) {
    if (!this._listeners.has(type)) this._listeners.set(type, new Set());
    this._listeners.get(type).add(listener);
    return () => this.off(type, listener);
  }

  /** Unsubscribe a listener added with on(). */
  off(type, listener) {
    this._listeners.get(type)?.delete(listener);
  }

  _emit(type, detail) {
    for (const listener of [...(this._listeners.get(type) ?? [])]) {
      try {
        listener(detail);
      } catch (err) {
        // A faulty listener must not break the connection logic; rethrow
        // outside this stack so it still reaches the console.
        setTimeout(() => {
          throw err;
        });
      }
    }
  }

  _setState(state, retryAt = null) {
    if (state === this._state && retryAt === this._retryAt) return;
    this._state = state;
    this._retryAt = retryAt;
    this._emit("state", { state, retryAt });
  }

  // ---- lifecycle -----------------------------------------------------------

  /** Connect with stored tokens; false when there are none (show a sign-in). */
  start() {
    if (!this._tokens) return false;
    if (!this._ws && this._retryTimer === null) this._connect();
    return true;
  }

  /** Exchange credentials for tokens, connect, and resolve once the identity is registered. */
  async signIn(username, password, { timeout = this._requestTimeout } = {}) {
    const tokens = await this._post("/api/token/", { username, password });
    if (!isTokenPair(tokens)) throw new HttpError(500, "The server sent no tokens.");
    this._cancelSignIn();
    // Another identity may still be connected in this tab; it goes quietly.
    this._teardown();
    this._topics.clear();
    this._saveTokens(tokens);
    this._attempt = 0;
    const established = new Promise((resolve, reject) => {
      const timer = setTimeout(
        () => this._failSignIn(new IdentityError("timeout", "The server did not answer in time.")),
        timeout,
      );
      this._signingIn = { resolve, reject, timer };
    });
    this._connect();
    return established;
  }

  /** Sign out here and on the server; emits `signedout` ("signed_out"). */
  async signOut() {
    this._cancelSignIn();
    const refresh = this._tokens?.refresh;
    if (refresh) await this._blacklist(refresh);
    if (this._state === "online") {
      // The server drops the identity now rather than when the socket closes,
      // so presence shows the user gone at once.
      await this.request("logout", null, { timeout: 2000 }).catch(() => {});
    }
    this._dropSession("signed_out");
  }

  /** Close and stop reconnecting, keeping the tokens for a later start(). */
  stop() {
    this._teardown();
    this._setState("offline");
  }

  /** Reconnect now instead of waiting out the backoff delay. */
  retryNow() {
    if (this._retryTimer === null) return;
    clearTimeout(this._retryTimer);
    this._retryTimer = null;
    this._connect();
  }

  // ---- requests ------------------------------------------------------------

  /** Send `action` with a fresh integer ref; resolves with the reply payload. */
  request(action, payload, { timeout = this._requestTimeout } = {}) {
    return this._requestOn(this._ws, action, payload, timeout);
  }

  /** Post to the shared log; resolves with `{text, user}`. */
  sendMessage(text) {
    return this.request("message", text);
  }

  /** Send a direct message; resolves with `{to, online}`. */
  sendDirect(to, text) {
    return this.request("send", { to, text });
  }

  /** Who is online now; also subscribes this socket to presence pushes. */
  presence() {
    return this.request("presence", null);
  }

  /** The server's view of this socket: `{user, expires_at}`. */
  whoami() {
    return this.request("whoami", null);
  }

  /** Round trip; resolves with the same payload. */
  ping(payload = null) {
    return this.request("ping", payload);
  }

  /** Subscribe to a topic and keep it subscribed across reconnects; resolves with the reply. */
  async subscribe(topic) {
    const reply = await this.request("subscribe", { topic });
    this._subscribedTo(topic, reply);
    return reply;
  }

  /** Stop receiving a topic; resolves with `{topic, subscribed: false}`. */
  unsubscribe(topic) {
    // Forgotten first: a reconnect in between must not bring it back.
    this._topics.delete(topic);
    this._subscribed.delete(topic);
    if (this._state !== "online") {
      // A socket without an identity holds no subscription to end.
      return Promise.resolve({ topic, subscribed: false });
    }
    return this.request("unsubscribe", { topic });
  }

  /** Publish to a topic that lets clients publish; resolves with `{topic}`. */
  publish(topic, data, event) {
    const payload = event === undefined ? { topic, data } : { topic, data, event };
    return this.request("publish", payload);
  }

  _requestOn(ws, action, payload, timeout) {
    if (!ws || ws.readyState !== 1) {
      return Promise.reject(new IdentityError("not_connected", "Not connected.", action));
    }
    const ref = this._nextRef++;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this._pending.delete(ref);
        reject(new IdentityError("timeout", "No reply in time.", action));
      }, timeout);
      this._pending.set(ref, { resolve, reject, timer, action });
      ws.send(JSON.stringify({ action, payload, ref }));
    });
  }

  _settle(frame) {
    const pending = this._pending.get(frame.ref);
    if (!pending) return false;
    this._pending.delete(frame.ref);
    clearTimeout(pending.timer);
    if (frame.action === "error") {
      const { code, message, action } = frame.payload ?? {};
      pending.reject(new IdentityError(code, message, action ?? pending.action));
    } else {
      pending.resolve(frame.payload);
    }
    return true;
  }

  _failPending(code, message) {
    for (const { reject, timer, action } of this._pending.values()) {
      clearTimeout(timer);
      reject(new IdentityError(code, message, action));
    }
    this._pending.clear();
  }

  // ---- socket --------------------------------------------------------------

  _connect() {
    this._retryTimer = null;
    if (!this._tokens) return;
    this._setState("connecting");
    let ws;
    try {
      ws = new this._WebSocket(this._wsUrl);
    } catch {
      if (this._signingIn) this._failSignIn(connectionFailed());
      else this._scheduleReconnect();
      return;
    }
    this._ws = ws;
    this._lastDisconnect = null;
    this._subscribed.clear(); // the server forgets subscriptions with the socket
    // Handlers check `ws === this._ws` so a socket we replaced stays silent.
    ws.onopen = () => ws === this._ws && this._authenticate(ws);
    ws.onmessage = (event) => ws === this._ws && this._onFrame(ws, event.data);
    ws.onclose = (event) => ws === this._ws && this._onClose(event.code);
    ws.onerror = () => {}; // a close event always follows
  }

  _onFrame(ws, data) {
    let frame;
    try {
      frame = JSON.parse(data);
    } catch {
      return;
    }
    if (!frame || typeof frame.action !== "string") return;
    const answered = frame.ref != null && this._settle(frame);
    this._dispatch(ws, frame, answered);
  }

  _dispatch(ws, { action, payload }, answered) {
    switch (action) {
      case "session":
        this._onSession(ws, payload ?? {});
        this._emit("session", payload);
        break;
      case "disconnect":
        // The close follows; its handler reads the reason from here.
        this._lastDisconnect = payload ?? null;
        break;
      case "message":
      case "direct":
      case "presence":
      case "event":
      case "members":
        this._emit(action, payload);
        break;
      case "unsubscribed":
        this._onUnsubscribed(payload ?? {});
        break;
      case "error":
        if (!answered) this._emit("error", payload);
        break;
      default:
        break;
    }
  }

  _onClose(code) {
    const push = this._lastDisconnect;
    this._ws = null;
    this._lastDisconnect = null;
    this._failPending("connection_closed", "The connection closed.");
    const reason = push?.reason ?? null;
    if (this._signingIn) {
      // Not signed in yet: say why rather than retrying in the background.
      this._emit("disconnect", { code, reason, reconnect: false });
      const error = reason
        ? new IdentityError(reason, `The server closed the connection (${reason}).`)
        : connectionFailed();
      this._failSignIn(error);
      return;
    }
    const final = FINAL_CLOSE_CODES.has(code) || push?.reconnect === false;
    this._emit("disconnect", { code, reason, reconnect: !final });
    if (final) {
      this._dropSession(reason ?? FALLBACK_REASON[code] ?? `closed_${code}`);
    } else {
      // 4401, 1009, a server restart or a network cut: same tokens, new socket.
      this._scheduleReconnect();
    }
  }

  _scheduleReconnect() {
    const delay = backoffDelay(this._attempt, this._backoff, this._random);
    this._attempt += 1;
    this._retryTimer = setTimeout(() => this._connect(), delay);
    this._setState("offline", Date.now() + delay);
  }

  /** Close the current socket on purpose and try again after a backoff. */
  _reconnect() {
    this._closeSocket();
    this._scheduleReconnect();
  }

  _closeSocket() {
    const ws = this._ws;
    if (!ws) return;
    this._ws = null;
    ws.onopen = ws.onmessage = ws.onclose = null;
    try {
      ws.close(1000);
    } catch {
      // already closing
    }
    this._failPending("connection_closed", "The connection closed.");
  }

  _teardown() {
    clearTimeout(this._retryTimer);
    this._retryTimer = null;
    this._closeSocket();
  }

  // ---- authentication ------------------------------------------------------

  async _authenticate(ws, { mayRefresh = true } = {}) {
    if (!this._tokens) return;
    let reply;
    try {
      reply = await this._requestOn(ws, "auth", this._tokens.access, this._requestTimeout);
    } catch (err) {
      if (ws !== this._ws) return;
      if (this._signingIn) this._failSignIn(err);
      else this._reconnect();
      return;
    }
    if (ws !== this._ws) return;
    if (reply?.registered) {
      this._identified(reply);
      return;
    }
    const { code = "token_invalid", message = code } = reply?.error ?? {};
    if (this._signingIn) this._failSignIn(new IdentityError(code, message, "auth"));
    else await this._onAuthRefused(ws, code, mayRefresh);
  }

  async _onAuthRefused(ws, code, mayRefresh) {
    if (mayRefresh && REFRESHABLE_AUTH_ERRORS.has(code)) {
      // One refresh per refusal: a second refusal means the sign-in is gone.
      if (await this._refreshOrDrop(code, ws)) await this._authenticate(ws, { mayRefresh: false });
    } else if (TRANSIENT_AUTH_ERRORS.has(code)) {
      this._reconnect();
    } else {
      this._dropSession(code);
    }
  }

  _identified({ user, expires_at: expiresAt }) {
    this._attempt = 0;
    this._user = user;
    this._expiresAt = expiresAt;
    this._setState("online");
    this._emit("identity", { user, expiresAt });
    const signingIn = this._signingIn;
    if (signingIn) {
      this._signingIn = null;
      clearTimeout(signingIn.timer);
      signingIn.resolve({ user, expiresAt });
    }
    this._resubscribe();
  }

  // ---- topics --------------------------------------------------------------

  _subscribedTo(topic, reply) {
    this._topics.add(topic);
    this._subscribed.add(topic);
    if (Array.isArray(reply?.members)) this._emit("members", { topic, members: reply.members });
  }

  /** After an `auth`: subscribe again to the topics the server no longer holds for us. */
  _resubscribe() {
    const ws = this._ws;
    // Only answers for this socket, and for topics nobody unsubscribed meanwhile.
    const current = (topic) => ws === this._ws && this._topics.has(topic);
    for (const topic of this._topics) {
      if (this._subscribed.has(topic)) continue;
      this._requestOn(ws, "subscribe", { topic }, this._requestTimeout).then(
        (reply) => current(topic) && this._subscribedTo(topic, reply),
        (err) => current(topic) && this._onResubscribeRefused(topic, err),
      );
    }
  }

  _onResubscribeRefused(topic, err) {
    if (FINAL_SUBSCRIBE_ERRORS.has(err.code)) {
      this._topics.delete(topic);
      this._emit("unsubscribed", { topic, reason: err.code });
    } else if (!CONNECTION_ERRORS.has(err.code)) {
      // Kept: the next `auth` tries again. Said, so a page can show it.
      this._emit("error", { code: err.code, message: err.message, action: "subscribe" });
    }
  }

  _onUnsubscribed(payload) {
    const { topic, reason } = payload;
    this._subscribed.delete(topic);
    // "identity": the same sign-in comes back with the next `auth`, and so
    // does the subscription. Anything else ("forbidden") is final.
    if (reason !== "identity") this._topics.delete(topic);
    this._emit("unsubscribed", payload);
  }

  /**
   * A signIn() that did not get its identity: reject it and forget its tokens
   * without a `signedout` event (nobody was signed in).
   */
  _failSignIn(error) {
    const signingIn = this._signingIn;
    if (!signingIn) return;
    this._signingIn = null;
    clearTimeout(signingIn.timer);
    const refresh = this._forget();
    if (refresh) this._blacklist(refresh);
    signingIn.reject(error);
  }

  /** signOut() or a second signIn() supersedes a pending one. */
  _cancelSignIn() {
    const signingIn = this._signingIn;
    if (!signingIn) return;
    this._signingIn = null;
    clearTimeout(signingIn.timer);
    signingIn.reject(new IdentityError("cancelled", "Another sign-in or a sign-out came first."));
  }

  _onSession(ws, { event }) {
    if (event === "expiring") {
      // Only a hint: on failure the `expired` push gives a second chance.
      if (Date.now() - this._lastHintedRefresh < MIN_HINTED_REFRESH_INTERVAL) return;
      this._lastHintedRefresh = Date.now();
      this._refreshInBand(ws, { dropOnNetworkError: false });
    } else if (event === "expired") {
      // The socket is anonymous again and the server's auth timeout runs.
      this._setState("connecting");
      this._refreshInBand(ws, { dropOnNetworkError: true });
    }
  }

  /** Refresh and re-authenticate on the same socket (no reconnect). */
  async _refreshInBand(ws, { dropOnNetworkError }) {
    const ok = await this._refreshOrDrop("session_expired", dropOnNetworkError ? ws : null);
    if (ok && ws === this._ws) await this._authenticate(ws);
  }

  /**
   * Refresh the tokens; on a refusal drop the session with `reason`. On a
   * network failure reconnect `ws` (when given) so a later open tries again.
   */
  async _refreshOrDrop(reason, ws) {
    try {
      await this.refresh();
      return true;
    } catch (err) {
      if (err instanceof HttpError) {
        if (this._tokens) this._dropSession(reason);
      } else if (ws && ws === this._ws) {
        this._reconnect();
      }
      return false;
    }
  }

  /** Rotate the token pair; concurrent callers share one request. */
  refresh() {
    this._refreshing ??= this._rotate().finally(() => {
      this._refreshing = null;
    });
    return this._refreshing;
  }

  async _rotate() {
    const tokens = this._tokens;
    if (!tokens) throw new IdentityError("not_signed_in", "Not signed in.");
    const fresh = await this._post("/api/token/refresh/", { refresh: tokens.refresh });
    // Signed out (or in as someone else) while the request was in flight.
    if (this._tokens !== tokens) throw new IdentityError("not_signed_in", "Not signed in.");
    if (typeof fresh?.access !== "string") throw new HttpError(500, "The server sent no token.");
    // The server rotates refresh tokens (the old one is blacklisted); keep
    // the old one only if this server does not rotate.
    this._saveTokens({ access: fresh.access, refresh: fresh.refresh ?? tokens.refresh });
  }

  /** Close the socket, forget the identity and the tokens; the refresh token it had. */
  _forget() {
    const refresh = this._tokens?.refresh;
    this._teardown();
    this._clearTokens();
    this._topics.clear();
    this._user = null;
    this._expiresAt = null;
    this._attempt = 0;
    this._setState("offline");
    return refresh;
  }

  /** Forget the identity and the tokens, then tell listeners why. */
  _dropSession(reason) {
    const refresh = this._forget();
    this._emit("signedout", { reason });
    // A discarded refresh token should not stay usable by whoever copies it.
    if (refresh && reason !== "signed_out") this._blacklist(refresh);
  }

  // ---- HTTP and storage ----------------------------------------------------

  async _post(path, body) {
    const response = await this._fetch(new URL(path, this._baseUrl).href, {
      method: "POST",
      headers: { "Content-Type": "application/json", Accept: "application/json" },
      body: JSON.stringify(body),
      credentials: "same-origin",
    });
    const data = await response.json().catch(() => null);
    if (!response.ok) throw new HttpError(response.status, detailOf(data), retryAfterOf(response));
    return data;
  }

  /** Best effort: signing out must work even when the server is down. */
  async _blacklist(refresh) {
    try {
      await this._post("/api/token/blacklist/", { refresh });
    } catch {
      // nothing more a client can do
    }
  }

  _loadTokens() {
    try {
      const tokens = JSON.parse(this._storage.getItem(this._storageKey));
      return isTokenPair(tokens) ? tokens : null;
    } catch {
      return null;
    }
  }

  _saveTokens(tokens) {
    this._tokens = { access: tokens.access, refresh: tokens.refresh };
    try {
      this._storage.setItem(this._storageKey, JSON.stringify(this._tokens));
    } catch {
      // Storage full or disabled: the session still works until a reload.
    }
  }

  _clearTokens() {
    this._tokens = null;
    try {
      this._storage.removeItem(this._storageKey);
    } catch {
      // nothing stored
    }
  }
}
