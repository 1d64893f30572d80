"""The suite's own SSE parser against the WHATWG rules (no daemon needed):
the stream tests are only as good as the parser they read with."""

from tshelpers import SSEComment, SSEEvent, SSEParser, split_response


def feed_all(chunks):
    p = SSEParser()
    out = []
    for c in chunks:
        out += p.feed(c)
    return p, out


def events(items):
    return [(i.type, i.data, i.id) for i in items if isinstance(i, SSEEvent)]


def test_line_endings_and_split_chunks():
    text = b"id: 1\r\nevent: tick\r\ndata: a\r\n\r\nid: 2\revent: tick\rdata: b\r\rid: 3\nevent: tick\ndata: c\n\n"
    whole = events(feed_all([text])[1])
    assert whole == [("tick", "a", "1"), ("tick", "b", "2"), ("tick", "c", "3")]
    # Byte by byte (a CRLF split between chunks included) gives the same.
    assert events(feed_all([text[i:i + 1] for i in range(len(text))])[1]) == whole


def test_fields():
    p, out = feed_all([b"\xef\xbb\xbfretry: 1500\n: hello\ndata:x\ndata: y\nid\n\n"
                       b"data: z\nid: a\x00b\n\n"
                       b"event: e\n\n"  # no data: not dispatched
                       b"retry: 1x\ndata\n\n"])
    assert p.retry == 1500
    assert [c.text for c in out if isinstance(c, SSEComment)] == [" hello"]
    evs = [i for i in out if isinstance(i, SSEEvent)]
    assert [(e.type, e.data, e.id) for e in evs] == [("message", "x\ny", ""), ("message", "z", None),
                                                     ("message", "", None)]
    # An id with NUL is ignored; the last event id is kept across events.
    assert evs[1].last_event_id == ""
    assert p.retry_fields == ["1500", "1x"]


def test_split_response_chunked():
    raw = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
           b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")
    status, headers, body, complete = split_response(raw)
    assert (status, body, complete) == (200, b"hello world", True)
    status, headers, body, complete = split_response(raw[:-7])
    assert (body, complete) == (b"hello world", False)
