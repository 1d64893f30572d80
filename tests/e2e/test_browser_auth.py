"""The dashboard with authentication on, in a real browser (Debian's headless
Chromium through playwright-core, tests/e2e/browser/driver.mjs), and a page
of another origin following a stream by CORS.

What these tests hold the page to:
- with the API key on, it asks for a token, keeps it in sessionStorage and
  sends it as a Bearer header; it lists, starts, follows (every event once)
  and cancels tasks, at 400 px wide too, and logs out;
- with a user JWT in the AUTH_COOKIE cookie it works without the login form,
  shows who the user is, and follows streams by the cookie;
- logged in with a token, it follows a stream by a stream token in the URL
  (never the user's own token), and fetches a fresh one when the old one
  expired while the stream was cut;
- a page of another origin follows a stream with EventSource and a stream
  token exactly when CORS_ORIGINS allows its origin;
- the command form builds its fields from GET /v1/commands, and the task
  list filters by state and shows how each task ended.
Screenshots go to tests/e2e/artifacts/.
"""

import base64
import functools
import json
import os
import re
import sys
import threading
import time
import urllib.parse
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import jwt
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "browser"))

from test_browser import (EVENTS_JS, FAST, check_ticks_exactly_once, console_problems,  # noqa: E402
                          page_status, wait_page, wait_stream_state, wait_submitted)
from tsclients import Browser, FailoverProxy, artifact_path, node_modules  # noqa: E402,F401
from tshelpers import http, scaled, scrape, wait_for  # noqa: E402

KEY = "browser-auth-api-key-0123456789"
SECRET = b"a-test-secret-of-at-least-32-bytes-for-hs256"
COOKIE = "ts_auth"

ROW_JS = """(id) => { const r = document.querySelector(`#task-rows tr[data-id='${id}']`);
  if (r === null) return null;
  const t = (c) => { const e = r.querySelector(`td.${c}`); return e === null ? null : e.textContent; };
  return {state: r.dataset.state, what: t('what'), exit: t('exit'), duration: t('duration'),
          reason: t('reason'), by: t('by'), cancel: r.querySelector('button.cancel') !== null}; }"""

AUTH_JS = """() => ({
  auth: document.body.dataset.auth || null,
  ready: document.body.dataset.ready === 'true',
  login: !document.getElementById('login').hidden,
  app: !document.getElementById('app').hidden,
  who: document.getElementById('whoami').hidden ? null : document.getElementById('whoami').textContent,
  via: document.getElementById('whoami').dataset.via || null,
  logout: !document.getElementById('logout').hidden,
  login_error: document.getElementById('login-error').textContent,
  stored: sessionStorage.getItem('taskstream.token'),
})"""


@pytest.fixture
def browser(node_modules):
    b = Browser(start_timeout=90)
    yield b
    b.close()


def bearer(token):
    return {"Authorization": f"Bearer {token}"}


def user_jwt(sub, kinds=("ticker",), see="own", ttl_s=600, **claims):
    now = int(time.time())
    body = {"sub": sub, "iat": now, "exp": now + ttl_s,
            "taskstream": {"kinds": list(kinds), "see": see}, **claims}
    return jwt.encode(body, SECRET, algorithm="HS256")


def jwt_parts(token):
    """(header, payload) of a JWT, unverified."""
    def part(s):
        return json.loads(base64.urlsafe_b64decode(s + "=" * (-len(s) % 4)))
    head, payload, _ = token.split(".")
    return part(head), part(payload)


def submit(d, token, count, interval_ms):
    r = http("POST", d.url + "/v1/tasks", {"kind": "ticker", "count": count,
                                           "interval_ms": interval_ms}, headers=bearer(token))
    assert r.status == 202, r
    return r.json()


def auth_state(b):
    return b.eval(AUTH_JS)


def row(b, task_id):
    return b.eval(ROW_JS, task_id)


