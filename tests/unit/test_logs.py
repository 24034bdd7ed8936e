"""Log lines and request ids: the format setting, the two formatters, and the access middleware's
rules for request ids (the server end to end is in tests/integration/test_logs.py)."""

import asyncio
import json
import logging
import os
import re
import select
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from ledger import logs
from ledger.api.access_log import AccessLog, new_request_id, request_id_of
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


def test_new_request_ids_are_random_uuids_in_their_usual_form() -> None:
    made = [new_request_id() for _ in range(2000)]
    assert len(set(made)) == len(made)
    for request_id in made:
        parsed = uuid.UUID(request_id)
        assert (str(parsed), parsed.version, parsed.variant) == (request_id, 4, uuid.RFC_4122)
    assert {request_id[19] for request_id in made} == set("89ab")  # every variant digit comes up


Written = Callable[[], str]


@pytest.fixture(params=["json", "text"])
def to_a_pipe(request: pytest.FixtureRequest) -> Iterator[tuple[logs.Stderr, logging.Logger, Written]]:
    """The server's handler, set up as dict_config sets it up, writing into a real pipe for a
    logger of its own, outside logging's tree (where pytest's log capture would add handlers);
    and what the pipe holds so far."""
    reading, writing = os.pipe()
    os.set_blocking(reading, False)
    stream = open(writing, "w", buffering=1)  # noqa: SIM115 (closed below); line-buffered, as sys.stderr
    handler = logs.Stderr()
    handler.setStream(stream)
    handler.setFormatter(logs.JsonLines() if request.param == "json" else logs.TextLines())
    handler.addFilter(logs.Context())
    logger = logging.Logger("test.lines", logging.INFO)
    logger.addHandler(handler)

    def written() -> str:
        try:
            return os.read(reading, 1 << 20).decode()
        except BlockingIOError:
            return ""

    yield handler, logger, written
    handler.close()
    stream.close()
    os.close(reading)
    logging.captureWarnings(False)


def messages(text: str) -> list[str]:
    if text.startswith("{"):
        return [json.loads(line)["message"] for line in text.splitlines()]
    return [line.split(": ", 1)[1].split(" [")[0] for line in text.splitlines()]


def without_time(line: str) -> Any:
    if line.startswith("{"):
        parsed = json.loads(line)
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", parsed.pop("time"))
        return parsed
    assert re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} ", line), line
    return line[24:]


def test_a_line_made_without_a_record_is_the_line_a_record_makes(
    to_a_pipe: tuple[logs.Stderr, logging.Logger, Written],
) -> None:
    handler, logger, written = to_a_pipe
    assert logs._sole_stderr(logger, logging.INFO) is handler  # log_fields takes the way without a record
    fields = {"request_id": "r-1", "route": "/v1/check", "method": "GET", "status": 200, "latency_ms": 0.5}
    reset = logs.REQUEST_ID.set("r-2")
    try:
        for given in (fields, {**fields, "request_id": None}):  # the request's own id, or the one answered
            logs.log_fields(logger, logging.INFO, "GET /v1/check 200", given)
            logger.handle(
                logger.makeRecord(
                    logger.name, logging.INFO, __file__, 1, "GET %s %d", ("/v1/check", 200), None, extra=given
                )
            )
    finally:
        logs.REQUEST_ID.reset(reset)
    lines = written().splitlines()
    assert len(lines) == 4
    assert without_time(lines[0]) == without_time(lines[1])
    assert without_time(lines[2]) == without_time(lines[3])
    assert "r-1" in lines[0]
    assert "r-2" in lines[2]


def test_with_another_handler_the_access_line_is_a_record_it_gets_too(
    to_a_pipe: tuple[logs.Stderr, logging.Logger, Written],
) -> None:
    _, logger, written = to_a_pipe
    other = Lines(logs.JsonLines())
    logger.addHandler(other)
    assert logs._sole_stderr(logger, logging.INFO) is None
    logs.log_fields(logger, logging.INFO, "GET /v1/check 200", {"route": "/v1/check", "status": 200})
    logger.removeHandler(other)
    assert messages(written()) == ["GET /v1/check 200"]
    assert [json.loads(line)["route"] for line in other.lines] == ["/v1/check"]


