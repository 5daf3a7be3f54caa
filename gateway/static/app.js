// The chat page: a reference for how a chat UI uses runwire.js.
//
// On open: the session's history over HTTP, then the live stream from the exact next
// position. Everything else (reconnects, resubscribes, duplicates) is the client's job.

import { RunwireClient } from "./runwire.js";

const TOKEN_KEY = "runwire.token";
const NOTICE_MS = 12000;
// Sessions the sidebar reads at a time; older ones come with "Show older sessions".
const SESSIONS_PAGE = 50;
const MAX_PAGE = 1000;

const $ = (id) => document.getElementById(id);

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else if (key.includes("-")) node.setAttribute(key, value); // data-*, aria-*
    else node[key] = value;
  }
  node.append(...children);
  return node;
}

function storageGet(key) {
  try {
    return sessionStorage.getItem(key);
  } catch {
    return null;
  }
}

function storageSet(key, value) {
  try {
    if (value === null) sessionStorage.removeItem(key);
    else sessionStorage.setItem(key, value);
  } catch {
    // storage disabled: the token then lives only as long as the URL carries it
  }
}

/** Read ?token= once, keep it in sessionStorage, and take it out of the address bar. */
function takeToken() {
  const url = new URL(location.href);
  const fromUrl = url.searchParams.get("token");
  if (fromUrl) {
    storageSet(TOKEN_KEY, fromUrl);
    url.searchParams.delete("token");
    history.replaceState(null, "", url.pathname + url.search + url.hash);
    return fromUrl;
  }
  return storageGet(TOKEN_KEY);
}

const ERROR_TEXT = {
  RUN_IN_PROGRESS: "A run is already running in this session. Wait for it or press Stop.",
  QUEUE_FULL: "Too many messages are queued for this session.",
  SESSION_LOCKED: "This session is locked: it accepts no new messages.",
  SESSION_ARCHIVED: "This session is archived and read-only. Unarchive it to send.",
  SESSION_NOT_FOUND: "This session does not exist (it may have been deleted).",
  NO_ACTIVE_RUN: "Nothing is running in this session.",
  UNKNOWN_PROVIDER: "The server does not know this provider.",
  RATE_LIMITED: "Too many messages at once. Wait a moment and try again.",
  INVALID_FIELD: "The server refused the request.",
  BAD_FRAME: "The server could not read a message from this page.",
  UNKNOWN_TYPE: "The server does not understand a request from this page.",
  INTERNAL: "The server hit an internal error.",
  CONNECTION_LOST: "The connection dropped before the server replied. Try again.",
  TIMEOUT: "The server did not reply in time.",
  NETWORK: "The server cannot be reached.",
  UNAUTHORIZED: "The server refused the token.",
  BAD_OPTIONS: "Provider options must be a JSON object.",
};

const END_TEXT = {
  done: "Done",
  aborted: "Stopped",
  interrupted: "Interrupted by a newer message",
  error: "Failed",
  server_restart: "Ended: the server restarted",
};

function formatElapsed(ms) {
  const total = Math.max(0, Math.floor(ms / 1000));
  const h = Math.floor(total / 3600);
  const m = Math.floor((total % 3600) / 60);
  const s = String(total % 60).padStart(2, "0");
  return h ? `${h}:${String(m).padStart(2, "0")}:${s}` : `${m}:${s}`;
}

function formatWhen(ms) {
  if (!ms) return "";
  const date = new Date(ms);
  const today = new Date();
  if (date.toDateString() === today.toDateString()) {
    return date.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
  }
  return date.toLocaleDateString([], { month: "short", day: "numeric" });
}

function asText(value) {
  if (typeof value === "string") return value;
  if (Array.isArray(value) && value.every((part) => typeof part?.text === "string")) {
    return value.map((part) => part.text).join("\n"); // content blocks, as agent CLIs send them
  }
  return JSON.stringify(value, null, 2);
}

/** One session's transcript, built from events in order (history first, then live). */
class Transcript {
  constructor(root) {
    this.root = root;
    this.runs = new Map(); // run_id -> {el, startedTs, ended}
    this.tools = new Map(); // tool_id -> <details>
    this.stream = null; // {runId, node (Text), el}: the assistant block being streamed
    root.replaceChildren();
  }

