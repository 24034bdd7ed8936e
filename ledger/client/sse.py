"""Server-Sent Events framing (the `text/event-stream` format of the WHATWG HTML standard, 9.2),
read one line at a time. Pure: no I/O."""

import re

import msgspec

__all__ = ["EventParser", "ServerEvent"]

# Only these end a line in an event stream; str.splitlines (and so httpx's iter_lines) also
# splits at U+2028, U+0085 and others that JSON data may hold.
MAX_LINE = 1 << 20
_LINE_END = re.compile(rb"\r\n|\r|\n")


class ServerEvent(msgspec.Struct, frozen=True, gc=False):
    """One dispatched event. `id` is the last event ID in force when it was dispatched (ids
    persist until an event sets another), as a client resumes from it."""

    event: str
    data: str
    id: str | None


class EventParser:
    """Feed it the stream's bytes as they come (`feed_bytes`), or its lines without their line
    ends (`feed`); it hands back each event when the blank line that ends it arrives.

    As the standard says: a line starting with ':' is a comment (servers send them to keep a
    connection alive); `field: value` loses one space after the colon; a line without a colon is
    a field with an empty value; several `data` lines join with '\\n'; an `id` containing NUL is
    ignored; `retry` sets the reconnection delay if it is all digits; unknown fields are ignored;
    an event with no data lines is not dispatched (its id still counts)."""

    def __init__(self) -> None:
        self.last_id: str | None = None
        self.retry_ms: int | None = None
        self._event = ""
        self._data: list[str] = []
        self._pending = b""
        self._at_start = True

    def feed_bytes(self, chunk: bytes) -> list[ServerEvent]:
        """The events completed by this chunk of the stream (UTF-8, any line ends)."""
        buffer = self._pending + chunk
        if self._at_start and len(buffer) >= 3:
            self._at_start = False
            buffer = buffer.removeprefix(b"\xef\xbb\xbf")
        events = []
        start = 0
        for end in _LINE_END.finditer(buffer):
            if end.group() == b"\r" and end.end() == len(buffer):
                break  # a CR at the very end may be the first half of a CRLF
            event = self.feed(buffer[start : end.start()].decode("utf-8", "replace"))
            if event is not None:
                events.append(event)
            start = end.end()
        self._pending = buffer[start:]
        if len(self._pending) > MAX_LINE:
            raise ValueError(f"an event stream line longer than {MAX_LINE} bytes")
        return events

    def feed(self, line: str) -> ServerEvent | None:
        if not line:
            return self._dispatch()
        if line[0] == ":":
            return None
        field, colon, value = line.partition(":")
        if colon and value[:1] == " ":
            value = value[1:]
        if field == "data":
            self._data.append(value)
        elif field == "event":
            self._event = value
        elif field == "id":
            if "\0" not in value:
                self.last_id = value
        elif field == "retry" and value.isascii() and value.isdigit():
            self.retry_ms = int(value)
        return None

    def _dispatch(self) -> ServerEvent | None:
        data, event = self._data, self._event
        self._data, self._event = [], ""
        if not data:
            return None
        return ServerEvent(event or "message", "\n".join(data), self.last_id)