def wait_row(b, task_id, cond, timeout_s=10):
    """Wait until the task's row satisfies `cond` (JS on r, the row dict)."""
    try:
        return wait_page(b, f"(id) => {{ const r = ({ROW_JS})(id); return r !== null && ({cond}) ? r : null; }}",
                         task_id, timeout_s=timeout_s)
    except AssertionError as e:
        raise AssertionError(f"{e}\nrow: {row(b, task_id)}") from None


def responses(b, pattern):
    """The page's responses whose "STATUS METHOD URL" matches `pattern`."""
    return [e["text"] for e in b.log() if e["kind"] == "response" and re.search(pattern, e["text"])]


def events_urls(b, task_id):
    """URLs of the page's requests for the task's stream, with their status."""
    out = []
    for text in responses(b, rf"/v1/tasks/{task_id}/events"):
        status, _, url = text.split(" ", 2)
        out.append((int(status), url))
    return out


def query_of(url):
    return dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(url).query))


def no_horizontal_scroll(b):
    return b.eval("() => document.documentElement.scrollWidth <= window.innerWidth")


# --------------------------------------------------------------------------


def test_api_key_login_list_follow_cancel_logout(daemon, browser):
    """API_AUTH_KEY: the page asks for a token; logged in with the key it
    lists the tasks, starts a ticker and follows it to end with every event
    once (by a stream token, not the key), cancels a running task, works at
    400 px wide, and logs out. The only console error is the 401 of the
    first GET /v1/me."""
    d = daemon(env={**FAST, "API_AUTH_KEY": KEY})
    long = submit(d, KEY, 10000, 100)["id"]

    browser.goto(d.url + "/")
    wait_page(browser, "() => document.body.dataset.ready === 'true'")
    st = auth_state(browser)
    assert st["login"] and not st["app"] and st["auth"] == "login", st
    assert st["who"] is None and not st["logout"] and st["stored"] is None, st

    browser.call("fill", selector="#login-token", value="not-the-key")
    browser.call("click", selector="#login-submit")
    wait_page(browser, "() => /token was refused: 401 invalid_token/.test("
                       "document.getElementById('login-error').textContent)")
    st = auth_state(browser)
    assert st["login"] and not st["app"] and st["stored"] is None, st

    browser.call("fill", selector="#login-token", value=KEY)
    browser.call("click", selector="#login-submit")
    wait_page(browser, "() => document.body.dataset.auth === 'key'")
    st = auth_state(browser)
    assert st["app"] and not st["login"] and st["logout"] and st["via"] == "token", st
    assert st["who"].startswith("API key (token)"), st
    assert st["stored"] == KEY, st

    # The list: the task submitted beforehand, running, with a cancel button.
    r = wait_row(browser, long, "r.state === 'running' && r.cancel")
    assert r["what"] == "ticker count=10000 interval_ms=100", r

    # Start and follow a ticker: every event once, by a stream token.
    count = 6
    browser.call("fill", selector="#ticker-count", value=count)
    browser.call("fill", selector="#ticker-interval", value=100)
    browser.call("click", selector="#ticker-submit")
    wait_page(browser, "() => /^started ticker task [0-9a-f]{32}$/.test("
                       "document.getElementById('submit-result').textContent)")
    task_id = page_status(browser)["task"]
    wait_stream_state(browser, "closed", scaled(20))
    check_ticks_exactly_once(browser.eval(EVENTS_JS), count)
    st = page_status(browser)
    assert st["events"] == count + 1 and st["duplicates"] == 0 and st["connections"] == 1, st
    urls = events_urls(browser, task_id)
    assert [s for s, _ in urls] == [200, 204], urls  # the stream, then the 204 after end
    for _, url in urls:
        head, payload = jwt_parts(query_of(url)["access_token"])
        assert head["kid"] == "taskstream-stream" and payload["taskstream"]["task"] == task_id, url
    r = wait_row(browser, task_id, "r.state === 'succeeded'")
    assert r["exit"] == "0" and r["duration"] != "" and not r["cancel"], r

    # Cancel the long one from its row.
    browser.call("click", selector=f"#task-rows tr[data-id='{long}'] button.cancel")
    r = wait_row(browser, long, "r.state === 'cancelled'")
    assert r["reason"] == "client" and not r["cancel"], r
    wait_page(browser, "(id) => document.getElementById('tasks-note').textContent === "
                       "`cancel sent to task ${id}`", long)
    assert http("GET", f"{d.url}/v1/tasks/{long}", headers=bearer(KEY)).json()["state"] == "cancelled"

    # Filter: only the cancelled one.
    browser.call("select", selector="#tasks-state", value="cancelled")
    wait_page(browser, "(id) => { const rows = document.querySelectorAll('#task-rows tr');"
                       " return rows.length === 1 && rows[0].dataset.id === id; }", long)

    # 400 px wide: nothing sticks out; the screenshot shows the phone layout.
    browser.call("select", selector="#tasks-state", value="")
    wait_page(browser, "() => document.querySelectorAll('#task-rows tr').length === 2")
    assert no_horizontal_scroll(browser)
    browser.screenshot(artifact_path("dashboard-auth-desktop.png"))
    browser.set_viewport(400)
    wait_page(browser, "() => window.innerWidth === 400")
    assert no_horizontal_scroll(browser), browser.eval(
        "() => [document.documentElement.scrollWidth, window.innerWidth]")
    assert browser.eval("() => getComputedStyle(document.querySelector('#task-table thead')).display") == "none"
    browser.screenshot(artifact_path("dashboard-auth-400px.png"))

    # The key never went into a URL.
    assert not [e for e in browser.log() if KEY in e["text"]], "the API key is in a logged URL"
    # The 401 of the first GET /v1/me and of the wrong key are the only errors.
    problems = console_problems(browser)
    assert len(problems) == 2 and all(p.get("url", "").endswith("/v1/me") and "401" in p["text"]
                                      for p in problems), problems

    # Log out: the token is forgotten, the login form is back.
    browser.call("click", selector="#logout")
    wait_page(browser, "() => document.body.dataset.auth === 'login'")
    st = auth_state(browser)
    assert st["login"] and not st["app"] and st["stored"] is None and st["who"] is None, st
    assert browser.eval("() => document.querySelectorAll('#task-rows tr, #events li').length") == 0


