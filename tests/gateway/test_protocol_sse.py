"""The SSE watch protocol without a server: query parsing, event ids, framing, the client parser."""

from __future__ import annotations

import json
from datetime import UTC

import pytest

from livedata.errors import InputError
from livedata.gateway.protocol import sse


def test_defaults_of_an_empty_query() -> None:
    """No parameters: period 3 s, keep-alive 30 s, ns in UTC, no tags, 20 rows."""
    params = sse.parse_query("")
    assert (params.period, params.keep_alive, params.max_rows) == (3.0, 30.0, 20)
    assert params.fmt == sse.TimeFormat("ns", UTC)
    assert params.tags == ()


def test_query_parameters_are_parsed() -> None:
    """Go durations, repeated and comma-separated tags (deduplicated, in order), formats."""
    params = sse.parse_query(
        b"period=1m30s&keep-alive=500ms0.5s&timeformat=MS&tz=Asia/Seoul"
        b"&tag=a,b&tag=a&tag=c&max-rows=100&parallelism=2"
    )
    assert params.period == 90.0
    assert params.keep_alive == 1.0
    assert params.fmt.name == "ms" and str(params.fmt.tz) == "Asia/Seoul"
    assert params.tags == ("a", "b", "c")
    assert (params.max_rows, params.parallelism) == (100, 2)


def test_the_last_of_a_repeated_parameter_wins() -> None:
    """period=5s&period=2s means 2 s, as the HTTP framework's query mapping reads it."""
    assert sse.parse_query("period=5s&period=2s").period == 2.0


@pytest.mark.parametrize(
    ("query", "words"),
    [
        ("period=0.5s", "below the minimum"),
        ("period=2h", "above the maximum"),
        ("period=soon", "not a duration"),
        ("keep-alive=", "empty"),
        ("timeformat=fortnight", "unknown timeformat"),
        ("tz=Mars/Olympus", "unknown tz"),
        ("max-rows=101", "out of range"),
        ("max-rows=x", "not an integer"),
        ("parallelism=-1", "0 or more"),
        ("&".join(f"tag=t{i}" for i in range(101)), "at most 100"),
        ("tag=" + "x" * 201, "longer than 200"),
        ("period=" + "1" * 70, "too long"),
    ],
)
def test_bad_parameters_are_input_errors(query: str, words: str) -> None:
    """Each bad parameter is an InputError (400 bad_request) that names it."""
    with pytest.raises(InputError, match=words):
        sse.parse_query(query)


def test_an_oversized_query_is_refused_before_parsing() -> None:
    """A query string over the bound is too_large without being split."""
    with pytest.raises(sse.TooLarge) as caught:
        sse.parse_query("tag=" + "a" * sse.MAX_QUERY)
    assert caught.value.code == "too_large"


def test_time_formats_write_and_read() -> None:
    """TIME goes out in the chosen unit (or the Go layout in the zone) and comes back in ms."""
    t = 1_729_070_964_123
    assert sse.TimeFormat.parse("s", None).format(t) == 1_729_070_964
    assert sse.TimeFormat.parse("us", None).format(t) == t * 1000
    assert sse.TimeFormat.parse(None, None).format(t) == t * 1_000_000
    seoul = sse.TimeFormat.parse("default", "Asia/Seoul")
    assert seoul.format(t) == "2024-10-16 18:29:24.123"
    assert seoul.to_ms("2024-10-16 18:29:24.123") == t
    assert sse.TimeFormat.parse("ns", None).to_ms(str(t * 1_000_000)) == t
    with pytest.raises(ValueError, match="out of range"):
        sse.TimeFormat.parse("s", None).to_ms(10**12)


