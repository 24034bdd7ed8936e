"""The event-stream framing, read as the WHATWG standard says, split at any byte boundary."""

import itertools

from hypothesis import given
from hypothesis import strategies as st

from ledger.client.sse import EventParser, ServerEvent

STREAM = (
    b": a comment keeps the connection open\r\n"
    b"event: decision\r\n"
    b"id: ct1.5\r\n"
    b'data: {"type":"decision"}\r\n'
    b"\r\n"
    b"retry: 1500\n"
    b"data:first\n"
    b"data: second\n"
    b"data:  two spaces keep one\n"
    b"\n"
    b"id: ct1.7\r"
    b"event: heartbeat\r"
    b"data: \xe2\x80\xa8 inside\r"
    b"\r"
    b"id\n"
    b"data\n"
    b"\n"
    b"event: no-data\n"
    b"\n"
)
EXPECTED = [
    ServerEvent("decision", '{"type":"decision"}', "ct1.5"),
    ServerEvent("message", "first\nsecond\n two spaces keep one", "ct1.5"),
    ServerEvent("heartbeat", "\u2028 inside", "ct1.7"),
    ServerEvent("message", "", ""),
]


def test_a_stream_parses_into_its_events() -> None:
    parser = EventParser()
    assert parser.feed_bytes(STREAM) == EXPECTED
    assert parser.retry_ms == 1500


@given(st.lists(st.integers(min_value=0, max_value=len(STREAM)), max_size=12))
def test_any_split_of_the_bytes_gives_the_same_events(cuts: list[int]) -> None:
    """Chunks end anywhere: inside a line, between CR and LF, inside a UTF-8 character."""
    parser = EventParser()
    bounds = [0, *sorted(cuts), len(STREAM)]
    events = []
    for start, end in itertools.pairwise(bounds):
        events.extend(parser.feed_bytes(STREAM[start:end]))
    assert events == EXPECTED


def test_an_id_with_nul_is_ignored_and_a_bom_is_dropped() -> None:
    parser = EventParser()
    events = parser.feed_bytes(b"\xef\xbb\xbfid: ct1.1\ndata: a\n\nid: bad\x00\ndata: b\n\n")
    assert [e.id for e in events] == ["ct1.1", "ct1.1"]


def test_an_event_is_dispatched_only_at_its_blank_line() -> None:
    parser = EventParser()
    assert parser.feed_bytes(b"data: x\n") == []
    assert parser.feed_bytes(b"\n") == [ServerEvent("message", "x", None)]


def test_a_line_without_end_is_bounded() -> None:
    parser = EventParser()
    try:
        parser.feed_bytes(b"data: " + b"x" * (1 << 20))
    except ValueError:
        return
    raise AssertionError("an endless line must not be buffered for ever")
