"""The dashboard in a real browser: Debian's headless Chromium driven through
playwright-core (tests/e2e/browser/driver.mjs).

The page is served by taskstreamd itself; it lists tasks, starts them and
follows one with the browser's own EventSource. What these tests hold it to:
it loads under its strict Content-Security-Policy without a single console
error, a task started from the page renders every event, a stream cut in the
middle of a drain resumes with Last-Event-ID so that the page ends with every
event exactly once and in order, and after `end` the browser reconnects
exactly once, gets 204 and stops. Screenshots go to tests/e2e/artifacts/.
"""

import json
import os
import re
import signal
import sys
import time

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "browser"))

from tsclients import Browser, FailoverProxy, artifact_path, node_modules  # noqa: E402,F401
from tshelpers import http, scaled, scrape, wait_for  # noqa: E402

KEY = "browser-drain-key"

EVENTS_JS = """() => Array.from(document.querySelectorAll('#events li.ev'),
    li => ({id: Number(li.dataset.id), type: li.dataset.type,
            text: li.querySelector('.data').textContent}))"""

STATUS_JS = """() => {
  const t = (id) => document.getElementById(id).textContent;
  return {
    state: document.getElementById('stream-state').dataset.state,
    events: Number(t('count-events')),
    duplicates: Number(t('count-duplicates')),
    connections: Number(t('count-connections')),
    last_id: t('last-id'),
    result: document.getElementById('task-result').dataset.status || null,
    notices: Array.from(document.querySelectorAll('#events li.notice'), li => li.dataset.type),
    submit: t('submit-result'),
    submit_error: document.getElementById('submit-result').classList.contains('error'),
    task: document.getElementById('follow-task').textContent,
  };
}"""

# Fast reconnects keep the tests short; the page does not depend on it.
FAST = {"SSE_RETRY_MS": "250", "SSE_HEARTBEAT_INTERVAL": "1s"}


@pytest.fixture
def browser(node_modules):
    b = Browser(start_timeout=90)
    yield b
    b.close()


def events_requests(d, code):
    return scrape(d).get("http_requests_total", 0.0, listener="public", route="events",
                         code=str(code))


def page_status(b):
    return b.eval(STATUS_JS)


def wait_page(b, expr, arg=None, timeout_s=15):
    return b.wait_for(expr, arg, timeout_s=timeout_s)


def wait_stream_state(b, state, timeout_s, task=None):
    """Wait for the stream state; with `task`, of that task's stream (the
    page follows one task at a time: a new one replaces the old stream,
    whose state, e.g. "closed", would otherwise pass at once)."""
    try:
        return wait_page(b, "([s, id]) => document.getElementById('stream-state').dataset.state === s"
                            " && (id === null || document.getElementById('follow-task').textContent === id)",
                         [state, task], timeout_s)
    except AssertionError as e:
        raise AssertionError(f"{e}\npage: {page_status(b)}") from None


def console_problems(b, allow=()):
    """Console errors, page errors and CSP violations, minus allowed ones."""
    bad = []
    for entry in b.log():
        if entry["kind"] in ("console.error", "pageerror") or "Content Security Policy" in entry["text"]:
            if not any(re.search(a, entry["text"]) for a in allow):
                bad.append(entry)
    return bad


def wait_submitted(b, kind):
    """After a click on a start button: the id of the task the page started
    and now follows. The page says "started" and follows the new task in one
    turn, so both are checked together, never the previous task's."""
    task_id = wait_page(b, "(kind) => { const out = document.getElementById('submit-result');"
                           " return new RegExp(`^started ${kind} task [0-9a-f]{32}$`).test(out.textContent)"
                           " && document.getElementById('follow-task').textContent === out.dataset.taskId"
                           " && out.dataset.taskId; }", kind)
    assert re.fullmatch(r"[0-9a-f]{32}", task_id), task_id
    return task_id


def start_ticker_from_page(b, count, interval_ms):
    b.call("fill", selector="#ticker-count", value=count)
    b.call("fill", selector="#ticker-interval", value=interval_ms)
    b.call("click", selector="#ticker-submit")
    return wait_submitted(b, "ticker")


def check_ticks_exactly_once(events, count):
    ids = [e["id"] for e in events]
    assert ids == list(range(1, count + 2)), f"ids are not 1..{count + 1} once each in order: {ids}"
    assert [e["type"] for e in events] == ["tick"] * count + ["end"], events
    assert events[-1]["text"].startswith("succeeded"), events[-1]


# --------------------------------------------------------------------------