def test_event_ids_round_trip_and_garbage_is_none() -> None:
    """An id parses back to itself; anything malformed or oversized is None, never an error."""
    event_id = sse.EventId("ab12cd34", 5, 9, 2)
    assert str(event_id) == "ab12cd34-5-9-2"
    assert sse.EventId.parse(str(event_id)) == event_id
    for bad in (None, "", "not an id", "a-1-2", "a-3-2-0", "a-1-2--1", "-1-2-0", "a-x-2-0"):
        assert sse.EventId.parse(bad) is None, bad
    assert sse.EventId.parse("a-1-2-" + "9" * sse.MAX_EVENT_ID) is None
    assert sse.EventId.parse("a-1-2-0-bad/resume") is None


def test_resume_marks_round_trip() -> None:
    """Per-channel pub/sub positions travel in the id: one epoch when shared, _ when unknown."""
    start = [("e1", 4), None, ("e1", 9)]
    end = [("e1", 6), ("e1", 2), ("e1", 9)]
    text = sse.format_marks(start, end)
    assert text == "e1~4._.9~6.2.9"
    assert sse.parse_marks(text, 3) == (start, end)
    mixed = sse.format_marks([("a", 1), ("b", 2)], [("a", 3), ("b", 4)])
    assert mixed == "a.b~1.2~3.4"
    assert sse.parse_marks(mixed, 2) == ([("a", 1), ("b", 2)], [("a", 3), ("b", 4)])
    event_id = sse.EventId("ab", 1, 2, 0, text)
    assert sse.EventId.parse(str(event_id)) == event_id
    for bad, channels in ((text, 2), ("e1~4~x", 1), ("e1~4", 1), ("a.b.c~1.2~3.4", 2)):
        assert sse.parse_marks(bad, channels) is None, bad


def test_events_are_framed_with_ids_and_names() -> None:
    """Each event is id:, event: when named, data: JSON and a blank line; ids count the period."""
    raw = sse.encode_events([(None, {"VALUE": 1}), ("skipped", {"n": 2})], "e1", 3, 7)
    assert raw == (
        b'id: e1-3-7-0\ndata: {"VALUE":1}\n\nid: e1-3-7-1\nevent: skipped\ndata: {"n":2}\n\n'
    )
    rest = sse.encode_events([(None, 1), (None, 2), (None, 3)], "e1", 3, 7, start=2)
    assert rest == b"id: e1-3-7-2\ndata: 3\n\n"


def test_data_blocks_are_shared_bytes_of_an_event() -> None:
    """An event is its id/name head plus the client-independent data block."""
    block = sse.data_block({"NAME": "a", "VALUE": 1.5})
    assert block == b'data: {"NAME":"a","VALUE":1.5}\n\n'
    assert sse.event_block("e-1-2-0", None, block) == b"id: e-1-2-0\n" + block


def test_gap_event_says_what_was_lost() -> None:
    """event: gap carries code, message and the client's (bounded) Last-Event-ID."""
    parser = sse.EventParser()
    (event,) = parser.feed(sse.encode_gap("e9", 4, "x" * 5000, "gone"))
    assert (event.event, event.id) == ("gap", "e9-4-4-0")
    data = json.loads(event.data)
    assert data["code"] == "gap" and data["message"] == "gone"
    assert data["lastEventId"] == "x" * sse.MAX_EVENT_ID


def test_error_bodies_have_the_documented_shape() -> None:
    """A refused request gets {"error":{"code","message"}} and the code's HTTP status."""
    assert sse.error_body("too_many_streams", "busy") == (
        503,
        b'{"error":{"code":"too_many_streams","message":"busy"}}',
    )
    assert sse.error_body("not_found", "no")[0] == 404
    assert sse.error_body("bad_request", "no")[0] == 400