def test_cookie_jwt_works_without_login_form(daemon, browser, tmp_file):
    """JWT_SECRET_FILE and AUTH_COOKIE: a user's JWT (may start tickers,
    sees its own tasks) set as the cookie, another cookie after it. The page shows who the user is and
    no login form, lists only the user's tasks, offers no command it may not
    run, starts a ticker recorded as the user's, and follows it to end by the
    cookie (a plain stream URL). No console error."""
    secret = tmp_file("jwt.secret", SECRET + b"\n")
    commands = tmp_file("commands.json", json.dumps({"commands": {
        "say": {"argv": ["/bin/echo", "{text}"], "params": {"text": {"pattern": "^[a-z]{1,20}$"}}}}}))
    d = daemon(env={**FAST, "JWT_SECRET_FILE": secret, "AUTH_COOKIE": COOKIE,
                    "COMMANDS_FILE": commands})
    ada = user_jwt("ada")
    bobs = submit(d, user_jwt("bob"), 3, 10)["id"]
    browser.add_cookies([{"name": COOKIE, "value": ada, "url": d.url, "httpOnly": True,
                          "sameSite": "Lax"}])
    # Another cookie of the host comes after ours in the Cookie header.
    browser.add_cookies([{"name": "theme", "value": "dark", "url": d.url}])

    browser.goto(d.url + "/")
    wait_page(browser, "() => document.body.dataset.ready === 'true'")
    st = auth_state(browser)
    assert st["auth"] == "jwt" and st["app"] and not st["login"], st
    assert st["via"] == "cookie" and not st["logout"] and st["stored"] is None, st
    assert st["who"].startswith("ada (JWT, cookie) · sees own tasks · may start ticker"), st
    wait_page(browser, "() => document.getElementById('command-info').textContent === "
                       "'no command you may run'")

    count = 5
    browser.call("fill", selector="#ticker-count", value=count)
    browser.call("fill", selector="#ticker-interval", value=100)
    browser.call("click", selector="#ticker-submit")
    wait_page(browser, "() => /^started ticker task [0-9a-f]{32}$/.test("
                       "document.getElementById('submit-result').textContent)")
    task_id = page_status(browser)["task"]
    wait_stream_state(browser, "closed", scaled(20))
    check_ticks_exactly_once(browser.eval(EVENTS_JS), count)
    assert page_status(browser)["connections"] == 1

    urls = events_urls(browser, task_id)
    assert urls == [(200, f"{d.url}/v1/tasks/{task_id}/events"),
                    (204, f"{d.url}/v1/tasks/{task_id}/events")], urls
    r = wait_row(browser, task_id, "r.state === 'succeeded'")
    assert r["by"] == "ada", r
    # Bob's task is not Ada's to see.
    assert row(browser, bobs) is None
    assert browser.eval("() => document.querySelectorAll('#task-rows tr').length") == 1
    assert http("GET", f"{d.url}/v1/tasks/{task_id}", headers=bearer(ada)).json()["submitted_by"] == "ada"
    assert console_problems(browser) == []