def test_lines_logged_off_an_event_loop_are_written_at_once(
    to_a_pipe: tuple[logs.Stderr, logging.Logger, Written],
) -> None:
    _, logger, written = to_a_pipe
    logger.info("starting")
    assert messages(written()) == ["starting"]


async def test_lines_logged_on_an_event_loop_go_out_together_when_its_iteration_ends(
    to_a_pipe: tuple[logs.Stderr, logging.Logger, Written],
) -> None:
    _, logger, written = to_a_pipe
    for n in range(3):
        logs.log_fields(logger, logging.INFO, f"request {n}", {"status": 200})
    logger.info("and a record")
    assert written() == ""  # waiting for the end of this iteration
    await asyncio.sleep(0)
    assert messages(written()) == ["request 0", "request 1", "request 2", "and a record"]


async def test_a_warning_is_written_at_once_after_the_lines_waiting_before_it(
    to_a_pipe: tuple[logs.Stderr, logging.Logger, Written],
) -> None:
    _, logger, written = to_a_pipe
    logger.info("first")
    logger.warning("then a warning")
    assert messages(written()) == ["first", "then a warning"]


async def test_the_lines_of_an_iteration_are_written_whole_at_most_pipe_buf_bytes_a_write(
    to_a_pipe: tuple[logs.Stderr, logging.Logger, Written],
) -> None:
    handler, logger, written = to_a_pipe
    message = "x" * 200
    assert isinstance(handler.formatter, logs.LineFormatter)
    size = len(handler.formatter.line(time.time(), "INFO", logger.name, message, os.getpid(), {})) + 1
    per_write = select.PIPE_BUF // size
    for _ in range(2 * per_write + 1):
        logger.info(message)
    # Two writes went out as the lines came, each as many whole lines as PIPE_BUF holds; the last
    # line waits for the end of the iteration.
    assert len(written().splitlines()) == 2 * per_write
    await asyncio.sleep(0)
    assert messages(written()) == [message]


def run_python(script: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)], capture_output=True, text=True, timeout=60, check=True
    )


def test_lines_waiting_when_the_process_forks_are_written_once() -> None:
    result = run_python(
        """
        import asyncio, logging, os
        from ledger import logs

        async def main():
            logging.getLogger("test").info("logged before the fork")
            child = os.fork()
            if child == 0:
                logging.shutdown()  # writes whatever the child's handler holds
                os._exit(0)
            os.waitpid(child, 0)

        logs.configure("json")
        asyncio.run(main())
        """
    )
    assert messages(result.stderr) == ["logged before the fork"]


def test_lines_of_the_last_iteration_are_written_when_a_process_exits() -> None:
    # A line logged in the iteration that stops the loop waits for an iteration that never comes.
    # A granian worker is a forked multiprocessing child, which leaves through os._exit, without
    # the exit handlers of logging; the main process leaves the ordinary way.
    result = run_python(
        """
        import asyncio, logging, multiprocessing

        from ledger import logs

        async def last_step(who):
            # Runs in the next iteration, the one where run_until_complete's stop callback also runs.
            asyncio.get_running_loop().call_soon(logging.getLogger("test").info, f"{who}'s last line")

        def worker():
            asyncio.new_event_loop().run_until_complete(last_step("the worker"))

        if __name__ == "__main__":
            logs.configure("json")
            process = multiprocessing.get_context("fork").Process(target=worker)
            process.start()
            process.join()
            asyncio.new_event_loop().run_until_complete(last_step("the main process"))
        """
    )
    assert messages(result.stderr) == ["the worker's last line", "the main process's last line"]