def test_parser_reads_events_split_anywhere() -> None:
    """The client-side parser gives the same events whichever way the bytes are cut."""
    raw = (
        sse.encode_events([(None, {"a": 1}), ("skipped", {"b": 2})], "e", 0, 1)
        + sse.KEEP_ALIVE
        + b"id: e-1-2-0\r\ndata: x\r\ndata: y\r\n\r\n"
    )
    whole = sse.EventParser().feed(raw)
    assert [(e.event, e.data, e.id) for e in whole] == [
        ("message", '{"a":1}', "e-0-1-0"),
        ("skipped", '{"b":2}', "e-0-1-1"),
        ("message", "x\ny", "e-1-2-0"),
    ]
    parser = sse.EventParser()
    bytewise = [e for i in range(len(raw)) for e in parser.feed(raw[i : i + 1])]
    assert bytewise == whole
    assert parser.comments == 1 and parser.last_id == "e-1-2-0"


def test_parser_bounds_what_it_holds() -> None:
    """An endless line or event from a hostile server is an InputError, not unbounded memory."""
    with pytest.raises(InputError, match="line"):
        sse.EventParser(max_line=100).feed(b"data: " + b"x" * 200)
    with pytest.raises(InputError, match="event"):
        sse.EventParser(max_data=100).feed(
            b"data: " + b"x" * 60 + b"\n" + b"data: " + b"x" * 60 + b"\n"
        )


def _dechunked(raw: bytes) -> bytes:
    """The body of a chunked HTTP/1.1 response whose body is ``raw``, as h11 reads it."""
    import h11

    client = h11.Connection(h11.CLIENT)
    client.send(h11.Request(method="GET", target="/", headers=[("Host", "x")]))
    client.receive_data(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + raw)
    body = b""
    while (event := client.next_event()) is not h11.NEED_DATA:
        if isinstance(event, h11.Data):
            body += event.data
    return body


def test_chunked_framing_is_the_same_events_as_http_chunks() -> None:
    """CHUNKED_SSE frames an event as one HTTP/1.1 chunk holding exactly SSE_FRAMING's bytes."""
    head = {"id": "e-0-1-0", "event": "gap"}
    plain = sse.SSE_FRAMING.frame(b'{"a":1}', head)
    framed = sse.CHUNKED_SSE.frame(b'{"a":1}', head)
    assert plain == b'id: e-0-1-0\nevent: gap\ndata: {"a":1}\n\n'
    assert framed == b"%x\r\n" % len(plain) + plain + b"\r\n"
    assert _dechunked(framed) == plain
    assert sse.CHUNKED_SSE.wrap(sse.KEEP_ALIVE) == sse.chunk(sse.KEEP_ALIVE)
    assert sse.CHUNKED_SSE.wrap(b"") == b""  # an empty chunk would end the body
    assert sse.SSE_FRAMING.wrap(sse.KEEP_ALIVE) == sse.KEEP_ALIVE


def test_a_batch_is_framed_once_per_framing_and_shared() -> None:
    """A period's batch gives every stream of a framing the same bytes object: all events in
    one write (one chunk), or each event alone for a stream that is behind; it counts names."""
    frames = sse.frames([(None, {"a": 1}), ("skipped", {"n": 2}), (None, {"a": 3})], "e", 0, 5)
    batch = sse.Batch(frames)
    raw = b"".join(wire for _, wire, _ in frames)
    assert batch.joined(sse.SSE_FRAMING) == raw
    chunked = batch.joined(sse.CHUNKED_SSE)
    assert chunked is batch.joined(sse.CHUNKED_SSE)
    assert chunked.count(b"\r\n") == 2  # one chunk
    assert _dechunked(chunked) == raw
    assert batch.wires(sse.CHUNKED_SSE) is batch.wires(sse.CHUNKED_SSE)
    assert [_dechunked(w) for w in batch.wires(sse.CHUNKED_SSE)] == [w for _, w, _ in frames]
    parsed = sse.EventParser().feed(_dechunked(b"".join(batch.wires(sse.CHUNKED_SSE))))
    assert [(e.event, e.id) for e in parsed] == [
        ("message", "e-0-5-0"),
        ("skipped", "e-0-5-1"),
        ("message", "e-0-5-2"),
    ]
    assert sorted(batch.counts) == [("message", 2), ("skipped", 1)] and len(batch) == 3