def test_token_login_follows_by_stream_token_and_renews_it(daemon, browser, tmp_file):
    """Logged in with a user JWT through the form, the page follows a task
    (picked in the list) by GET /v1/tasks/{id}'s stream token in the URL,
    never the JWT. Stream tokens live 10 s here: the stream is cut after its
    token expired, the EventSource's reconnect is refused, and the page
    fetches a fresh token and goes on after its last event: every event
    once, in order, to the end of the cancelled task."""
    secret = tmp_file("jwt.secret", SECRET)
    d = daemon(env={**FAST, "JWT_SECRET_FILE": secret, "STREAM_TOKEN_TTL": "10s",
                    "JWT_LEEWAY": "0s"})
    proxy = FailoverProxy({"d": ("127.0.0.1", d.port)})
    try:
        ada = user_jwt("ada")
        task_id = submit(d, ada, 100000, 200)["id"]

        browser.goto(proxy.url + "/")
        wait_page(browser, "() => document.body.dataset.auth === 'login'")
        browser.call("fill", selector="#login-token", value=ada)
        browser.call("click", selector="#login-submit")
        wait_page(browser, "() => document.body.dataset.auth === 'jwt'")
        assert auth_state(browser)["via"] == "token"
        wait_row(browser, task_id, "r.state === 'running'")
        browser.call("click", selector=f"#task-rows tr[data-id='{task_id}'] button.follow")
        wait_page(browser, "() => document.querySelectorAll('#events li.ev').length >= 3",
                  timeout_s=scaled(10))

        def streams():
            return [e for e in proxy.requests() if e["path"].startswith(f"/v1/tasks/{task_id}/events")]

        first = streams()
        assert len(first) == 1 and first[0]["status"] == 200, first
        q = query_of(first[0]["path"])
        assert set(q) == {"access_token"}, q
        token = q["access_token"]
        head, payload = jwt_parts(token)
        assert head["kid"] == "taskstream-stream" and payload["taskstream"] == {"task": task_id}
        # The page asked for it with its own token in the header.
        reads = [e for e in proxy.requests() if e["path"] == f"/v1/tasks/{task_id}"]
        assert reads and reads[0]["status"] == 200 and reads[0]["t"] < first[0]["t"], reads

        # Until the stream token expires the stream goes on; then cut it.
        wait_for(lambda: http("GET", d.url + "/v1/me", headers=bearer(token)).status == 401,
                 scaled(15), interval=0.25, what="the stream token to expire")
        before = page_status(browser)
        assert before["state"] == "open", before
        assert proxy.cut_all() >= 1
        wait_page(browser, "() => Number(document.getElementById('count-connections').textContent) === 2",
                  timeout_s=scaled(10))
        wait_page(browser, "(n) => Number(document.getElementById('count-events').textContent) >= n + 3",
                  before["events"], timeout_s=scaled(10))
        assert http("DELETE", f"{d.url}/v1/tasks/{task_id}", headers=bearer(ada)).status == 202
        wait_stream_state(browser, "closed", scaled(15))

        events = browser.eval(EVENTS_JS)
        assert [e["id"] for e in events] == list(range(1, len(events) + 1)), events
        assert {e["type"] for e in events[:-1]} == {"tick"} and events[-1]["type"] == "end", events
        assert events[-1]["text"].startswith("cancelled (client)"), events[-1]
        st = page_status(browser)
        assert st["connections"] == 2 and st["duplicates"] == 0 and st["result"] == "cancelled", st
        s = streams()
        # The stream, the refused reconnect with the expired token, the
        # stream again with a fresh token after the last event, the 204.
        assert [e["status"] for e in s] == [200, 401, 200, 204], s
        assert query_of(s[1]["path"]) == {"access_token": token}, s[1]
        renewed = query_of(s[2]["path"])
        assert renewed["access_token"] != token and jwt_parts(renewed["access_token"])[1]["taskstream"] \
            == {"task": task_id}, renewed
        assert int(renewed["last_event_id"]) >= before["events"], (renewed, before)
        assert [e["path"] for e in proxy.requests() if e["path"] == f"/v1/tasks/{task_id}"][1:], \
            "no second GET for a fresh stream token"
        # The user's JWT never went into a URL.
        assert not [e for e in proxy.requests() if ada in e["path"]]
        assert not [e for e in browser.log() if ada in e["text"]]
        # The only console errors: the 401 of the first GET /v1/me (before
        # the login), the cut body, the refused reconnect.
        problems = console_problems(browser, allow=(r"ERR_INCOMPLETE_CHUNKED_ENCODING",))
        assert [p["url"] for p in problems if "401" in p["text"]] == \
            [f"{proxy.url}/v1/me", f"{proxy.url}{s[1]['path']}"], problems
        assert all("401" in p["text"] for p in problems), problems
    finally:
        proxy.close()


