// runwire.js: the browser client of runwire's wire protocol (docs/client.md).
//
// An ES module with no dependencies and no build step. It keeps one WebSocket open,
// reconnects by itself, and delivers every event of the sessions it follows exactly once,
// in order, across reconnects, server restarts and page refreshes.
//
//   import { RunwireClient } from "/static/runwire.js";
//   const client = new RunwireClient({ token, onEvent: (e) => render(e) });
//   client.connect();
//   await client.subscribe(sessionId, { run_id, after_seq });
//   await client.send({ session_id: sessionId, content: "hello" });

const DEFAULT_BACKOFF = { initial: 500, max: 10000, factor: 2 };
const SEEN_RUNS_KEPT = 32; // per session: runs remembered for de-duplication
const PERSIST_DELAY = 100; // ms: coalesces sessionStorage writes during a fast stream

/** An error frame (or a client-side failure) as an Error with the protocol's `code`. */
export class RunwireError extends Error {
  constructor(code, message, detail = {}) {
    super(message);
    this.name = "RunwireError";
    this.code = code;
    this.session_id = detail.session_id ?? null;
    this.status = detail.status ?? null;
    this.frame = detail.frame ?? null;
  }
}

/** A random id; crypto.randomUUID only exists in secure contexts (not plain http on a LAN). */
export function randomId() {
  if (globalThis.crypto?.randomUUID) return globalThis.crypto.randomUUID();
  const bytes = new Uint8Array(16);
  globalThis.crypto.getRandomValues(bytes);
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

/** The /ws endpoint of the server this module was loaded from (works under a mount prefix). */
function defaultWsUrl() {
  const url = new URL("../ws", import.meta.url);
  url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
  return url.toString();
}

function httpBaseOf(wsUrl) {
  const url = new URL(wsUrl);
  url.protocol = url.protocol === "wss:" ? "https:" : "http:";
  url.pathname = url.pathname.replace(/\/ws\/?$/, "");
  url.search = "";
  url.hash = "";
  return url.toString().replace(/\/$/, "");
}

function defaultStorage() {
  try {
    return globalThis.sessionStorage ?? null;
  } catch {
    return null; // storage disabled (privacy mode, sandboxed iframe): positions live in memory
  }
}

/** Per-session follow state: the position and the runs seen, for resume and de-duplication. */
class Follow {
  constructor(sessionId) {
    this.session_id = sessionId;
    this.seen = new Map(); // run_id -> highest seq accepted (insertion order = age)
    this.done = new Set(); // run_ids whose `complete` was accepted
    this.pos = null; // {run_id, seq} of the last accepted event
    this.open = null; // run_id seen started (by this client) but not completed
    this.start = { after_seq: 0 }; // where the first subscribe starts when pos is null
    this.wanted = true; // resubscribe on reconnect
    this.active = false; // `subscribed` received on the current connection
    this.reqId = null; // id of the subscribe frame whose reply is awaited
    this.sentOn = null; // connection number a subscribe was last sent on
    this.waiters = [];
    this.replayCheck = null; // {left, running}: see _checkReplayed
  }

  toJSON() {
    const seen = [...this.seen].map(([runId, seq]) => [runId, seq, this.done.has(runId) ? 1 : 0]);
    return { pos: this.pos, seen };
  }

  restore(data) {
    if (!data || !Array.isArray(data.seen)) return;
    for (const [runId, seq, done] of data.seen) {
      this.seen.set(runId, seq);
      if (done) this.done.add(runId);
    }
    this.pos = data.pos ?? null;
  }

  reset(position) {
    this.seen.clear();
    this.done.clear();
    this.open = null;
    this.pos = null;
    this.start = { after_seq: position.after_seq ?? 0 };
    if (position.run_id) {
      this.seen.set(position.run_id, position.after_seq ?? 0);
      this.pos = { run_id: position.run_id, seq: position.after_seq ?? 0 };
    }
  }

  remember(runId, seq) {
    this.seen.delete(runId); // re-insert: newest last
    this.seen.set(runId, seq);
    while (this.seen.size > SEEN_RUNS_KEPT) {
      const oldest = this.seen.keys().next().value;
      this.seen.delete(oldest);
      this.done.delete(oldest);
    }
  }
}

/**
 * A runwire connection. See docs/client.md for the full API.
 *
 * Options: url, token, batch (true), storage (sessionStorage), storagePrefix,
 * pingInterval (ms), pingTimeout (ms), requestTimeout (ms), backoff {initial, max, factor},
 * and callbacks onEvent, onRunStarted, onRunFinished, onState, onError, onSubscribed,
 * onLagged, onResync, onTruncated, onSessionDeleted, onFrame.
 */
export class RunwireClient {
  constructor(options = {}) {
    this.url = options.url ?? defaultWsUrl();
    this.httpBase = options.httpBase ?? httpBaseOf(this.url);
    this.token = options.token ?? null;
    this.batch = options.batch ?? true;
    this.storage = options.storage === undefined ? defaultStorage() : options.storage;
    this.storagePrefix = options.storagePrefix ?? "runwire:";
    this.pingInterval = options.pingInterval ?? 15000;
    this.pingTimeout = options.pingTimeout ?? 10000;
    this.requestTimeout = options.requestTimeout ?? 30000;
    this.backoff = { ...DEFAULT_BACKOFF, ...(options.backoff ?? {}) };
    for (const name of CALLBACKS) this[name] = options[name] ?? null;

    this.state = "idle"; // idle | connecting | connected | reconnecting | offline | closed
    this.stats = { connects: 0, duplicates: 0, gaps: 0, lagged: 0, truncated: 0 };
    this._ws = null;
    this._conn = 0; // connection number, bumped on every open socket
    this._attempt = 0;
    this._retryTimer = null;
    this._pingTimer = null;
    this._pingDeadline = null;
    this._persistTimer = null;
    this._nextId = 1;
    this._pending = new Map(); // id -> request
    this._follows = new Map(); // session_id -> Follow
    this._listeners = [];
  }

  // Connection ----------------------------------------------------------------------------

  /** Open the connection (and keep it open until close()). */
  connect() {
    if (this._ws) return;
    if (this.state === "idle" || this.state === "closed") this._listen();
    clearTimeout(this._retryTimer);
    this._retryTimer = null;
    this._setState(this.state === "idle" || this.state === "closed" ? "connecting" : this.state);
    const url = new URL(this.url);
    if (this.token) url.searchParams.set("token", this.token);
    if (this.batch) url.searchParams.set("batch", "1");
    const ws = new WebSocket(url.toString());
    this._ws = ws;
    ws.onopen = () => this._opened(ws);
    ws.onmessage = (msg) => this._received(ws, msg);
    ws.onclose = () => this._lost(ws);
  }

  /** Close for good: no reconnect; pending requests fail with CLOSED. */
  close() {
    this._setState("closed");
    clearTimeout(this._retryTimer);
    this._retryTimer = null;
    this._persistNow();
    for (const [target, type, fn] of this._listeners) target.removeEventListener(type, fn);
    this._listeners = [];
    const ws = this._ws;
    ws?.close(1000);
    if (ws) this._lost(ws);
    for (const id of [...this._pending.keys()]) this._fail(id, "CLOSED", "the client was closed");
  }

  /** Reconnect now instead of waiting for the backoff (e.g. after the browser came online). */
  reconnectNow() {
    if (this.state === "closed") return;
    this._attempt = 0;
    if (this._ws) {
      this._probe();
    } else {
      this.connect();
    }
  }

  get connected() {
    return this.state === "connected";
  }

  _listen() {
    const win = globalThis.window;
    if (!win?.addEventListener) return;
    const on = (target, type, fn) => {
      target.addEventListener(type, fn);
      this._listeners.push([target, type, fn]);
    };
    on(win, "online", () => this.reconnectNow());
    on(win, "offline", () => {
      // The browser knows the network is gone: stop waiting for a timeout.
      if (this._ws) this._lost(this._ws, true);
      else this._setState("offline");
    });
    on(win, "pagehide", () => this._persistNow());
    if (globalThis.document) {
      on(globalThis.document, "visibilitychange", () => {
        // Phones freeze background tabs: check the socket as soon as the page is back.
        if (globalThis.document.visibilityState === "visible") this.reconnectNow();
      });
    }
  }

  _opened(ws) {
    if (ws !== this._ws) return;
    this._conn += 1;
    this.stats.connects += 1;
    this._setState("connected");
    this._schedulePing();
    for (const follow of this._follows.values()) {
      if (follow.wanted) this._sendSubscribe(follow);
    }
    for (const [id, req] of this._pending) {
      if (req.kind !== "subscribe" && !req.sentOn) this._transmit(id, req);
    }
  }

  _lost(ws, offline = false) {
    if (ws !== this._ws) return;
    ws.onopen = ws.onmessage = ws.onclose = null;
    if (ws.readyState === WebSocket.OPEN || ws.readyState === WebSocket.CONNECTING) ws.close();
    this._ws = null;
    clearTimeout(this._pingTimer);
    clearTimeout(this._pingDeadline);
    this._pingTimer = this._pingDeadline = null;
    for (const follow of this._follows.values()) {
      follow.active = false;
      follow.sentOn = null;
      follow.reqId = null;
    }
    for (const [id, req] of [...this._pending]) {
      if (req.kind === "subscribe") {
        clearTimeout(req.timer);
        this._pending.delete(id); // the follow is resubscribed from its position
      } else if (req.sentOn) {
        // Sent, no reply: only requests that are safe to repeat are sent again.
        if (req.retry) req.sentOn = null;
        else this._fail(id, "CONNECTION_LOST", "the connection closed before the reply");
      }
    }
    if (this.state === "closed") return;
    if (offline || globalThis.navigator?.onLine === false) {
      this._setState("offline");
      return; // the `online` event reconnects
    }
    this._setState("reconnecting");
    const { initial, max, factor } = this.backoff;
    const ceiling = Math.min(max, initial * factor ** this._attempt);
    this._attempt += 1;
    // Equal jitter: at least half the ceiling, so a restart is not hit by every tab at once.
    const delay = ceiling / 2 + Math.random() * (ceiling / 2);
    this._retryTimer = setTimeout(() => this.connect(), delay);
  }

  _schedulePing() {
    clearTimeout(this._pingTimer);
    this._pingTimer = setTimeout(() => this._probe(), this.pingInterval);
  }

  /** App-level ping: a connection that stays silent past pingTimeout is dropped. */
  _probe() {
    const ws = this._ws;
    if (!ws || ws.readyState !== WebSocket.OPEN || this._pingDeadline) return;
    this._rawSend(ws, { type: "ping", id: `ping-${this._nextId++}` });
    this._pingDeadline = setTimeout(() => this._lost(ws), this.pingTimeout);
  }

  _setState(state) {
    if (this.state === state) return;
    this.state = state;
    this._call("onState", state);
  }

  _rawSend(ws, frame) {
    try {
      ws.send(JSON.stringify(frame));
      return true;
    } catch {
      return false; // closing: the close handler reconnects and resends
    }
  }

  // Inbound -------------------------------------------------------------------------------

  _received(ws, msg) {
    if (ws !== this._ws) return;
    // Any message proves the connection alive.
    clearTimeout(this._pingDeadline);
    this._pingDeadline = null;
    this._attempt = 0;
    this._schedulePing();
    let parsed;
    try {
      parsed = JSON.parse(msg.data);
    } catch {
      this._call("onError", new RunwireError("BAD_FRAME", "the server sent a message that is not JSON"));
      return;
    }
    const frames = Array.isArray(parsed) ? parsed : [parsed]; // batch=1 packs frames in arrays
    for (const frame of frames) {
      if (frame && typeof frame === "object") this._dispatch(frame);
    }
  }

  _dispatch(frame) {
    this._call("onFrame", frame);
    switch (frame.type) {
      case "event":
        return this._onEvent(frame);
      case "subscribed":
        return this._onSubscribed(frame);
      case "lagged":
        return this._onLagged(frame);
      case "run_started":
        return this._call("onRunStarted", frame.run, frame);
      case "run_finished":
        return this._call("onRunFinished", frame.run, frame);
      case "session_deleted":
        this.forget(frame.session_id);
        return this._call("onSessionDeleted", frame.session_id, frame);
      case "error":
        return this._onError(frame);
      default:
        if (frame.id !== undefined && this._pending.has(frame.id)) this._resolve(frame.id, frame);
    }
  }

  _onEvent(event) {
    const follow = this._follows.get(event.session_id);
    // Not following, or a frame of a subscription that was replaced: not for us.
    if (!follow || !follow.active) return;
    try {
      this._accept(follow, event);
    } finally {
      if (follow.replayCheck && follow.active) {
        follow.replayCheck.left -= 1;
        this._checkReplayed(follow);
      }
    }
  }

  _accept(follow, event) {
    const { run_id: runId, seq } = event;
    const max = follow.seen.get(runId);
    if (max !== undefined && seq <= max) {
      this.stats.duplicates += 1; // second line of defense: never show an event twice
      return;
    }
    if (max !== undefined && seq > max + 1) {
      // The server promises no gap; if one shows anyway, ask again from where we are.
      this.stats.gaps += 1;
      this._resubscribe(follow);
      return;
    }
    if (follow.open && follow.open !== runId) this._truncated(follow, follow.open);
    follow.remember(runId, seq);
    follow.pos = { run_id: runId, seq };
    if (event.kind === "complete") {
      follow.done.add(runId);
      follow.open = null;
    } else if (!follow.done.has(runId)) {
      follow.open = runId;
    }
    this._schedulePersist();
    this._call("onEvent", event);
  }

  _onSubscribed(frame) {
    const req = this._pending.get(frame.id);
    this._pending.delete(frame.id);
    clearTimeout(req?.timer);
    const follow = this._follows.get(frame.session_id);
    if (!follow || follow.reqId !== frame.id) return; // superseded by a newer subscribe
    follow.active = true;
    follow.reqId = null;
    const waiters = follow.waiters.splice(0);
    for (const w of waiters) w.resolve(frame);
    follow.replayCheck = null;
    if (!frame.recovered) {
      // Events before first_available are gone: accept the jump, let the app reload history.
      const first = frame.first_available;
      if (first?.run_id) {
        follow.remember(first.run_id, Math.max(0, first.seq - 1));
        follow.open = null;
      }
      this._call("onResync", frame.session_id, { reason: "not_recovered", frame });
    } else if (follow.open) {
      // Is the run we were watching still going? Known once the replay is through.
      const running = frame.run?.run_id === follow.open && frame.run?.status === "running";
      follow.replayCheck = { left: frame.replayed ?? 0, running };
      this._checkReplayed(follow);
    }
    this._call("onSubscribed", frame);
  }

  _checkReplayed(follow) {
    const check = follow.replayCheck;
    if (!check || check.left > 0) return;
    follow.replayCheck = null;
    // The replay is over, the run had stopped running, and its `complete` never came: the
    // server restarted and its log ends before the last events this client had seen.
    if (follow.open && !check.running) this._truncated(follow, follow.open);
  }

  _truncated(follow, runId) {
    this.stats.truncated += 1;
    follow.open = null;
    follow.done.add(runId);
    this._schedulePersist();
    this._call("onTruncated", follow.session_id, {
      run_id: runId,
      last_seq: follow.seen.get(runId) ?? 0,
    });
  }

  _onLagged(frame) {
    this.stats.lagged += 1;
    const follow = this._follows.get(frame.session_id);
    if (!follow || !follow.wanted) return;
    if (!follow.pos || follow.pos.run_id !== frame.run_id) {
      follow.pos = { run_id: frame.run_id, seq: frame.last_seq };
    }
    follow.sentOn = null; // the server already dropped it: no unsubscribe needed
    this._call("onLagged", frame);
    this._resubscribe(follow);
  }

  _onError(frame) {
    const err = new RunwireError(frame.code ?? "INTERNAL", frame.message ?? "error", {
      session_id: frame.session_id,
      frame,
    });
    const req = frame.id !== undefined ? this._pending.get(frame.id) : undefined;
    if (req?.kind === "subscribe") {
      this._pending.delete(frame.id);
      clearTimeout(req.timer);
      const follow = this._follows.get(req.session_id);
      if (follow && follow.reqId === frame.id) {
        // A subscription that the server refuses cannot be kept: stop following it.
        this._follows.delete(req.session_id);
        for (const w of follow.waiters.splice(0)) w.reject(err);
        if (err.code === "SESSION_NOT_FOUND") this._storageRemove(req.session_id);
        this._call("onResync", req.session_id, { reason: "failed", error: err });
      }
    } else if (req) {
      this._pending.delete(frame.id);
      clearTimeout(req.timer);
      req.reject(err);
      if (req.silent) return;
    }
    this._call("onError", err);
  }

  // Requests ------------------------------------------------------------------------------

  _request(frame, { retry = false, silent = false } = {}) {
    if (this.state === "closed") {
      return Promise.reject(new RunwireError("CLOSED", "the client was closed"));
    }
    const id = this._nextId++;
    return new Promise((resolve, reject) => {
      const req = { kind: frame.type, frame: { ...frame, id }, resolve, reject, retry, silent };
      req.sentOn = null;
      req.timer = setTimeout(
        () => this._fail(id, "TIMEOUT", `no reply to ${frame.type} in ${this.requestTimeout} ms`),
        this.requestTimeout,
      );
      this._pending.set(id, req);
      if (this.state === "connected") this._transmit(id, req);
      else if (this.state === "idle") this.connect();
    });
  }

  _transmit(id, req) {
    if (this._rawSend(this._ws, req.frame)) req.sentOn = this._conn;
  }

  _resolve(id, frame) {
    const req = this._pending.get(id);
    this._pending.delete(id);
    clearTimeout(req.timer);
    req.resolve(frame);
  }

  _fail(id, code, message) {
    const req = this._pending.get(id);
    if (!req) return;
    this._pending.delete(id);
    clearTimeout(req.timer);
    req.reject(new RunwireError(code, message));
  }

  /**
   * Start a run: {content, session_id?, provider?, options?, client_msg_id?, multitask?}.
   * Resolves with the `ack` ({session_id, run_id, status}). A client_msg_id is generated
   * when none is given, so a send lost with the connection is repeated safely.
   */
  send({ content, session_id, provider, options, client_msg_id, multitask } = {}) {
    if (typeof content !== "string") {
      return Promise.reject(new RunwireError("INVALID_FIELD", "content must be a string"));
    }
    const frame = { type: "send", content, client_msg_id: client_msg_id ?? randomId() };
    if (session_id) frame.session_id = session_id;
    if (provider) frame.provider = provider;
    if (options !== undefined) frame.options = options;
    if (multitask) frame.multitask = multitask;
    // Without a session_id a repeat would create a second session: not repeated.
    return this._request(frame, { retry: Boolean(session_id) });
  }

  /** Stop the session's running run. Resolves with the `ack` ({run_id, last_seq}). */
  abort(sessionId, { clear_queue = false } = {}) {
    return this._request({ type: "abort", session_id: sessionId, clear_queue });
  }

  /** The caller's run summaries: status "running" (default) or "all". */
  async listRuns(status = "running") {
    const frame = await this._request({ type: "list_runs", status }, { retry: true });
    return frame.runs;
  }

  /** Round trip to the server, in ms. */
  async ping() {
    const started = performance.now();
    await this._request({ type: "ping" });
    return performance.now() - started;
  }

  // Subscriptions -------------------------------------------------------------------------

  /**
   * Follow a session; resolves with the `subscribed` frame.
   *
   * subscribe(id): resume from the position this client (or this tab before a refresh)
   * last saw, or the latest run in full when there is none.
   * subscribe(id, {run_id, after_seq}): start right after that position (e.g. the last
   * event of history loaded over HTTP); the session's de-duplication state starts over.
   */
  subscribe(sessionId, position) {
    let follow = this._follows.get(sessionId);
    if (!follow) {
      follow = new Follow(sessionId);
      if (position === undefined) follow.restore(this._storageGet(sessionId));
      this._follows.set(sessionId, follow);
    }
    if (position !== undefined) follow.reset(position);
    follow.wanted = true;
    const done = new Promise((resolve, reject) => follow.waiters.push({ resolve, reject }));
    this._resubscribe(follow);
    if (this.state === "idle") this.connect();
    return done;
  }

  /** Stop following a session (its position stays stored for a later subscribe). */
  unsubscribe(sessionId) {
    const follow = this._follows.get(sessionId);
    if (!follow) return Promise.resolve(null);
    this._persist(follow);
    this._follows.delete(sessionId);
    for (const w of follow.waiters.splice(0)) {
      w.reject(new RunwireError("UNSUBSCRIBED", "unsubscribed before the reply"));
    }
    if (follow.sentOn !== this._conn || this.state !== "connected") return Promise.resolve(null);
    return this._request({ type: "unsubscribe", session_id: sessionId }, { silent: true }).catch(
      () => null,
    );
  }

  /** Stop following a session and drop its stored position. */
  forget(sessionId) {
    const follow = this._follows.get(sessionId);
    this._follows.delete(sessionId);
    for (const w of follow?.waiters.splice(0) ?? []) {
      w.reject(new RunwireError("SESSION_NOT_FOUND", "the session was deleted"));
    }
    this._storageRemove(sessionId);
  }

  /** The last position delivered for a session (live or stored), or null. */
  position(sessionId) {
    const follow = this._follows.get(sessionId);
    if (follow) return follow.pos;
    return this._storageGet(sessionId)?.pos ?? null;
  }

  /** Session ids currently followed. */
  following() {
    return [...this._follows.keys()];
  }

  _resubscribe(follow) {
    if (this.state !== "connected") return; // sent on open
    if (follow.sentOn === this._conn) {
      // Replace the subscription on this connection: the old one must stop first.
      this._request({ type: "unsubscribe", session_id: follow.session_id }, { silent: true }).catch(
        () => null,
      );
    }
    this._sendSubscribe(follow);
  }

  _sendSubscribe(follow) {
    const id = this._nextId++;
    const frame = { type: "subscribe", id, session_id: follow.session_id };
    if (follow.pos) {
      frame.run_id = follow.pos.run_id;
      frame.after_seq = follow.pos.seq;
    } else {
      frame.after_seq = follow.start.after_seq;
    }
    follow.active = false;
    follow.replayCheck = null;
    follow.reqId = id;
    const req = { kind: "subscribe", session_id: follow.session_id, frame, sentOn: this._conn };
    req.timer = setTimeout(() => {
      // No reply: the connection is broken in a way the browser did not notice.
      if (this._pending.get(id) === req && this._ws) this._lost(this._ws);
    }, this.requestTimeout);
    this._pending.set(id, req);
    if (this._rawSend(this._ws, frame)) follow.sentOn = this._conn;
  }

  // HTTP ----------------------------------------------------------------------------------

  /** fetch() a JSON endpoint with the token; throws RunwireError on an error status. */
  async http(path, { method = "GET", body, query } = {}) {
    const url = new URL(this.httpBase + path);
    for (const [k, v] of Object.entries(query ?? {})) {
      if (v !== undefined && v !== null) url.searchParams.set(k, String(v));
    }
    const headers = { Accept: "application/json" };
    if (this.token) headers.Authorization = `Bearer ${this.token}`;
    if (body !== undefined) headers["Content-Type"] = "application/json";
    let response;
    try {
      response = await fetch(url, {
        method,
        headers,
        body: body === undefined ? undefined : JSON.stringify(body),
      });
    } catch (cause) {
      throw new RunwireError("NETWORK", `cannot reach the server (${cause.message})`);
    }
    if (response.status === 204) return null;
    let data = null;
    try {
      data = await response.json();
    } catch {
      data = null;
    }
    if (!response.ok) {
      const e = data?.error ?? {};
      throw new RunwireError(
        e.code ?? `HTTP_${response.status}`,
        e.message ?? `${method} ${path} failed with HTTP ${response.status}`,
        { status: response.status },
      );
    }
    return data;
  }

  /**
   * A page of the user's sessions, newest activity first: {sessions, next}. Pass next as
   * after for the page after it; next is null on the last page (and without a limit).
   */
  sessions({ limit, after } = {}) {
    return this.http("/api/sessions", { query: { limit, after } });
  }

  /**
   * The session's durable history over HTTP, every page, in order.
   * Resolves with {events, last} where last is the {run_id, seq} to subscribe after.
   */
  async history(sessionId, { after = null, limit = 1000 } = {}) {
    const events = [];
    let cursor = after;
    for (;;) {
      const page = await this.http(`/api/sessions/${encodeURIComponent(sessionId)}/events`, {
        query: { after_run: cursor?.run_id, after_seq: cursor?.seq, limit },
      });
      events.push(...page.events);
      const next = positionOf(page.next);
      if (!next || page.events.length === 0) break;
      cursor = next;
    }
    const tail = events.at(-1);
    const last = tail ? { run_id: tail.run_id, seq: tail.seq } : after;
    return { events, last };
  }

  /** The session's context: runs, tools used, files touched, errors, checkpoints, handoff. */
  context(sessionId) {
    return this.http(`/api/sessions/${encodeURIComponent(sessionId)}/context`);
  }

  /**
   * Store handoff notes on the session: {summary, next_steps?, blockers?, context_for_next?}.
   * Resolves with the session record.
   */
  handoff(sessionId, notes) {
    return this.http(`/api/sessions/${encodeURIComponent(sessionId)}/handoff`, {
      method: "PUT",
      body: notes,
    });
  }

  /**
   * Fork the session into a new one that continues from a position: {run_id, seq?} (seq
   * omitted: the whole run; nothing: the end). Resolves with the new session's record,
   * whose forked_from names the source and the position.
   */
  fork(sessionId, { run_id, seq, title } = {}) {
    const body = {};
    if (run_id !== undefined && run_id !== null) body.run_id = run_id;
    if (seq !== undefined && seq !== null) body.seq = seq;
    if (title !== undefined && title !== null) body.title = title;
    return this.http(`/api/sessions/${encodeURIComponent(sessionId)}/fork`, {
      method: "POST",
      body,
    });
  }

  // Storage -------------------------------------------------------------------------------

  _storageGet(sessionId) {
    try {
      const raw = this.storage?.getItem(this.storagePrefix + sessionId);
      return raw ? JSON.parse(raw) : null;
    } catch {
      return null;
    }
  }

  _storageRemove(sessionId) {
    try {
      this.storage?.removeItem(this.storagePrefix + sessionId);
    } catch {
      // storage unavailable: nothing to remove
    }
  }

  _schedulePersist() {
    if (this._persistTimer || !this.storage) return;
    this._persistTimer = setTimeout(() => this._persistNow(), PERSIST_DELAY);
  }

  _persistNow() {
    clearTimeout(this._persistTimer);
    this._persistTimer = null;
    for (const follow of this._follows.values()) this._persist(follow);
  }

  _persist(follow) {
    if (!this.storage || !follow.pos) return;
    try {
      this.storage.setItem(this.storagePrefix + follow.session_id, JSON.stringify(follow));
    } catch {
      // quota or disabled storage: the position stays in memory
    }
  }

  _call(name, ...args) {
    const fn = this[name];
    if (typeof fn !== "function") return;
    try {
      fn(...args);
    } catch (err) {
      // An application callback failing must not break delivery to the next frame.
      console.error(`runwire: ${name} callback failed`, err);
    }
  }
}

const CALLBACKS = [
  "onEvent",
  "onRunStarted",
  "onRunFinished",
  "onState",
  "onError",
  "onSubscribed",
  "onLagged",
  "onResync",
  "onTruncated",
  "onSessionDeleted",
  "onFrame",
];

/** A history `next` cursor as {run_id, seq}: accepts an object or a [run_id, seq] pair. */
function positionOf(next) {
  if (!next) return null;
  if (Array.isArray(next)) return { run_id: next[0], seq: next[1] };
  return { run_id: next.run_id, seq: next.seq ?? next.after_seq };
}
