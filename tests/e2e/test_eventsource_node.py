"""A second, independent SSE client: Node's `eventsource` package (npm,
installed from tests/e2e/browser/package-lock.json), with its own parser and
its own reconnect logic, follows a task next to our Python reader.

Its connection is cut in the middle (through the test's proxy); it resumes
with Last-Event-ID, receives every tick once and in order and the end, then
reconnects once, gets 204 and stops for good.
"""

import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "browser"))

from tsclients import ESClient, FailoverProxy, node_modules  # noqa: E402,F401
from tshelpers import SSEStream, Background, check_complete_stream, scaled, scrape  # noqa: E402


def test_node_eventsource_receives_every_event_and_end(daemon, node_modules):
    d = daemon(env={"SSE_RETRY_MS": "200", "SSE_HEARTBEAT_INTERVAL": "1s"})
    proxy = FailoverProxy({"d": ("127.0.0.1", d.port)})
    try:
        count = 30
        task = d.submit(count=count, interval_ms=60)
        url = f"/v1/tasks/{task['id']}/events"
        ours = Background(lambda: SSEStream(d.url + url, timeout=scaled(30)).read_all())
        node = ESClient(proxy.url + url, scaled(30))

        # Cut the Node client's connection once it has received ten events
        # (what the daemon has produced may not have reached it yet); the
        # task then has 20 ticks, 1.2 s, to go.
        node.wait_events(10, scaled(10))
        assert proxy.cut_all() == 1
        lines = node.result(scaled(40))
    finally:
        proxy.close()

    kinds = [ln["kind"] for ln in lines]
    assert kinds.count("open") == 2, lines  # the first stream and the resumed one
    events = [ln for ln in lines if ln["kind"] == "event"]
    assert [int(e["id"]) for e in events] == list(range(1, count + 2)), events
    assert [e["type"] for e in events] == ["tick"] * count + ["end"]
    for e in events[:-1]:
        data = json.loads(e["data"])
        assert data["n"] == int(e["id"]) and data["count"] == count
    assert json.loads(events[-1]["data"])["status"] == "succeeded"

    # After end: one reconnect answered 204, then the client closed.
    errors = [ln for ln in lines if ln["kind"] == "error"]
    assert errors[-1]["code"] == 204 and errors[-1]["ready_state"] == 2, errors
    assert lines[-1] == {**lines[-1], "kind": "done", "reason": "closed"}, lines[-1]

    streams = proxy.requests(url)
    assert [s["status"] for s in streams] == [200, 200, 204], streams
    assert streams[0]["last_event_id"] is None
    resumed_at = int(streams[1]["last_event_id"])
    assert 10 <= resumed_at < count, streams
    assert streams[2]["last_event_id"] == str(count + 1)

    # The independent Python reader saw the same stream.
    check_complete_stream(ours.result(scaled(30)), count)
    m = scrape(d)
    assert m.value("http_requests_total", listener="public", route="events", code="204") == 1