def test_expired_session_and_a_stream_token_as_login(daemon, browser, tmp_file):
    """A user JWT that expires while the page is open: the next request is
    refused and the page goes back to the login form, saying so, with the
    token forgotten. Logged in with a stream token instead, the page shows
    only that task's stream and follows it (the stream token itself goes in
    the URL: it is made for that)."""
    secret = tmp_file("jwt.secret", SECRET)
    d = daemon(env={**FAST, "JWT_SECRET_FILE": secret, "JWT_LEEWAY": "0s"})
    browser.goto(d.url + "/")
    wait_page(browser, "() => document.body.dataset.auth === 'login'")
    short = user_jwt("ada", ttl_s=3)
    browser.call("fill", selector="#login-token", value=short)
    browser.call("click", selector="#login-submit")
    wait_page(browser, "() => document.body.dataset.auth === 'jwt'")
    assert auth_state(browser)["stored"] == short
    wait_page(browser, "() => document.body.dataset.auth === 'login'", timeout_s=scaled(10))
    st = auth_state(browser)
    assert st["login"] and not st["app"] and st["stored"] is None, st
    assert st["login_error"].startswith("logged out: 401 invalid_token"), st

    count = 4
    task = submit(d, user_jwt("ada"), count, 100)
    browser.call("fill", selector="#login-token", value=task["stream_token"])
    browser.call("click", selector="#login-submit")
    wait_page(browser, "() => document.body.dataset.auth === 'stream'")
    st = auth_state(browser)
    assert st["who"] == f"stream token for task {task['id']}: read only", st
    assert browser.eval("() => [document.getElementById('start').hidden, "
                        "document.getElementById('tasks').hidden]") == [True, True]
    wait_stream_state(browser, "closed", scaled(15))
    check_ticks_exactly_once(browser.eval(EVENTS_JS), count)
    assert query_of(events_urls(browser, task["id"])[0][1]) == {"access_token": task["stream_token"]}
    # The refusals of the expired JWT and of the first GET /v1/me are the only errors.
    assert [p for p in console_problems(browser) if "401" not in p["text"]] == []
    assert not responses(browser, r"^(?!401|200|204)\d+ ")