def test_page_is_served_with_strict_headers(daemon):
    """GET / and the assets: types, no-cache, CSP default-src 'self', ETag;
    the HTML has no inline script or style for the CSP to forbid."""
    d = daemon()
    r = http("GET", d.url + "/")
    assert r.status == 200, r
    assert r.headers["Content-Type"] == "text/html; charset=utf-8"
    assert r.headers["Cache-Control"] == "no-cache"
    csp = r.headers["Content-Security-Policy"]
    assert "default-src 'self'" in csp and "unsafe" not in csp, csp
    assert r.headers["X-Content-Type-Options"] == "nosniff"
    html = r.text
    scripts = re.findall(r"<script\b[^>]*>", html)
    assert scripts and all("src=" in s for s in scripts), scripts
    assert not re.search(r"<script\b[^>]*>\s*[^<\s]", html), "inline script"
    assert not re.search(r"<style\b|\sstyle=|\son[a-z]+=", html), "inline style or handler"
    assert "//" not in "".join(re.findall(r'(?:src|href)="([^"]*)"', html)), "external resource"

    for name, ctype in (("app.js", "text/javascript; charset=utf-8"),
                        ("style.css", "text/css; charset=utf-8"), ("icon.svg", "image/svg+xml")):
        r = http("GET", f"{d.url}/assets/{name}")
        assert r.status == 200 and r.headers["Content-Type"] == ctype, (name, r)
        assert r.headers["Cache-Control"] == "no-cache"
        assert "default-src 'self'" in r.headers["Content-Security-Policy"]
        etag = r.headers["ETag"]
        again = http("GET", f"{d.url}/assets/{name}", headers={"If-None-Match": etag})
        assert again.status == 304 and again.body == b"", again
        assert again.headers["ETag"] == etag
    with open(os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
            os.path.abspath(__file__)))), "web", "app.js"), "rb") as f:
        assert http("GET", d.url + "/assets/app.js").body == f.read(), "served bytes differ from web/"

    r = http("GET", d.url + "/assets/nope.js")
    assert r.status == 404 and r.json()["error"] == "not_found", r
    assert http("HEAD", d.url + "/").status == 200
    r = http("POST", d.url + "/", body=b"x", headers={"Content-Type": "text/plain"})
    assert r.status == 405 and "GET" in r.headers["Allow"], r
    m = scrape(d)
    assert m.value("http_requests_total", listener="public", route="dashboard", code="200") >= 2
    assert m.value("http_requests_total", listener="public", route="assets", code="304") == 3


def test_page_starts_a_ticker_and_renders_its_events(daemon, browser):
    """Load the page, start a ticker from its form, see every event as it
    arrives, the end, the task in the list; the browser reconnects once
    after end, gets 204 and stops; no console error, no CSP violation."""
    d = daemon(env=FAST)
    browser.goto(d.url + "/")
    wait_page(browser, "() => document.body.dataset.ready === 'true'")
    assert browser.eval("() => document.title") == "taskstream"
    assert page_status(browser)["state"] == "idle"

    count = 8
    task_id = start_ticker_from_page(browser, count, 150)
    # Live: the first ticks are on the page while the task still runs.
    wait_page(browser, "() => document.querySelectorAll('#events li.ev').length >= 3",
              timeout_s=scaled(10))
    assert d.task(task_id)["state"] in ("running", "queued"), "task finished before the check"
    wait_stream_state(browser, "closed", scaled(20))

    events = browser.eval(EVENTS_JS)
    check_ticks_exactly_once(events, count)
    assert re.search(r"^1 of 8 \(\d+ ms after it was sent\)$", events[0]["text"]), events[0]
    st = page_status(browser)
    assert st["events"] == count + 1 and st["duplicates"] == 0, st
    assert st["result"] == "succeeded" and st["last_id"] == str(count + 1), st
    assert st["connections"] == 1, st  # the 204 answer does not open a stream

    # The task list shows it finished (it refreshes on end).
    wait_page(browser, "(id) => { const r = document.querySelector(`#task-rows tr[data-id='${id}']`);"
                       " return r !== null && r.dataset.state === 'succeeded'; }", task_id)

    # After end: exactly one reconnect, answered 204; then silence.
    assert events_requests(d, 200) == 1
    wait_for(lambda: events_requests(d, 204) == 1, scaled(5), what="the 204 reconnect")
    time.sleep(1.0)  # four retry intervals
    assert events_requests(d, 204) == 1, "the browser reconnected again after 204"
    assert events_requests(d, 200) == 1

    assert page_status(browser)["state"] == "closed"
    assert browser.eval("() => document.getElementById('stream-state').textContent") == \
        "closed: finished"
    assert console_problems(browser) == []
    browser.screenshot(artifact_path("dashboard-finished-task.png"))


