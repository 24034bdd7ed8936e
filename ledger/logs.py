"""The process's log lines: where they go (stderr) and how they look (JSON or text).

One handler on the root logger takes every logger's records: the ledger's own, litestar's,
asyncpg's, httpx's, Python's warnings, and granian's, whose main process and workers apply the
same configuration (`dict_config()` is what `ledger serve` hands to granian as its dictConfig).

`json`: one object a line, `{"time", "level", "logger", "message", "pid", ...}`, plus
`request_id`, `route`, `method`, `status` and `latency_ms` on the lines a request causes (see
ledger.api.access_log), and `exception` with a traceback. `text`: the same fields after the
human-readable line. What goes into a message is the caller's care: no logger here is handed a
device_id, a token, a salt, a secret or a query string (tests/integration/test_logs.py scans for them).

The access line is logged on every request, so it is made cheaply (`log_fields`: no LogRecord
when this handler alone would take it) and written cheaply (`Stderr`: one write per event-loop
iteration), through the one formatter every other line goes through.
"""

import asyncio
import contextlib
import contextvars
import logging
import logging.config
import os
import select
import sys
import threading
import time
import weakref
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, TextIO

import msgspec

from ledger.core.entry import format_time
from ledger.settings import LogFormat

__all__ = ["REQUEST_FIELDS", "REQUEST_ID", "configure", "default_format", "dict_config", "log_fields"]

# The request being answered by the current task, for every line logged while answering it.
REQUEST_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar("ledger_request_id", default=None)
# Fields a record may carry (through `extra=`), in the order they are written.
REQUEST_FIELDS = ("request_id", "route", "method", "status", "latency_ms")
# Loggers whose INFO lines would name what must not be logged: httpx logs every request with its
# URL, and a webhook receiver's URL may hold a secret in its query string.
QUIET = ("httpx", "httpcore")
# granian logs as "_granian" and "_granian.serve" (its Rust core); its public name reads better.
PRIVATE_PREFIX, PUBLIC_PREFIX = "_granian", "granian"

# str() for whatever else a caller put in `extra=`: a line is never lost to its encoding.
_encode = msgspec.json.Encoder(enc_hook=str).encode
_configured: LogFormat | None = None
# The last whole second written and its text: every line of that second reuses it.
_second: tuple[int, str] = (0, format_time(datetime.fromtimestamp(0, UTC))[:19])
# Every Stderr handler of this process, to write their waiting lines before it forks or exits.
_handlers: "weakref.WeakSet[Stderr]" = weakref.WeakSet()
_pid = os.getpid()  # as LogRecord.process, without a system call a line


def default_format() -> LogFormat:
    """Text for a person at a terminal, JSON for whatever collects the output otherwise."""
    return "text" if sys.stderr.isatty() else "json"


def dict_config(log_format: LogFormat | None = None) -> dict[str, Any]:
    """A `logging.config.dictConfig` for this process and its workers: the format given, else the
    one `configure` set up, else the default."""
    chosen = log_format or _configured or default_format()
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"context": {"()": f"{__name__}.Context"}},
        "formatters": {"lines": {"()": f"{__name__}.{'JsonLines' if chosen == 'json' else 'TextLines'}"}},
        "handlers": {"stderr": {"()": f"{__name__}.Stderr", "formatter": "lines", "filters": ["context"]}},
        "root": {"level": "INFO", "handlers": ["stderr"]},
        "loggers": {
            # granian's own configuration gives these handlers on stdout; here they pass to the root.
            "_granian": {"level": "INFO", "handlers": [], "propagate": True},
            "granian.access": {"level": "INFO", "handlers": [], "propagate": True},
            **{name: {"level": "WARNING"} for name in QUIET},
        },
    }


def configure(log_format: LogFormat | None = None) -> LogFormat:
    """Send this process's records to stderr in `log_format` (None: the default); returns it."""
    global _configured
    _configured = log_format or default_format()
    logging.config.dictConfig(dict_config(_configured))
    return _configured


def log_fields(logger: logging.Logger, level: int, message: str, fields: Mapping[str, Any]) -> None:
    """`logger.log(level, message, extra=fields)`, for a line logged on every request.

    When the one Stderr handler would take the record and nothing else would see it (no other
    handler on the way up, no filter but Context: the configuration above), the handler writes
    the line itself, through its formatter, without the LogRecord, whose making and handling
    cost twice the line (benchmarks/access_log.py). Otherwise the record is made and handled as
    logging always does, so that another handler (a test's, say) gets it."""
    if not logger.isEnabledFor(level):
        return
    handler = _sole_stderr(logger, level)
    if handler is None:
        logger.handle(logger.makeRecord(logger.name, level, "(unknown file)", 0, message, (), None, extra=dict(fields)))
    else:
        handler.write_fields(level, logger.name, message, fields)


