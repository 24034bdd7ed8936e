"""A Server-Sent Events parser as the HTML standard defines it (the parts the ledger uses), for tests."""

import json
from typing import Any, NamedTuple


class Message(NamedTuple):
    event: str
    id: str | None
    data: Any  # the data decoded as JSON


def parse_block(block: str) -> tuple[Message | None, int | None]:
    """One block of lines (up to a blank line): its message (None if it has no data) and its retry."""
    event, id_, data, retry = "message", None, [], None
    for line in block.split("\n"):
        if not line or line.startswith(":"):
            continue
        field, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if field == "event":
            event = value
        elif field == "id":
            id_ = value
        elif field == "data":
            data.append(value)
        elif field == "retry":
            retry = int(value)
    message = Message(event, id_, json.loads("\n".join(data))) if data else None
    return message, retry


def parse(text: str) -> list[Message]:
    """Every complete message of a stream's text."""
    blocks = text.split("\n\n")[:-1]
    return [m for m in (parse_block(b)[0] for b in blocks) if m is not None]
