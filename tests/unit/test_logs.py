"""Log lines and request ids: the format setting, the two formatters, and the access middleware's
rules for request ids (the server end to end is in tests/integration/test_logs.py)."""

import json
import logging
import re
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from ledger import logs
from ledger.api.access_log import AccessLog, request_id_of
from ledger.errors import ConfigError
from ledger.settings import parse


@pytest.mark.parametrize(("value", "expected"), [("", None), ("json", "json"), ("text", "text"), (" JSON ", "json")])
def test_the_log_format_setting(value: str, expected: str | None) -> None:
    assert parse({"LEDGER_LOG_FORMAT": value}).log_format == expected


@pytest.mark.parametrize("value", ["xml", "jsonl", "json,text", "1"])
def test_any_other_log_format_is_a_config_error(value: str) -> None:
    with pytest.raises(ConfigError) as raised:
        parse({"LEDGER_LOG_FORMAT": value})
    assert str(raised.value) == f"LEDGER_LOG_FORMAT={value!r}: expected json or text"


class Lines(logging.Handler):
    """What the server's handler would write, one string a record."""

    def __init__(self, formatter: logging.Formatter) -> None:
        super().__init__()
        self.lines: list[str] = []
        self.setFormatter(formatter)
        self.addFilter(logs.Context())

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@pytest.fixture
def json_lines() -> Iterator[list[str]]:
    handler = Lines(logs.JsonLines())
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    yield handler.lines
    root.removeHandler(handler)
    root.setLevel(level)


def test_a_json_line_is_one_object_with_the_fields(json_lines: list[str]) -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        logging.getLogger("_granian.serve").exception("two\nlines", extra={"status": 500, "latency_ms": 1.5})
    [text] = json_lines
    assert "\n" not in text
    line = json.loads(text)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", line["time"])
    assert (line["level"], line["logger"], line["message"]) == ("error", "granian.serve", "two\nlines")
    assert (line["status"], line["latency_ms"]) == (500, 1.5)
    assert "request_id" not in line  # not inside a request
    assert line["exception"].endswith("ValueError: boom")


def test_a_text_line_ends_with_the_request_fields() -> None:
    handler = Lines(logs.TextLines())
    record = logging.LogRecord("ledger.access", logging.INFO, __file__, 1, "GET %s 200", ("/v1/check",), None)
    record.__dict__.update(request_id="r-1", route="/v1/check", method="GET", status=200, latency_ms=0.5)
    handler.handle(record)
    [line] = handler.lines
    assert line.endswith(
        " INFO ledger.access: GET /v1/check 200 [request_id=r-1 route=/v1/check method=GET status=200 latency_ms=0.5]"
    )


@pytest.mark.parametrize(
    ("headers", "kept"),
    [
        ([(b"x-request-id", b"0b7c3f9e-1f2a-4c1e-9d33-6a0e2b1d9c11")], True),
        ([(b"x-request-id", b"Root=1-5759e988-bd862e3f;Parent=53995c3f")], False),
        ([(b"x-request-id", b"abc def")], False),
        ([(b"x-request-id", b"line\nbreak")], False),
        ([(b"x-request-id", b"x" * 129)], False),
        ([(b"x-request-id", b"")], False),
        ([(b"x-request-id", b"one"), (b"x-request-id", b"two")], False),
        ([], False),
    ],
)
def test_a_request_id_is_the_callers_only_if_sane(headers: list[tuple[bytes, bytes]], kept: bool) -> None:
    made = request_id_of(headers)
    if kept:
        assert made == headers[0][1].decode()
    else:
        assert uuid.UUID(made).version == 4


async def test_lines_logged_while_answering_carry_the_request_id(json_lines: list[str]) -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        scope["path_template"] = "/v1/devices/{device_id:str}/erase"
        logging.getLogger("ledger.test").warning("inside")
        await send({"type": "http.response.start", "status": 201, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/v1/devices/d-1/erase", "headers": [(b"x-request-id", b"r-7")]}
    await AccessLog(app)(scope, None, send)
    assert (b"x-request-id", b"r-7") in sent[0]["headers"]
    inside, access = (json.loads(line) for line in json_lines)
    assert (inside["message"], inside["request_id"]) == ("inside", "r-7")
    assert access["route"] == "/v1/devices/{device_id}/erase"
    assert (access["request_id"], access["method"], access["status"]) == ("r-7", "POST", 201)
    assert logs.REQUEST_ID.get() is None  # and nothing after it


async def test_a_request_that_fails_before_answering_is_logged_as_500(json_lines: list[str]) -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        raise RuntimeError("no answer")

    with pytest.raises(RuntimeError):
        await AccessLog(app)({"type": "http", "method": "GET", "path": "/x", "headers": []}, None, None)
    [access] = (json.loads(line) for line in json_lines)
    assert (access["route"], access["status"]) == ("unmatched", 500)