  placeholder(text) {
    this.root.replaceChildren(el("p", { class: "placeholder muted", text }));
  }

  add(event) {
    const pinned = this.atBottom();
    this.root.querySelector(":scope > .placeholder")?.remove();
    this.render(event);
    if (pinned) this.scrollToEnd();
  }

  /** Render many events (history) with one layout at the end, not one per event. */
  addAll(events) {
    this.root.querySelector(":scope > .placeholder")?.remove();
    for (const event of events) this.render(event);
    this.scrollToEnd();
  }

  render(event) {
    const run = this.run(event.run_id, event.ts);
    const render = KIND_RENDERERS[event.kind] ?? renderOther;
    render.call(this, run, event.data ?? {}, event);
  }

  run(runId, ts) {
    let run = this.runs.get(runId);
    if (!run) {
      run = { el: el("div", { class: "run", "data-run-id": runId }), startedTs: ts, ended: false };
      this.runs.set(runId, run);
      this.root.append(run.el);
      this.stream = null;
    }
    return run;
  }

  closeStream() {
    this.stream = null;
  }

  /** Mark how a run ended; `note` explains anything unusual. */
  end(runId, data, ts, note) {
    const run = this.run(runId, ts);
    if (run.ended) return;
    run.ended = true;
    this.closeStream();
    const reason = data.reason ?? (data.success === false ? "error" : "done");
    let text = END_TEXT[reason] ?? `Ended (${reason})`;
    if (reason === "error" && data.error) text += `: ${data.error}`;
    if (run.startedTs && ts && ts >= run.startedTs) {
      text += ` \u00b7 ${((ts - run.startedTs) / 1000).toFixed(1)} s`;
    }
    const mark = el("div", { class: "run-end", "data-reason": reason, text });
    mark.append(
      el("button", {
        type: "button",
        class: "fork-here",
        "data-run-id": runId,
        title: "Continue from the end of this run in a new session",
        text: "Fork from here",
      }),
    );
    if (note) mark.append(el("div", { class: "run-end-note", text: note }));
    run.el.append(mark);
    if (this.atBottom(200)) this.scrollToEnd();
  }

  atBottom(slack = 80) {
    const r = this.root;
    return r.scrollHeight - r.scrollTop - r.clientHeight < slack;
  }

  scrollToEnd() {
    this.root.scrollTop = this.root.scrollHeight;
  }
}

function assistantBlock(run, runId, transcript) {
  if (transcript.stream?.runId !== runId) {
    const node = document.createTextNode("");
    const block = el("div", { class: "msg assistant" }, node);
    run.el.append(block);
    transcript.stream = { runId, node, el: block };
  }
  return transcript.stream;
}

function renderOther(run, data, event) {
  this.closeStream();
  run.el.append(
    el(
      "details",
      { class: "other" },
      el("summary", { text: event.kind }),
      el("pre", { text: JSON.stringify(data, null, 2) }),
    ),
  );
}