def test_page_runs_a_command_and_shows_output_as_text(daemon, browser, tmp_file):
    """A command started from the page streams its output; what the program
    prints is shown as text (no markup gets through); an unknown command
    shows the server's error."""
    commands = tmp_file("commands.json", json.dumps({"commands": {
        "say": {"argv": ["/bin/echo", "{text}"],
                "params": {"text": {"pattern": "^[ -~]{1,80}$"}}, "timeout": "10s"}}}))
    d = daemon(env={**FAST, "COMMANDS_FILE": commands})
    browser.goto(d.url + "/")
    wait_page(browser, "() => document.body.dataset.ready === 'true'")

    evil = "<img src=x id=pwned onerror=\"document.title='pwned'\"> & <b>bold</b>"
    browser.call("fill", selector="#command-name", value="say")
    browser.call("fill", selector="#command-params", value=json.dumps({"text": evil}))
    browser.call("click", selector="#command-submit")
    wait_stream_state(browser, "closed", scaled(20))
    events = browser.eval(EVENTS_JS)
    assert [e["type"] for e in events] == ["output", "end"], events
    assert events[0]["text"] == f"stdout: {evil}", events[0]
    assert events[1]["text"].startswith("succeeded"), events[1]
    assert browser.eval("() => document.getElementById('pwned') === null && "
                        "document.querySelector('#events b') === null && document.title") == "taskstream"

    browser.call("fill", selector="#command-name", value="nosuch")
    browser.call("fill", selector="#command-params", value="{}")
    browser.call("click", selector="#command-submit")
    wait_page(browser, "() => document.getElementById('submit-result').classList.contains('error')")
    assert page_status(browser)["submit"].startswith("404 "), page_status(browser)
    # The failed POST is the only console error (Chromium logs non-2xx fetches).
    assert console_problems(browser, allow=(r"404",)) == []


def test_drain_takeover_and_cut_resume_exactly_once(daemon, browser):
    """Two daemons behind a proxy that fails over like nginx (503 and a GET's
    404 go to the next). The page follows a ticker on A; A drains (the page
    shows the notice), the proxy prefers B from then on and cuts every
    connection twice; the browser's EventSource reconnects through B (404)
    to A with Last-Event-ID each time and the page ends with ticks 1..N and
    end, each exactly once and in order. A new task from the page goes to
    B. After end: one reconnect, 204, no more. Then A stops cleanly."""
    a = daemon(env={**FAST, "DRAIN_AUTH_KEY": KEY})
    b = daemon(env={**FAST, "DRAIN_AUTH_KEY": KEY})
    proxy = FailoverProxy({"a": ("127.0.0.1", a.port), "b": ("127.0.0.1", b.port)})
    try:
        browser.goto(proxy.url + "/")
        wait_page(browser, "() => document.body.dataset.ready === 'true'")
        count, interval_ms = 40, 100
        task_id = start_ticker_from_page(browser, count, interval_ms)
        assert a.task(task_id)["kind"] == "ticker"  # A was first in line
        wait_page(browser, "() => document.querySelectorAll('#events li.ev').length >= 5",
                  timeout_s=scaled(10))

        # A drains: readiness fails, its stream says so, the proxy moves on.
        assert a.drain(KEY).status == 202
        assert a.readyz() == 503 and b.readyz() == 200
        wait_page(browser, "() => document.querySelector('#events li.notice-draining') !== null",
                  timeout_s=scaled(5))
        proxy.order = ["b", "a"]

        resumed_from = []
        for min_events in (10, 22):
            wait_page(browser, "(n) => document.querySelectorAll('#events li.ev').length >= n",
                      min_events, timeout_s=scaled(10))
            before = page_status(browser)
            assert proxy.cut_all() >= 1, "no connection to cut"
            wait_page(browser, "(n) => Number(document.getElementById('count-connections')"
                               ".textContent) > n", before["connections"], timeout_s=scaled(10))
            resumed_from.append(before)
        wait_stream_state(browser, "closed", scaled(30))

        events = browser.eval(EVENTS_JS)
        check_ticks_exactly_once(events, count)
        st = page_status(browser)
        assert st["connections"] == 3 and st["events"] == count + 1, st
        assert st["notices"] == ["draining"], st
        assert a.task(task_id)["state"] == "succeeded"

        # Every reconnect carried the last id the page had, and reached A
        # after B said 404.
        streams = proxy.requests(f"/v1/tasks/{task_id}/events")
        ok = [s for s in streams if s["status"] == 200]
        assert len(ok) == 3, streams
        assert ok[0]["last_event_id"] is None
        for s, before in zip(ok[1:], resumed_from):
            lei = int(s["last_event_id"])
            assert lei >= int(before["last_id"]), (s, before)
            assert s["attempts"] == [("b", 404), ("a", 200)], s
        final = [s for s in streams if s["status"] == 204]
        assert len(final) == 1 and final[0]["last_event_id"] == str(count + 1), streams
        assert events_requests(a, 204) == 1
        browser.screenshot(artifact_path("dashboard-resumed-after-drain.png"))

        # A new task from the page lands on B.
        task2 = start_ticker_from_page(browser, 3, 50)
        assert b.task(task2)["kind"] == "ticker"
        assert http("GET", f"{a.url}/v1/tasks/{task2}").status == 404
        wait_stream_state(browser, "closed", scaled(15), task=task2)
        check_ticks_exactly_once(browser.eval(EVENTS_JS), 3)
        time.sleep(1.0)
        assert len(proxy.requests(f"/v1/tasks/{task_id}/events")) == len(streams), \
            "the first task's stream was reopened after 204"
        # Chromium logs the cut chunked bodies and the failed-over 404s.
        assert console_problems(browser, allow=(r"ERR_INCOMPLETE_CHUNKED_ENCODING",
                                                r"ERR_EMPTY_RESPONSE", r"ERR_CONNECTION")) == []

        # The rollout completes: A, drained and idle, stops at once and cleanly.
        assert a.stop(timeout=scaled(15)) == 0
        assert a.summary()["reason"] == "manual" and a.summary()["forced_cancellations"] == 0
    finally:
        proxy.close()


