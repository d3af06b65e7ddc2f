"""The live WebSocket protocol without a server: client text in, events and error codes out."""

from __future__ import annotations

import orjson
import pytest

from livedata.gateway.protocol.live import (
    MAX_FIELDS,
    MAX_MESSAGE,
    RATE_MAX,
    RATE_WINDOW,
    Fatal,
    LiveSession,
    Reply,
    Subscribe,
    check_msg_type,
)


def session() -> LiveSession:
    return LiveSession("vehicle_can", ["speed", "engine_rpm", "gear"])


def init(payload: object, **extra: object) -> str:
    return orjson.dumps({"type": "INIT_FIELD_LIST", "payload": payload, **extra}).decode()


def code_of(event: object) -> str:
    assert isinstance(event, Reply | Fatal), event
    return orjson.loads(event.text)["code"]


def test_a_field_list_subscribes_without_duplicates() -> None:
    """INIT_FIELD_LIST gives the fields in order, once each, no recovery, no rate control."""
    event = session().receive_text(init(["speed", "gear", "speed"]), 0.0)
    assert event == Subscribe(("speed", "gear"), None, None, None)


def test_since_and_rate_control_are_parsed() -> None:
    """since becomes (epoch, seq); maxRate and aggregate become a rate limiter."""
    event = session().receive_text(
        init(["speed"], since={"epoch": "e1", "seq": 41}, maxRate=2, aggregate="minmax"), 0.0
    )
    assert isinstance(event, Subscribe)
    assert event.since == ("e1", 41)
    assert event.limiter is not None
    assert event.limiter.interval == 0.5 and event.limiter.mode == "minmax"


def test_unknown_fields_are_a_warning_and_the_rest_is_kept() -> None:
    """Fields the machine lacks give unknown_fields with the subscription of all asked."""
    event = session().receive_text(init(["speed", "nope"]), 0.0)
    assert isinstance(event, Subscribe) and event.fields == ("speed", "nope")
    assert event.warning is not None
    assert orjson.loads(event.warning)["code"] == "unknown_fields"


@pytest.mark.parametrize(
    ("text", "code"),
    [
        ("{not json", "invalid_json"),
        ('{"type":"HELLO"}', "unknown_type"),
        ("[1,2]", "unknown_type"),
        (init("speed"), "invalid_field_list"),
        (init(["bad name!"]), "invalid_field_list"),
        (init([f"f{i}" for i in range(MAX_FIELDS + 1)]), "too_many_fields"),
        (init(["speed"], since={"epoch": "e", "seq": -1}), "invalid_since"),
        (init(["speed"], since={"epoch": "e", "seq": True}), "invalid_since"),
        (init(["speed"], maxRate=1000), "invalid_rate"),
        (init(["speed"], maxRate="2"), "invalid_rate"),
        (init(["speed"], aggregate="avg"), "invalid_rate"),
        (init(["speed"], maxRate=2, aggregate="median"), "invalid_rate"),
    ],
)
def test_recoverable_errors_reply_and_keep_the_connection(text: str, code: str) -> None:
    """Each bad message gets its error code as a Reply (the connection stays)."""
    event = session().receive_text(text, 0.0)
    assert isinstance(event, Reply) and code_of(event) == code


def test_a_message_too_big_is_fatal_1009() -> None:
    """A text over 64 KiB (counted in UTF-8 bytes) closes with 1009."""
    event = session().receive_text('"' + "é" * (MAX_MESSAGE // 2) + '"', 0.0)
    assert isinstance(event, Fatal) and event.close_code == 1009
    assert code_of(event) == "message_too_big"


def test_binary_messages_are_fatal_1003() -> None:
    """A binary message closes with 1003 (unsupported_data)."""
    event = session().receive_bytes(b"\x00", 0.0)
    assert isinstance(event, Fatal) and event.close_code == 1003


def test_more_than_the_rate_limit_in_the_window_is_fatal_1008() -> None:
    """The 21st message within 10 s closes with 1008; spread out they are fine."""
    spread = session()
    for i in range(3 * RATE_MAX):
        assert not isinstance(
            spread.receive_text(init(["speed"]), i * 1.1 * RATE_WINDOW / RATE_MAX), Fatal
        )
    burst = session()
    events = [burst.receive_text(init(["speed"]), 1.0) for _ in range(RATE_MAX + 1)]
    assert all(isinstance(e, Subscribe) for e in events[:-1])
    assert isinstance(events[-1], Fatal) and events[-1].close_code == 1008
    assert code_of(events[-1]) == "rate_limited"


def test_an_unknown_msg_type_is_not_found_4404() -> None:
    """A msgType that is not a message type closes with 4404; a known one passes."""
    fatal = check_msg_type("nope")
    assert fatal is not None and fatal.close_code == 4404 and fatal.code == "not_found"
    assert check_msg_type("vehicle_can") is None
    assert check_msg_type(None) is not None