const KIND_RENDERERS = {
  user_message(run, data) {
    this.closeStream();
    run.el.append(el("div", { class: "msg user", text: data.content ?? "" }));
  },
  text_delta(run, data, event) {
    const text = data.text ?? "";
    run.streamed = (run.streamed ?? "") + text;
    assistantBlock(run, event.run_id, this).node.appendData(text);
  },
  text(run, data, event) {
    // A whole text block. When it repeats everything streamed since the last whole block
    // (echo's reply, for one), it adds nothing. Right after deltas it is their block's
    // final, authoritative form. Otherwise it is a block of its own.
    const text = data.text ?? "";
    const streamed = run.streamed ?? "";
    run.streamed = "";
    if (streamed !== "" && streamed === text) {
      this.closeStream();
      return;
    }
    assistantBlock(run, event.run_id, this).node.data = text;
    this.closeStream();
  },
  thinking(run, data) {
    this.closeStream();
    run.el.append(
      el(
        "details",
        { class: "thinking" },
        el("summary", { text: "Thinking" }),
        el("div", { class: "thinking-text", text: data.text ?? "" }),
      ),
    );
  },
  tool_use(run, data) {
    this.closeStream();
    const box = el(
      "details",
      { class: "tool", "data-tool-id": data.tool_id ?? "" },
      el("summary", {}, el("span", { class: "tool-name", text: `Tool: ${data.name ?? "?"}` })),
      el("pre", { class: "tool-input", text: asText(data.input ?? {}) }),
    );
    if (data.tool_id) this.tools.set(data.tool_id, box);
    run.el.append(box);
  },
  tool_result(run, data) {
    this.closeStream();
    const result = el("pre", {
      class: data.is_error ? "tool-result error" : "tool-result",
      text: asText(data.content ?? ""),
    });
    const box = this.tools.get(data.tool_id);
    if (box) {
      box.append(result);
      box.querySelector("summary").append(
        el("span", { class: data.is_error ? "tool-state error" : "tool-state", text: data.is_error ? " failed" : " done" }),
      );
    } else {
      run.el.append(
        el("details", { class: "tool" }, el("summary", { text: "Tool result" }), result),
      );
    }
  },
  status(run, data) {
    this.closeStream();
    run.el.append(el("div", { class: "status-line muted", text: data.text ?? "" }));
  },
  error(run, data) {
    this.closeStream();
    const code = data.code ? ` (${data.code})` : "";
    run.el.append(el("div", { class: "msg event-error", text: `Error: ${data.message ?? "unknown"}${code}` }));
  },
  complete(run, data, event) {
    this.end(event.run_id, data, event.ts);
  },
};

/** The context panel's sections for a session's context. */
function renderContext(ctx) {
  const section = (title, cls, items, empty) => [
    el("h3", { text: title }),
    items.length
      ? el("ul", { class: cls }, ...items)
      : el("p", { class: `${cls} muted`, text: empty }),
  ];
  const item = (text, count) =>
    el("li", {}, el("span", { text }), count === undefined ? "" : el("span", { class: "count", text: String(count) }));
  const runs = ctx.runs;
  const outcomes = Object.entries(runs.by_outcome)
    .filter(([, n]) => n)
    .map(([outcome, n]) => `${n} ${outcome}`)
    .join(", ");
  const summary = el("p", {
    class: "ctx-summary",
    text: `${runs.count} run${runs.count === 1 ? "" : "s"}${outcomes ? ` (${outcomes})` : ""} \u00b7 ${ctx.duration} \u00b7 ${ctx.events.total} events`,
  });
  const errors = [
    ...ctx.errors.runs.map((r) => item(`Run ended in error: ${r.error ?? "unknown"}`)),
    ...ctx.errors.events.map((e) => item(e.message)),
  ];
  const parts = [
    summary,
    ...section("Tools used", "ctx-tools", Object.entries(ctx.tools).map(([name, n]) => item(name, n)), "No tools used."),
    ...section("Files touched", "ctx-files", ctx.artifacts.map((a) => item(`${a.path} (${a.action})`, a.changes)), "No files changed."),
    ...section("Errors", "ctx-errors", errors, "No errors."),
  ];
  if (ctx.checkpoints.length) {
    parts.push(...section("Checkpoints", "ctx-checkpoints", ctx.checkpoints.map((c) => item(asText(c.data.label ?? c.data))), ""));
  }
  if (ctx.handoff) {
    const notes = [item(ctx.handoff.summary), ...ctx.handoff.next_steps.map((step) => item(`Next: ${step}`))];
    notes.push(...ctx.handoff.blockers.map((b) => item(`Blocked: ${b}`)));
    parts.push(...section("Handoff", "ctx-handoff", notes, ""));
  }
  return parts;
}

/** The page: sidebar, transcript, composer, wired to one RunwireClient. */
class App {
  constructor(token) {
    this.token = token;
    this.sessions = new Map(); // session_id -> session record
    this.sessionsNext = null; // where the next page of older sessions starts
    this.current = null; // open session id, or null for a new-session draft
    this.transcript = new Transcript($("transcript"));
    this.openGen = 0;
    this.wasConnected = false;
    this.running = null; // run summary of the open session's running run
    this.providers = { list: [], default: null };
    this.shown = new WeakSet(); // errors already on screen (a reply error is also onError)
    this.client = new RunwireClient({
      token,
      onEvent: (event) => this.onEvent(event),
      onSubscribed: (frame) => this.onSubscribed(frame),
      onRunStarted: (run) => this.onRunStarted(run),
      onRunFinished: (run) => this.onRunFinished(run),
      onSessionDeleted: (id) => this.onSessionDeleted(id),
      onState: (state) => this.onState(state),
      onError: (err) => this.notice(err),
      onResync: (id, info) => this.onResync(id, info),
      onTruncated: (id, info) => this.onTruncated(id, info),
    });
  }