def test_gap_notice_when_the_page_comes_back_too_late(daemon, browser):
    """The daemon keeps 5 events per task. The page loses its stream and the
    instance stays unreachable until the task has finished: on reconnect the
    server sends a gap event for what was evicted, the page shows it where
    the missing events would be, then the retained events and the end."""
    d = daemon(env={**FAST, "EVENT_LOG_EVENTS": "5"})
    proxy = FailoverProxy({"d": ("127.0.0.1", d.port)})
    try:
        browser.goto(proxy.url + "/")
        wait_page(browser, "() => document.body.dataset.ready === 'true'")
        count = 20
        task_id = start_ticker_from_page(browser, count, 100)
        wait_page(browser, "() => document.querySelectorAll('#events li.ev').length >= 3",
                  timeout_s=scaled(10))
        proxy.hold()
        proxy.cut_all()
        d.wait_task(task_id, timeout=scaled(15))
        proxy.release()
        wait_stream_state(browser, "closed", scaled(15))

        rows = browser.eval("""() => Array.from(document.querySelectorAll('#events li'),
            li => [li.dataset.type, li.dataset.id || null, li.querySelector('.data').textContent])""")
        gap_at = [i for i, r in enumerate(rows) if r[0] == "gap"]
        assert len(gap_at) == 1, rows
        before = [int(r[1]) for r in rows[:gap_at[0]]]
        after = [int(r[1]) for r in rows[gap_at[0] + 1:]]
        assert before == list(range(1, len(before) + 1)) and len(before) >= 3, rows
        assert after == list(range(count - 3, count + 2)), rows  # the 5 retained: 17..21
        m = re.search(r"events (\d+) to (\d+) are no longer held", rows[gap_at[0]][2])
        assert m and (int(m.group(1)), int(m.group(2))) == (len(before) + 1, count - 4), rows[gap_at[0]]
        st = page_status(browser)
        assert st["result"] == "succeeded" and st["duplicates"] == 0 and st["connections"] == 2, st
        browser.screenshot(artifact_path("dashboard-gap.png"))
    finally:
        proxy.close()


def test_page_does_not_show_tasks_running_after_the_server_went_away(daemon, browser):
    """The server is killed under a running task: the page must not go on
    showing it as running. The list marks it unknown (last known: running),
    the note says the server does not answer, the stream reconnects."""
    d = daemon(env=FAST)
    browser.goto(d.url + "/")
    wait_page(browser, "() => document.body.dataset.ready === 'true'")
    task_id = start_ticker_from_page(browser, 1000, 100)
    row = "(id) => { const r = document.querySelector(`#task-rows tr[data-id='${id}']`);"
    wait_page(browser, row + " return r !== null && r.dataset.state === 'running'; }", task_id)
    d.signal(signal.SIGKILL)
    d.wait_exit(scaled(10))
    d.expected_exit = -signal.SIGKILL
    wait_page(browser, row + " return r !== null && r.dataset.stale === 'true'; }", task_id,
              timeout_s=scaled(15))
    cell = browser.eval("(id) => document.querySelector(`#task-rows tr[data-id='${id}'] td.state`)"
                        ".textContent", task_id)
    assert cell == "unknown (was running)", cell
    note = browser.eval("() => document.getElementById('server-note').textContent")
    assert note.startswith("the server is not answering"), note
    assert page_status(browser)["state"] in ("reconnecting", "closed"), page_status(browser)
