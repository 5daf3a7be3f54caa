"""The chat page end to end: a real `runwire serve`, headless Chromium, the visible transcript.

Every check reads what a person would see (transcript text, the sidebar's marks, the
connection badge); waits are Playwright's, on DOM conditions.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from playwright.sync_api import Page, expect

from .harness import Server, save_screenshot

expect.set_options(timeout=15_000)

ASSISTANT = "#transcript .run:last-child .msg.assistant"
RUN_END = "#transcript .run-end"
PHONE = {"width": 390, "height": 800}

# Installed in every page before its scripts: watches the visible assistant text of the
# newest run and records any state that is not a prefix of the expected reply (a repeated
# or missing chunk shows up here even if the final `text` event would paper over it).
PREFIX_WATCH = """
((expected) => {
  window.__notPrefix = [];
  const check = () => {
    const runs = document.querySelectorAll("#transcript .run");
    const last = runs[runs.length - 1];
    if (!last) return;
    const shown = [...last.querySelectorAll(".msg.assistant")].map((b) => b.textContent).join("");
    if (!expected.startsWith(shown)) window.__notPrefix.push(shown.slice(-120));
  };
  new MutationObserver(check).observe(document, {
    subtree: true, childList: true, characterData: true,
  });
})(%s);
"""


def words(n: int, tag: str = "w") -> str:
    """A prompt of n distinct words: echo cuts its reply into chunks, each one different."""
    return " ".join(f"{tag}{i:03d}" for i in range(n))


def open_page(
    context: Any, server: Server, *, user: str = "alice", fragment: str = "", expected: str = ""
) -> Page:
    page: Page = context.new_page()
    if expected:
        page.add_init_script(PREFIX_WATCH % json.dumps(expected))
    response = page.goto(server.page_url(user, fragment))
    assert response is not None
    kind = response.headers.get("content-type", "")
    assert kind.startswith("text/html"), (
        f"GET / must serve the chat page (gateway/static/index.html), got HTTP "
        f"{response.status} {kind}: {response.text()[:200]}"
    )
    expect(page.locator("#conn")).to_have_text("Connected")
    return page


def send(page: Page, content: str, options: dict[str, Any] | None = None) -> None:
    """Type a message (and provider options) into the page and press Send."""
    if options is not None:
        if not page.locator("#advanced").evaluate("d => d.open"):
            page.locator("#advanced summary").click()
        page.locator("#options").fill(json.dumps(options))
    page.locator("#input").fill(content)
    page.locator("#send").click()


def session_id(page: Page) -> str:
    page.wait_for_url(re.compile(r"#s/."))
    return page.url.split("#s/", 1)[1]


def assistant_text(page: Page) -> str:
    return "".join(page.locator(ASSISTANT).all_text_contents())


def wait_for_streamed(page: Page, chars: int) -> None:
    page.wait_for_function(
        """(n) => {
            const runs = document.querySelectorAll("#transcript .run");
            const last = runs[runs.length - 1];
            if (!last) return false;
            const blocks = last.querySelectorAll(".msg.assistant");
            return [...blocks].reduce((sum, b) => sum + b.textContent.length, 0) >= n;
        }""",
        arg=chars,
    )


def no_repeat_seen(page: Page) -> None:
    assert page.evaluate("window.__notPrefix") == []


def test_reloads_mid_stream_show_every_chunk_once(
    context: Any, server: Server, tmp_path: Path
) -> None:
    content = words(400)
    expected = f"{content} (turn 1)"
    page = open_page(context, server, expected=expected)
    send(page, content, {"chunks": 400, "delay_ms": 15})
    session_id(page)

    for chars in (300, 800, 1300):  # of 2008: every reload lands mid-stream
        wait_for_streamed(page, chars)
        shown = assistant_text(page)
        assert expected.startswith(shown)
        no_repeat_seen(page)
        expect(page.locator(RUN_END)).to_have_count(0)
        page.reload()
        expect(page.locator("#conn")).to_have_text("Connected")
        # After the reload the page shows at least what it showed before, from history.
        wait_for_streamed(page, len(shown))

    expect(page.locator(RUN_END)).to_have_text(re.compile(r"^Done"))
    assert assistant_text(page) == expected
    no_repeat_seen(page)
    expect(page.locator("#transcript .msg.user")).to_have_text(content)
    expect(page.locator(RUN_END)).to_have_count(1)
    expect(page.locator("#run-bar")).to_be_hidden()
    save_screenshot(page, tmp_path, "reloads")


def test_two_pages_on_one_session_both_show_the_whole_stream(
    context: Any, server: Server, tmp_path: Path
) -> None:
    content = words(200, "t")
    expected = f"{content} (turn 1)"
    first = open_page(context, server, expected=expected)
    send(first, content, {"chunks": 200, "delay_ms": 10, "tool": True})
    sid = session_id(first)
    wait_for_streamed(first, 100)

    # A second tab (phone-sized) opens the same session mid-stream.
    second = context.new_page()
    second.set_viewport_size(PHONE)
    second.add_init_script(PREFIX_WATCH % json.dumps(expected))
    second.goto(server.page_url(fragment=f"#s/{sid}"))

    for page in (first, second):
        expect(page.locator(RUN_END)).to_have_text(re.compile(r"^Done"))
        assert assistant_text(page) == expected
        no_repeat_seen(page)
        expect(page.locator("#transcript .msg.user")).to_have_text(content)
        expect(page.locator("#transcript details.tool summary")).to_have_text("Tool: echo done")

    # A short second run, so the README screenshot shows a conversation.
    send(first, "And once more, shorter.", {"chunks": 6, "delay_ms": 5})
    expect(first.locator(RUN_END)).to_have_count(2)
    expect(second.locator(RUN_END)).to_have_count(2)
    expect(second.locator("#transcript .run:last-child .msg.assistant")).to_have_text(
        "And once more, shorter. (turn 2)"
    )
    first.locator("#advanced summary").click()  # fold the options away for the picture
    expect(first.locator("#options")).to_be_hidden()
    save_screenshot(first, tmp_path, "two-pages-desktop", readme=True)
    save_screenshot(second, tmp_path, "two-pages-phone")


def test_stop_ends_the_run_everywhere(context: Any, server: Server, tmp_path: Path) -> None:
    page = open_page(context, server)
    send(page, words(100), {"chunks": 100, "delay_ms": 20, "hang": True})
    sid = session_id(page)
    mark = page.locator(f'.session[data-id="{sid}"] .running-mark')
    expect(mark).to_be_visible()
    elapsed = page.locator("#elapsed")
    expect(elapsed).to_have_text(re.compile(r"^0:0[1-9]$"))

    # The elapsed time comes from the run's started_at: a refresh does not reset it.
    page.reload()
    expect(page.locator("#run-bar")).to_be_visible()
    expect(elapsed).to_have_text(re.compile(r"^0:0[1-9]$"))
    wait_for_streamed(page, 20)

    page.locator("#stop").click()

    expect(page.locator(RUN_END)).to_have_text(re.compile(r"^Stopped"))
    expect(mark).to_be_hidden()
    expect(page.locator("#run-bar")).to_be_hidden()
    runs = server.api("/api/runs?status=running")
    assert (runs["runs"] if isinstance(runs, dict) else runs) == []
    save_screenshot(page, tmp_path, "stopped")


def test_server_killed_and_restarted_mid_run(context: Any, server: Server, tmp_path: Path) -> None:
    content = words(300, "k")
    page = open_page(context, server, expected=f"{content} (turn 1)")
    send(page, content, {"chunks": 300, "delay_ms": 25})
    sid = session_id(page)
    wait_for_streamed(page, 200)
    before = assistant_text(page)

    server.kill()
    expect(page.locator("#conn")).to_have_text("Reconnecting\u2026")
    save_screenshot(page, tmp_path, "reconnecting")
    server.start()

    expect(page.locator("#conn")).to_have_text("Connected")
    expect(page.locator(RUN_END)).to_have_text(re.compile(r"^Ended: the server restarted"))
    assert assistant_text(page).startswith(before)
    no_repeat_seen(page)
    print("client stats:", page.evaluate("window.runwireClient.stats"))
    expect(page.locator(f'.session[data-id="{sid}"] .running-mark')).to_be_hidden()
    expect(page.locator("#run-bar")).to_be_hidden()
    expect(page.locator("#transcript .msg.user")).to_have_text(content)
    save_screenshot(page, tmp_path, "restarted")


def test_a_user_never_sees_another_users_sessions(
    browser: Any, context: Any, server: Server, tmp_path: Path
) -> None:
    alice = open_page(context, server)
    send(alice, "alice's secret plan", {"chunks": 4, "delay_ms": 1})
    alice_sid = session_id(alice)
    expect(alice.locator(RUN_END)).to_have_text(re.compile(r"^Done"))

    bob_context = browser.new_context(viewport=PHONE)
    try:
        bob = open_page(bob_context, server, user="bob")
        expect(bob.locator("#sessions-empty")).to_be_visible()

        # Alice works while Bob's page is open: nothing of it reaches Bob.
        send(alice, "alice again", {"chunks": 4, "delay_ms": 1})
        expect(alice.locator(RUN_END)).to_have_count(2)
        send(bob, "bob's own question", {"chunks": 4, "delay_ms": 1})
        expect(bob.locator(RUN_END)).to_have_text(re.compile(r"^Done"))
        expect(bob.locator(".session")).to_have_count(1)
        expect(bob.locator(".session .title")).to_have_text("bob's own question")

        # Alice's session by URL: not found, and none of its text.
        bob.goto(server.page_url("bob", f"#s/{alice_sid}"))
        expect(bob.locator(".notice")).to_contain_text("does not exist")
        expect(bob.locator("body")).not_to_contain_text("alice")
        save_screenshot(bob, tmp_path, "bob")

        alice.reload()
        expect(alice.locator(".session")).to_have_count(1)
        expect(alice.locator("body")).not_to_contain_text("bob")
    finally:
        bob_context.close()


def test_sidebar_unread_rename_archive_delete(context: Any, server: Server, tmp_path: Path) -> None:
    page = open_page(context, server)
    send(page, "first session", {"chunks": 40, "delay_ms": 20})
    first = session_id(page)
    first_item = page.locator(f'.session[data-id="{first}"]')
    expect(first_item.locator(".running-mark")).to_be_visible()

    # A second session while the first still runs: the first ends unseen, so it is unread.
    page.locator("#new-session").click()
    expect(page.locator("#session-title")).to_have_text("New session")
    send(page, "second session", {"chunks": 2, "delay_ms": 1})
    expect(page.locator(RUN_END)).to_have_text(re.compile(r"^Done"))
    expect(first_item.locator(".running-mark")).to_be_hidden()
    expect(first_item.locator(".unread-dot")).to_be_visible()
    expect(page.locator(".session")).to_have_count(2)

    first_item.locator(".open").click()
    expect(page.locator("#transcript .msg.assistant")).to_have_text("first session (turn 1)")
    expect(first_item.locator(".unread-dot")).to_be_hidden()

    page.once("dialog", lambda dialog: dialog.accept("Renamed session"))
    first_item.locator(".actions summary").click()
    first_item.get_by_role("button", name="Rename").click()
    expect(first_item.locator(".title")).to_have_text("Renamed session")
    expect(page.locator("#session-title")).to_have_text("Renamed session")

    first_item.locator(".actions summary").click()
    first_item.get_by_role("button", name="Archive").click()
    expect(first_item.locator(".tag")).to_have_text("archived")
    expect(page.locator("#readonly-note")).to_contain_text("archived")
    expect(page.locator("#send")).to_be_disabled()

    page.once("dialog", lambda dialog: dialog.dismiss())
    first_item.locator(".actions summary").click()
    first_item.get_by_role("button", name="Delete").click()
    expect(page.locator(".session")).to_have_count(2)

    page.once("dialog", lambda dialog: dialog.accept())
    first_item.locator(".actions summary").click()
    first_item.get_by_role("button", name="Delete").click()
    expect(page.locator(".session")).to_have_count(1)
    expect(page.locator("#session-title")).to_have_text("New session")
    save_screenshot(page, tmp_path, "sidebar")

    page.reload()
    expect(page.locator(".session .title")).to_have_text(["second session"])


def test_the_sidebar_reads_sessions_a_page_at_a_time(context: Any, server: Server) -> None:
    titles = [f"session {i:02d}" for i in range(60)]
    made = [server.api("/api/sessions", body={"title": t})["session_id"] for t in titles]
    newest_first = titles[::-1]
    page = open_page(context, server)
    older = page.get_by_role("button", name="Show older sessions")
    expect(page.locator(".session .title")).to_have_text(newest_first[:50])
    older.click()
    expect(page.locator(".session .title")).to_have_text(newest_first)
    expect(older).to_have_count(0)

    # The oldest session by URL, on a fresh page that read only the first 50: it is listed
    # and named, and the next page does not list it twice.
    page.goto(server.page_url("alice", f"#s/{made[0]}"))
    expect(page.locator("#session-title")).to_have_text("session 00")
    expect(page.locator(".session .title")).to_have_text([*newest_first[:50], "session 00"])
    expect(older).to_be_visible()
    older.click()
    expect(page.locator(".session .title")).to_have_text(newest_first)


def test_fork_mid_history_opens_the_new_session_with_its_context(
    context: Any, server: Server, tmp_path: Path
) -> None:
    page = open_page(context, server)
    quick = {"chunks": 3, "delay_ms": 0}
    send(page, "alpha", {**quick, "tool": True})
    source = session_id(page)
    expect(page.locator(RUN_END)).to_have_count(1)
    send(page, "beta", quick)
    expect(page.locator(RUN_END)).to_have_count(2)
    send(page, "gamma", {**quick, "fail_after": 1})
    expect(page.locator(RUN_END)).to_have_count(3)
    page.evaluate("([id]) => runwireClient.handoff(id, {summary: 'alpha is the keeper'})", [source])

    # The source's context: tools used, the failed run, the handoff notes.
    page.locator("#context-toggle").click()
    expect(page.locator("#context-panel .ctx-summary")).to_contain_text("3 runs")
    expect(page.locator("#context-panel .ctx-tools")).to_contain_text("echo")
    expect(page.locator("#context-panel .ctx-errors")).to_contain_text("echo failed after 1")
    expect(page.locator("#context-panel .ctx-handoff")).to_contain_text("alpha is the keeper")

    # Fork from the end of the first run: the new session shows only that run.
    first_run = page.locator("#transcript .run").first.get_attribute("data-run-id")
    page.locator("#transcript .run").first.locator(".fork-here").click()
    page.wait_for_function("(id) => !location.hash.endsWith(id)", arg=source)
    fork = session_id(page)
    assert fork != source
    expect(page.locator("#transcript .run")).to_have_count(1)
    expect(page.locator("#transcript .run")).to_contain_text("(turn 1)")
    assert assistant_text(page) == "alpha (turn 1)"
    expect(page.locator("#transcript")).not_to_contain_text("beta")
    expect(page.locator("#forked-from")).to_have_text("forked from alpha")
    expect(page.locator("#forked-from")).to_have_attribute("data-session", source)
    record = page.evaluate("([id]) => runwireClient.http(`/api/sessions/${id}`)", [fork])
    assert record["forked_from"]["session_id"] == source
    assert record["forked_from"]["run_id"] == first_run
    # The panel follows the open session: one run, the inherited notes, no errors.
    expect(page.locator("#context-panel .ctx-summary")).to_contain_text("1 run ")
    expect(page.locator("#context-panel .ctx-errors")).to_have_text("No errors.")
    expect(page.locator("#context-panel .ctx-handoff")).to_contain_text("alpha is the keeper")

    # The fork continues the conversation from there: echo's second turn.
    send(page, "delta", quick)
    expect(page.locator(RUN_END)).to_have_count(2)
    expect(page.locator(ASSISTANT).last).to_have_text("delta (turn 2)")
    expect(page.locator(".session")).to_have_count(2)

    # The source is as it was.
    page.locator("#forked-from").click()
    page.wait_for_function("(id) => location.hash.endsWith(id)", arg=source)
    expect(page.locator(RUN_END)).to_have_count(3)
    save_screenshot(page, tmp_path, "fork")