  async start() {
    this.bindUi();
    this.transcript.placeholder("Loading\u2026");
    try {
      await this.loadSessions();
    } catch (err) {
      if (err.status === 401 || err.status === 403) {
        storageSet(TOKEN_KEY, null);
        fatal("The server refused this page's token. Open the URL that `runwire serve` printed (it ends with ?token=...).");
        return;
      }
      this.notice(err);
    }
    this.client.connect();
    this.loadProviders();
    setInterval(() => this.tickElapsed(), 1000);
    const fromHash = this.hashSession();
    if (fromHash) await this.openSession(fromHash);
    else this.newDraft();
  }

  bindUi() {
    $("composer").addEventListener("submit", (e) => {
      e.preventDefault();
      this.submit();
    });
    $("input").addEventListener("keydown", (e) => {
      if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
        e.preventDefault();
        this.submit();
      }
    });
    $("stop").addEventListener("click", () => this.stop());
    $("new-session").addEventListener("click", () => {
      this.newDraft();
      this.toggleSidebar(false);
    });
    $("menu").addEventListener("click", () => this.toggleSidebar());
    document.addEventListener("click", (e) => {
      // A click anywhere else closes an open session menu.
      for (const menu of document.querySelectorAll("details.actions[open]")) {
        if (!menu.contains(e.target)) menu.open = false;
      }
    });
    $("backdrop").addEventListener("click", () => this.toggleSidebar(false));
    $("fork").addEventListener("click", () => this.forkAt({}));
    $("transcript").addEventListener("click", (e) => {
      const button = e.target.closest?.(".fork-here");
      if (button) this.forkAt({ run_id: button.dataset.runId });
    });
    $("context-toggle").addEventListener("click", () => this.toggleContext());
    $("context-close").addEventListener("click", () => this.toggleContext(false));
    window.addEventListener("hashchange", () => {
      const id = this.hashSession();
      if (id && id !== this.current) this.openSession(id);
      else if (!id && this.current) this.newDraft();
    });
  }

  hashSession() {
    const match = location.hash.match(/^#s\/(.+)$/);
    return match ? decodeURIComponent(match[1]) : null;
  }

  setHash(id) {
    const hash = id ? `#s/${encodeURIComponent(id)}` : "";
    if (location.hash !== hash) history.replaceState(null, "", location.pathname + location.search + hash);
  }

  toggleSidebar(open) {
    const show = open ?? !document.body.classList.contains("sidebar-open");
    document.body.classList.toggle("sidebar-open", show);
    $("backdrop").hidden = !show;
    $("menu").setAttribute("aria-expanded", String(show));
  }

  // Sessions ------------------------------------------------------------------------------

  /** The newest sessions, as many as the sidebar shows already (at least a page). */
  async loadSessions() {
    const limit = Math.min(MAX_PAGE, Math.max(SESSIONS_PAGE, this.sessions.size));
    const data = await this.client.sessions({ limit });
    const open = this.sessions.get(this.current);
    this.sessions = new Map((data?.sessions ?? []).map((s) => [s.session_id, s]));
    this.sessionsNext = data?.next ?? null;
    // The open session stays listed even when it is older than the page.
    if (open && !this.sessions.has(open.session_id)) this.sessions.set(open.session_id, open);
    const current = this.sessions.get(this.current);
    if (current) current.has_unread = false; // this page is reading it
    this.renderSessions();
    this.renderHeader();
  }

  async loadOlderSessions() {
    if (!this.sessionsNext) return;
    const data = await this.client.sessions({ limit: SESSIONS_PAGE, after: this.sessionsNext });
    for (const s of data?.sessions ?? []) {
      if (!this.sessions.has(s.session_id)) this.sessions.set(s.session_id, s);
    }
    this.sessionsNext = data?.next ?? null;
    this.renderSessions();
  }

  /** One session the sidebar has not read (older than its pages, or new elsewhere). */
  async loadSession(id) {
    try {
      this.upsert(await this.client.http(`/api/sessions/${encodeURIComponent(id)}`));
    } catch (err) {
      if (err.status !== 404) this.notice(err); // a deleted one is not listed anyway
    }
  }

  async loadProviders() {
    let names = [];
    let fallback = null;
    try {
      const data = await this.client.http("/api/providers");
      names = (data?.providers ?? []).map((p) => (typeof p === "string" ? p : p.name));
      fallback = data?.default ?? null;
    } catch {
      // No provider list on this server: the server's default is used.
    }
    const select = $("provider");
    const options = names.map((name) => el("option", { value: name, text: name }));
    if (options.length === 0) options.push(el("option", { value: "", text: "server default" }));
    select.replaceChildren(...options);
    if (fallback && names.includes(fallback)) select.value = fallback;
  }

  upsert(record) {
    if (!record?.session_id) return;
    this.sessions.set(record.session_id, { ...this.sessions.get(record.session_id), ...record });
    this.renderSessions();
    if (record.session_id === this.current) this.renderHeader();
  }

  renderSessions() {
    const list = [...this.sessions.values()].sort(
      (a, b) => (b.updated_at ?? 0) - (a.updated_at ?? 0) || (b.created_at ?? 0) - (a.created_at ?? 0),
    );
    // A live update must not close the actions menu the user has open.
    const menuOpen = $("sessions").querySelector("details.actions[open]")?.closest(".session")?.dataset.id;
    const items = list.map((s) => this.sessionItem(s));
    if (this.sessionsNext) {
      const more = el("button", { type: "button", class: "more", text: "Show older sessions" });
      more.addEventListener("click", () => this.loadOlderSessions().catch((err) => this.notice(err)));
      items.push(el("li", { class: "older" }, more));
    }
    $("sessions").replaceChildren(...items);
    if (menuOpen) {
      const item = [...$("sessions").children].find((li) => li.dataset.id === menuOpen);
      if (item) item.querySelector("details.actions").open = true;
    }
    $("sessions-empty").hidden = list.length > 0;
  }

  sessionItem(s) {
    const archived = s.status === "archived";
    const open = el(
      "button",
      { type: "button", class: "open", title: s.title ?? "" },
      el("span", { class: "title", text: s.title || "Untitled session" }),
      el(
        "span",
        { class: "sub muted" },
        el("span", { class: "when", text: formatWhen(s.updated_at ?? s.created_at) }),
        archived ? el("span", { class: "tag", text: "archived" }) : "",
      ),
    );
    open.addEventListener("click", () => {
      this.openSession(s.session_id);
      this.toggleSidebar(false);
    });
    const running = el("span", { class: "running-mark", title: "Running", text: "running" });
    running.hidden = !s.running_run_id;
    const unread = el("span", { class: "unread-dot", title: "Unread", "aria-label": "unread" });
    unread.hidden = !s.has_unread || !!s.running_run_id;
    const action = (label, fn, cls) => {
      const b = el("button", { type: "button", text: label, class: cls });
      b.addEventListener("click", (e) => {
        e.currentTarget.closest("details").open = false;
        fn();
      });
      return b;
    };
    const menu = el(
      "details",
      { class: "actions" },
      el("summary", { title: "Session actions", "aria-label": "Session actions", text: "\u22ef" }),
      el(
        "div",
        { class: "menu" },
        action("Rename", () => this.rename(s.session_id)),
        action(archived ? "Unarchive" : "Archive", () =>
          this.patch(s.session_id, { status: archived ? "active" : "archived" }),
        ),
        action("Delete", () => this.remove(s.session_id), "danger"),
      ),
    );
    return el(
      "li",
      {
        class: `session${s.session_id === this.current ? " current" : ""}${archived ? " archived" : ""}`,
        "data-id": s.session_id,
      },
      open,
      running,
      unread,
      menu,
    );
  }

  async rename(id) {
    const current = this.sessions.get(id)?.title ?? "";
    const title = prompt("Rename session", current);
    if (title === null || title.trim() === current) return;
    await this.patch(id, { title: title.trim() });
  }

  async patch(id, body) {
    try {
      this.upsert(await this.client.http(`/api/sessions/${encodeURIComponent(id)}`, { method: "PATCH", body }));
    } catch (err) {
      this.notice(err);
    }
  }

  async remove(id) {
    const title = this.sessions.get(id)?.title || "this session";
    if (!confirm(`Delete "${title}" and its whole history? This cannot be undone.`)) return;
    try {
      await this.client.http(`/api/sessions/${encodeURIComponent(id)}`, { method: "DELETE" });
      this.onSessionDeleted(id);
    } catch (err) {
      this.notice(err);
    }
  }

  onSessionDeleted(id) {
    this.client.forget(id);
    if (!this.sessions.delete(id)) return;
    this.renderSessions();
    if (id === this.current) {
      this.newDraft();
      this.notice("The session you had open was deleted.");
    }
  }

  onRunStarted(run) {
    const s = this.sessions.get(run.session_id);
    if (!s) {
      this.loadSession(run.session_id); // created elsewhere (another tab), or not read yet
    } else {
      this.upsert({
        session_id: run.session_id,
        running_run_id: run.run_id,
        updated_at: Math.max(s.updated_at ?? 0, run.started_at ?? 0),
      });
    }
    if (run.session_id === this.current) this.setRunning(run);
  }

  onRunFinished(run) {
    const s = this.sessions.get(run.session_id);
    if (s) {
      const patch = { session_id: run.session_id, updated_at: Math.max(s.updated_at ?? 0, run.completed_at ?? 0) };
      if (s.running_run_id === run.run_id) patch.running_run_id = null;
      if (run.session_id !== this.current) patch.has_unread = true;
      this.upsert(patch);
    }
    if (run.session_id === this.current && this.running?.run_id === run.run_id) this.setRunning(null);
    if (run.session_id === this.current && this.contextOpen()) this.loadContext();
  }

  // The open session ----------------------------------------------------------------------

  newDraft() {
    this.openGen += 1;
    if (this.current) this.client.unsubscribe(this.current);
    this.current = null;
    this.setHash(null);
    this.setRunning(null);
    this.transcript = new Transcript($("transcript"));
    this.transcript.placeholder("Start a new session: pick a provider and send a message.");
    this.renderSessions();
    this.renderHeader();
    $("input").focus();
  }

  /** Open a session: history over HTTP, then the live stream from right after it. */
  async openSession(id) {
    const gen = ++this.openGen;
    if (this.current && this.current !== id) this.client.unsubscribe(this.current);
    this.current = id;
    this.setHash(id);
    if (!this.sessions.has(id)) this.loadSession(id); // older than the sidebar's pages
    this.setRunning(null);
    this.transcript = new Transcript($("transcript"));
    this.transcript.placeholder("Loading history\u2026");
    this.renderSessions();
    this.renderHeader();
    let history;
    try {
      history = await this.client.history(id);
    } catch (err) {
      if (gen !== this.openGen) return;
      if (err.status === 404) {
        this.sessions.delete(id);
        this.newDraft();
      }
      this.notice(err);
      return;
    }
    if (gen !== this.openGen) return;
    if (this.contextOpen()) this.loadContext();
    const transcript = this.transcript;
    transcript.root.replaceChildren();
    transcript.addAll(history.events);
    if (history.events.length === 0) transcript.placeholder("No messages yet.");
    const last = history.last;
    try {
      // From the exact next position: nothing missed, nothing twice.
      await this.client.subscribe(id, last ? { run_id: last.run_id, after_seq: last.seq } : { after_seq: 0 });
    } catch {
      return; // shown by onError / onResync
    }
    this.markRead(id);
  }

  async markRead(id) {
    const s = this.sessions.get(id);
    if (s?.has_unread) this.upsert({ session_id: id, has_unread: false });
    try {
      await this.client.http(`/api/sessions/${encodeURIComponent(id)}/read`, { method: "POST" });
    } catch {
      // Only the unread dot depends on it.
    }
  }

  onEvent(event) {
    if (event.session_id !== this.current) return;
    this.transcript.add(event);
    if (event.kind === "complete" && this.running?.run_id === event.run_id) this.setRunning(null);
    else if (event.kind === "user_message" && !this.running) {
      this.setRunning({ run_id: event.run_id, session_id: event.session_id, started_at: event.ts });
    }
  }

  onSubscribed(frame) {
    if (frame.session_id !== this.current) return;
    const run = frame.run;
    if (frame.is_processing && run?.status === "running") this.setRunning(run);
    else if (!frame.is_processing) this.setRunning(null);
  }

  onResync(id, info) {
    if (id !== this.current) return;
    if (info.reason === "not_recovered") {
      this.notice("Part of this session's stream is no longer available; reloading its history.");
      this.openSession(id);
    } else if (info.error?.code === "SESSION_NOT_FOUND") {
      this.onSessionDeleted(id);
    }
  }

  /** The run ended while its last events were lost with the server: show how it ended. */
  async onTruncated(id, { run_id: runId, last_seq: lastSeq }) {
    if (id !== this.current) return;
    if (this.running?.run_id === runId) this.setRunning(null);
    const transcript = this.transcript;
    let complete = null;
    try {
      const { events } = await this.client.history(id, { after: { run_id: runId, seq: 0 } });
      complete = events.find((e) => e.run_id === runId && e.kind === "complete") ?? null;
    } catch {
      // the end mark below says the outcome is unknown
    }
    if (transcript !== this.transcript) return;
    if (!complete) {
      transcript.end(runId, { reason: "unknown" }, null, "The server lost this run's end.");
      return;
    }
    const lost = lastSeq - complete.seq + 1;
    const note =
      lost > 0
        ? `The server stopped before saving the last ${lost} streamed event${lost === 1 ? "" : "s"}; a reload shows the saved text only.`
        : undefined;
    transcript.end(runId, complete.data, complete.ts, note);
  }

  setRunning(run) {
    this.running = run && run.session_id === this.current ? run : null;
    const archived = this.sessions.get(this.current)?.status === "archived";
    $("run-bar").hidden = !this.running;
    $("stop").disabled = false;
    $("send").disabled = archived;
    this.tickElapsed();
  }

  tickElapsed() {
    if (!this.running) return;
    // From the run's started_at, so the counter survives a refresh.
    const started = this.running.started_at ?? Date.now();
    $("elapsed").textContent = formatElapsed(Date.now() - started);
  }

  renderHeader() {
    const s = this.current ? this.sessions.get(this.current) : null;
    $("session-title").textContent = s ? s.title || "Untitled session" : this.current ? "Session" : "New session";
    const meta = s ? [s.provider, s.status !== "active" ? s.status : null].filter(Boolean).join(" \u00b7 ") : "";
    $("session-meta").textContent = meta;
    $("fork").hidden = !this.current;
    $("context-toggle").hidden = !this.current;
    const origin = s?.forked_from;
    const link = $("forked-from");
    link.hidden = !origin;
    if (origin) {
      const source = this.sessions.get(origin.session_id);
      link.textContent = `forked from ${source?.title || "another session"}`;
      link.href = `#s/${encodeURIComponent(origin.session_id)}`;
      link.dataset.session = origin.session_id;
    }
    $("provider-row").hidden = Boolean(this.current);
    const readonly = s && s.status !== "active";
    $("readonly-note").hidden = !readonly;
    $("readonly-note").textContent = readonly
      ? `This session is ${s.status}: ${s.status === "archived" ? "read-only. Unarchive it to send." : "new messages are refused."}`
      : "";
    $("input").disabled = Boolean(readonly);
    $("send").disabled = Boolean(readonly);
    document.title = s?.title ? `${s.title} \u00b7 runwire` : "runwire";
  }

  // Actions -------------------------------------------------------------------------------

  readOptions() {
    const raw = $("options").value.trim();
    if (!raw) return undefined;
    let value;
    try {
      value = JSON.parse(raw);
    } catch (err) {
      throw Object.assign(new Error(`Provider options are not valid JSON: ${err.message}`), { code: "BAD_OPTIONS" });
    }
    if (value === null || typeof value !== "object" || Array.isArray(value)) {
      throw Object.assign(new Error("Provider options must be a JSON object, like {\"chunks\": 50}."), { code: "BAD_OPTIONS" });
    }
    return value;
  }

  async submit() {
    const input = $("input");
    const content = input.value;
    if (!content.trim() || $("send").disabled) return;
    let options;
    try {
      options = this.readOptions();
    } catch (err) {
      this.notice(err);
      return;
    }
    $("send").disabled = true;
    try {
      let id = this.current;
      if (!id) {
        const provider = $("provider").value || undefined;
        const title = content.trim().replace(/\s+/g, " ").slice(0, 60);
        const record = await this.client.http("/api/sessions", { method: "POST", body: { provider, title } });
        this.upsert(record);
        id = record.session_id;
        // Follow the new session before the send, so its first event is not missed.
        await this.openSession(id);
      }
      await this.client.send({ session_id: id, content, options });
      if (input.value === content) input.value = "";
    } catch (err) {
      this.notice(err);
    } finally {
      this.renderHeader();
    }
  }

  async stop() {
    if (!this.current) return;
    $("stop").disabled = true;
    try {
      await this.client.abort(this.current);
    } catch (err) {
      this.notice(err);
      $("stop").disabled = false;
    }
  }

  /** Fork the open session at a position ({} = its end) and open the new session. */
  async forkAt(position) {
    const source = this.current;
    if (!source) return;
    try {
      const record = await this.client.fork(source, position);
      this.upsert(record);
      await this.openSession(record.session_id);
    } catch (err) {
      this.notice(err);
    }
  }

  // Context panel -------------------------------------------------------------------------

  contextOpen() {
    return document.body.classList.contains("context-open");
  }

  toggleContext(open) {
    const show = open ?? !this.contextOpen();
    document.body.classList.toggle("context-open", show);
    $("context-panel").hidden = !show;
    $("context-toggle").setAttribute("aria-expanded", String(show));
    if (show) this.loadContext();
  }

  async loadContext() {
    const id = this.current;
    if (!id) return;
    let context;
    try {
      context = await this.client.context(id);
    } catch (err) {
      this.notice(err);
      return;
    }
    if (id === this.current) $("context-body").replaceChildren(...renderContext(context));
  }

  // Status --------------------------------------------------------------------------------

  onState(state) {
    const conn = $("conn");
    conn.dataset.state = state;
    conn.textContent = {
      connecting: "Connecting\u2026",
      connected: "Connected",
      reconnecting: "Reconnecting\u2026",
      offline: "Offline",
      closed: "Disconnected",
    }[state] ?? state;
    if (state === "connected" && this.wasConnected) {
      // Runs may have started or finished while the page was away.
      this.loadSessions().catch((err) => this.notice(err));
    }
    if (state === "connected") this.wasConnected = true;
  }

  /** Show an error (an error frame, a failed request) or a plain message. */
  notice(err) {
    if (err && typeof err === "object") {
      if (this.shown.has(err)) return;
      this.shown.add(err);
    }
    let text;
    if (typeof err === "string") {
      text = err;
    } else {
      const friendly = ERROR_TEXT[err.code];
      text = friendly ? `${friendly} (${err.code}: ${err.message})` : err.message;
      if (err.code === "BAD_OPTIONS") text = err.message;
    }
    const close = el("button", { type: "button", class: "close", "aria-label": "Dismiss", text: "\u00d7" });
    const item = el("div", { class: "notice", role: "alert" }, el("span", { text }), close);
    close.addEventListener("click", () => item.remove());
    $("notices").append(item);
    setTimeout(() => item.remove(), NOTICE_MS);
  }
}

function fatal(text) {
  $("fatal-text").textContent = text;
  $("fatal").hidden = false;
  $("app").hidden = true;
}

const token = takeToken();
if (!token) {
  fatal("This page needs a token. Open the URL that `runwire serve` printed (it ends with ?token=...).");
} else {
  const app = new App(token);
  // Exposed for debugging from the console (and for tests that need the client).
  window.runwireApp = app;
  window.runwireClient = app.client;
  app.start();
}