def _sole_stderr(logger: logging.Logger, level: int) -> "Stderr | None":
    """The handler that alone would see `logger`'s records at `level`, if it is a plain Stderr.
    The walk is Logger.callHandlers'; a logger's own filters apply, its parents' do not."""
    if logger.filters:
        return None
    found = None
    node: logging.Logger | None = logger
    while node is not None:
        for handler in node.handlers:
            if found is not None or type(handler) is not Stderr:
                return None
            found = handler
        node = node.parent if node.propagate else None
    if found is None or level < found.level or not found.plain():
        return None
    return found


def _write_all_waiting() -> None:
    """Write the lines still waiting for the end of their event-loop iteration (see Stderr)."""
    for handler in list(_handlers):
        with contextlib.suppress(OSError, ValueError):  # stderr closed: as logging.shutdown, say nothing
            handler.flush()


def public_name(logger: str) -> str:
    return PUBLIC_PREFIX + logger[len(PRIVATE_PREFIX) :] if logger.startswith(PRIVATE_PREFIX) else logger


class Stderr(logging.StreamHandler[TextIO]):
    """The one handler: every line whole, in the order logged.

    An INFO or DEBUG line logged on a thread that runs an event loop (the access line, above
    all) waits for the end of that loop's iteration: the lines of one iteration go out together,
    in writes of whole lines of at most PIPE_BUF bytes, which a pipe neither splits nor mixes with
    another process's writes. Under load one iteration answers many requests, and a write per line
    would add half again to what the line costs (benchmarks/access_log.py). Every other line (a
    warning or an error, or any line logged off an event loop, as at startup) is written at once,
    after the lines waiting before it.

    Waiting lines are also written before the process forks and when it exits, a granian worker
    too; a process killed outright (SIGKILL, a crash) loses those of the iteration it was in that
    still wait, PIPE_BUF bytes at most (or one longer line).

    It also routes Python's warnings into logging: granian's workers set up logging from the
    dictConfig alone, so this is the one place every process passes through."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)
        self._waiting: list[str] = []
        self._waiting_bytes = 0
        self._loops: set[asyncio.AbstractEventLoop] = set()  # those that will write them
        _handlers.add(self)
        logging.captureWarnings(True)

    def plain(self) -> bool:
        """Set up as dict_config sets it up: Context its one filter, one of ours its formatter."""
        return len(self.filters) == 1 and type(self.filters[0]) is Context and isinstance(self.formatter, LineFormatter)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._write(self.format(record), record.levelno)  # Handler.handle holds the lock
        except RecursionError:
            raise
        except Exception:
            self.handleError(record)

    def write_fields(self, level: int, logger: str, message: str, fields: Mapping[str, Any]) -> None:
        """What handle() does with the record of log_fields, which would pass Context alone."""
        if fields.get("request_id") is None:
            fields = {**fields, "request_id": REQUEST_ID.get()}
        assert isinstance(self.formatter, LineFormatter)  # plain()
        line = self.formatter.line(time.time(), logging.getLevelName(level), public_name(logger), message, _pid, fields)
        self.acquire()
        try:
            self._write(line, level)
        except Exception:
            self.handleError(logging.makeLogRecord({"name": logger, "msg": message}))
        finally:
            self.release()

    def flush(self) -> None:
        self.acquire()
        try:
            self._write_waiting()
        finally:
            self.release()
        super().flush()

    def close(self) -> None:
        self.flush()
        _handlers.discard(self)
        super().close()

    def _write(self, line: str, level: int) -> None:
        line += "\n"
        size = len(line) if line.isascii() else len(line.encode(errors="backslashreplace"))
        if self._waiting_bytes + size > select.PIPE_BUF:
            self._write_waiting()
        self._waiting.append(line)
        self._waiting_bytes += size
        loop = asyncio._get_running_loop() if level < logging.WARNING else None
        if loop is None:
            self._write_waiting()
        elif loop not in self._loops:
            loop.call_soon(self._end_of_iteration, loop)
            self._loops.add(loop)

    def _end_of_iteration(self, loop: asyncio.AbstractEventLoop) -> None:
        self.acquire()
        try:
            self._loops.discard(loop)
            self._write_waiting()
        except Exception:
            self.handleError(logging.makeLogRecord({"msg": "the lines of an event-loop iteration"}))
        finally:
            self.release()

    def _write_waiting(self) -> None:
        if not self._waiting:
            return
        text = "".join(self._waiting)
        self._waiting.clear()
        self._waiting_bytes = 0
        self.stream.write(text)
        self.stream.flush()

    def _forget(self) -> None:
        """In a child just forked: its parent wrote what was waiting, and the loops are not its own."""
        self._waiting.clear()
        self._waiting_bytes = 0
        self._loops.clear()


def _after_fork_in_child() -> None:
    global _pid
    _pid = os.getpid()
    for handler in list(_handlers):
        handler._forget()


os.register_at_fork(before=_write_all_waiting, after_in_child=_after_fork_in_child)
# At exit: logging.shutdown flushes every handler, but a forked multiprocessing child (a granian
# worker) leaves through os._exit, after threading._shutdown() runs what is registered here (as
# concurrent.futures does; CPython-internal, hence the guard).
if register_before_threads_end := getattr(threading, "_register_atexit", None):
    register_before_threads_end(_write_all_waiting)


class Context(logging.Filter):
    """Adds to each record what its caller did not pass: the id of the request being answered,
    and a logger's public name. (Stderr.write_fields does the same for a line without a record.)"""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "request_id", None) is None:
            record.request_id = REQUEST_ID.get()
        record.name = public_name(record.name)
        return True