# --------------------------------------------------------------------------
# a page of another origin


FOREIGN_HTML = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>foreign</title>
<link rel="icon" href="data:,"><script src="/follow.js" defer></script></head>
<body><p id="state">starting</p><ol id="events"></ol></body></html>
"""

# Follows the stream named by ?src=, records what it gets; closes on end.
FOREIGN_JS = """'use strict';
(function () {
  const src = new URLSearchParams(location.search).get('src');
  const got = [];
  const errors = [];
  window.follow = { got, errors, opened: 0, done: false, closed: false };
  const es = new EventSource(src);
  const record = (e) => {
    got.push({ id: e.lastEventId, type: e.type, data: e.data });
    const li = document.createElement('li');
    li.textContent = `${e.lastEventId} ${e.type}`;
    document.getElementById('events').append(li);
  };
  es.addEventListener('open', () => { window.follow.opened++; });
  es.addEventListener('tick', record);
  es.addEventListener('end', (e) => {
    record(e);
    window.follow.done = true;
    es.close();
    document.getElementById('state').textContent = 'ended';
  });
  es.addEventListener('error', () => {
    errors.push(es.readyState);
    if (es.readyState === EventSource.CLOSED) {
      window.follow.closed = true;
      document.getElementById('state').textContent = 'closed';
    }
  });
})();
"""


class ForeignSite:
    """A static page on its own loopback port, in a thread."""

    def __init__(self, tmp_path):
        root = tmp_path / "foreign"
        root.mkdir()
        (root / "index.html").write_text(FOREIGN_HTML)
        (root / "follow.js").write_text(FOREIGN_JS)

        class Quiet(SimpleHTTPRequestHandler):
            def log_message(self, *args):
                pass

        handler = functools.partial(Quiet, directory=str(root))
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.origin = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def url(self, stream_url):
        return f"{self.origin}/index.html?src={urllib.parse.quote(stream_url, safe='')}"

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def foreign(tmp_path):
    site = ForeignSite(tmp_path)
    yield site
    site.close()


@pytest.mark.parametrize("cors", [True, False], ids=["cors-allowed", "cors-unset"])
def test_foreign_page_follows_by_stream_token_only_with_cors(daemon, browser, foreign, cors):
    """A page of another origin opens EventSource on the daemon with a
    stream token in the URL. With CORS_ORIGINS set to its origin it gets
    every event to end; with CORS_ORIGINS unset the server answers the
    stream but the browser withholds it: an error, nothing received."""
    env = {**FAST, "API_AUTH_KEY": KEY}
    if cors:
        env["CORS_ORIGINS"] = f"http://127.0.0.1:1,{foreign.origin}"
    d = daemon(env=env)
    count = 5
    task = submit(d, KEY, count, 50)
    stream = f"{d.url}/v1/tasks/{task['id']}/events?access_token={task['stream_token']}"

    browser.goto(foreign.url(stream))
    if cors:
        wait_page(browser, "() => window.follow && window.follow.done", timeout_s=scaled(15))
        got = browser.eval("() => window.follow.got")
        assert [(int(e["id"]), e["type"]) for e in got] == \
            [(n, "tick") for n in range(1, count + 1)] + [(count + 1, "end")], got
        assert json.loads(got[-1]["data"])["status"] == "succeeded"
        assert browser.eval("() => window.follow.opened") == 1
        assert console_problems(browser) == []
    else:
        wait_page(browser, "() => window.follow && window.follow.closed", timeout_s=scaled(15))
        assert browser.eval("() => [window.follow.got.length, window.follow.opened]") == [0, 0]
        # It was the browser's CORS check: the server did answer the stream.
        wait_for(lambda: scrape(d).get("http_requests_total", 0.0, listener="public",
                                       route="events", code="200") == 1, scaled(5),
                 what="the daemon's 200 for the stream")
        assert any("CORS policy" in p["text"] for p in console_problems(browser)), browser.log()


# --------------------------------------------------------------------------
# operator features, auth off


def test_command_form_fields_and_state_filter(daemon, browser, tmp_file):
    """Auth off: the page says so. The command form lists GET /v1/commands;
    picking one shows its parameters as fields (default as placeholder),
    which write the JSON that is sent; the task list shows the command and
    its parameters, exit code and reason of a failed run, and filters by
    state."""
    commands = tmp_file("commands.json", json.dumps({"commands": {
        "say": {"description": "Print a word.", "argv": ["/bin/echo", "{greeting}", "{who}"],
                "params": {"greeting": {"pattern": "^[a-z]{1,20}$", "default": "hello"},
                           "who": {"pattern": "^[a-z]{1,20}$", "description": "whom to greet"}},
                "timeout": "10s"},
        "fail": {"argv": ["/bin/sh", "-c", "exit {code}"], "params": {"code": {"pattern": "^[0-9]$"}}},
    }}))
    d = daemon(env={**FAST, "COMMANDS_FILE": commands})
    browser.goto(d.url + "/")
    wait_page(browser, "() => document.body.dataset.ready === 'true'")
    st = auth_state(browser)
    assert st["auth"] == "open" and st["who"] == "auth off: the API is open" and not st["logout"], st
    wait_page(browser, "() => document.querySelectorAll('#command-list option').length === 2")
    assert browser.eval("() => Array.from(document.querySelectorAll('#command-list option'), o => o.value)") \
        == ["say", "fail"]

    browser.call("fill", selector="#command-name", value="say")
    fields = browser.eval("""() => Array.from(document.querySelectorAll('#command-fields input.param'),
        i => [i.dataset.param, i.placeholder])""")
    assert fields == [["greeting", "default: hello"], ["who", "required"]], fields
    assert "Print a word." in browser.eval("() => document.getElementById('command-info').textContent")
    browser.call("fill", selector="#command-fields input[data-param='who']", value="ada")
    assert json.loads(browser.eval("() => document.getElementById('command-params').value")) == {"who": "ada"}
    browser.screenshot(artifact_path("dashboard-command-form.png"))
    browser.call("click", selector="#command-submit")
    say = wait_submitted(browser, "command")
    wait_stream_state(browser, "closed", scaled(20), task=say)
    events = browser.eval(EVENTS_JS)
    assert [(e["type"], e["text"]) for e in events[:1]] == [("output", "stdout: hello ada")], events

    # The JSON drives the fields too.
    browser.call("fill", selector="#command-name", value="fail")
    browser.call("fill", selector="#command-params", value='{"code": "3"}')
    assert browser.eval("() => document.querySelector(\"#command-fields input[data-param='code']\").value") == "3"
    browser.call("click", selector="#command-submit")
    failed = wait_submitted(browser, "command")
    assert failed != say
    wait_stream_state(browser, "closed", scaled(20), task=failed)
    assert page_status(browser)["result"] == "failed"
    r = wait_row(browser, failed, "r.state === 'failed'")
    assert r["what"] == "command fail code=3" and r["exit"] == "3" and r["reason"] == "nonzero exit", r
    r = wait_row(browser, say, "r.state === 'succeeded'")
    assert r["what"] == "command say who=ada" and r["exit"] == "0" and r["reason"] == "", r

    browser.call("select", selector="#tasks-state", value="failed")
    wait_page(browser, "(id) => { const rows = document.querySelectorAll('#task-rows tr');"
                       " return rows.length === 1 && rows[0].dataset.id === id; }", failed)
    browser.call("select", selector="#tasks-state", value="queued,running")
    wait_page(browser, "() => document.querySelectorAll('#task-rows tr').length === 0 && "
                       "!document.getElementById('tasks-empty').hidden")
    assert browser.eval("() => document.getElementById('tasks-empty').textContent") == "No tasks in this state."
    assert console_problems(browser) == []