class LineFormatter(logging.Formatter):
    """A line made from the values a record holds, so that a line without a record
    (Stderr.write_fields) is made by the same code."""

    def line(
        self,
        created: float,
        level: str,
        logger: str,
        message: str,
        pid: int | None,
        fields: Mapping[str, Any],
        exception: str | None = None,
        stack: str | None = None,
    ) -> str:
        raise NotImplementedError

    def format(self, record: logging.LogRecord) -> str:
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        return self.line(
            record.created,
            record.levelname,
            record.name,
            record.getMessage(),
            record.process,
            vars(record),
            record.exc_text or None,
            self.formatStack(record.stack_info) if record.stack_info else None,
        )


class JsonLines(LineFormatter):
    def line(
        self,
        created: float,
        level: str,
        logger: str,
        message: str,
        pid: int | None,
        fields: Mapping[str, Any],
        exception: str | None = None,
        stack: str | None = None,
    ) -> str:
        line: dict[str, Any] = {
            "time": utc_time(created),
            "level": level.lower(),
            "logger": logger,
            "message": message,
            "pid": pid,
        }
        for field in REQUEST_FIELDS:
            value = fields.get(field)
            if value is not None:
                line[field] = value
        if exception:
            line["exception"] = exception
        if stack:
            line["stack"] = stack
        return _encode(line).decode()


class TextLines(LineFormatter):
    """The human-readable line (logging's `%(asctime)s %(levelname)s %(name)s: %(message)s`), then
    the request's fields as `name=value`, then the traceback if any."""

    def __init__(self) -> None:
        super().__init__()
        self._second: tuple[int, str] = (-1, "")

    def line(
        self,
        created: float,
        level: str,
        logger: str,
        message: str,
        pid: int | None,
        fields: Mapping[str, Any],
        exception: str | None = None,
        stack: str | None = None,
    ) -> str:
        text = f"{self._local_time(created)} {level} {logger}: {message}"
        pairs = [f"{field}={value}" for field in REQUEST_FIELDS if (value := fields.get(field)) is not None]
        if pairs:
            text = f"{text} [{' '.join(pairs)}]"
        return "\n".join(part for part in (text, exception, stack) if part)

    def _local_time(self, created: float) -> str:
        """As logging.Formatter.formatTime writes it; the date and time of day once a second."""
        second, text = self._second
        if second != int(created):
            second = int(created)
            text = time.strftime(self.default_time_format, self.converter(second))
            self._second = (second, text)
        return f"{text},{int((created - second) * 1000):03d}"


def utc_time(created: float) -> str:
    """`created` (seconds since the epoch) as ledger.core.entry.format_time writes it: the date and
    time of day are made once a second, the microseconds once a line."""
    global _second
    second, micros = divmod(round(created * 1_000_000), 1_000_000)
    last, text = _second
    if last != second:
        text = format_time(datetime.fromtimestamp(second, UTC))[:19]
        _second = (second, text)
    return f"{text}.{micros:06d}Z"
