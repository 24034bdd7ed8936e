"""The process's log lines: where they go (stderr) and how they look (JSON or text).

One handler on the root logger takes every logger's records: the ledger's own, litestar's,
asyncpg's, httpx's, Python's warnings, and granian's, whose main process and workers apply the
same configuration (`dict_config()` is what `ledger serve` hands to granian as its dictConfig).

`json`: one object a line, `{"time", "level", "logger", "message", "pid", ...}`, plus
`request_id`, `route`, `method`, `status` and `latency_ms` on the lines a request causes (see
ledger.api.access_log), and `exception` with a traceback. `text`: the same fields after the
human-readable line. What goes into a message is the caller's care: no logger here is handed a
device_id, a token, a salt, a secret or a query string (tests/integration/test_logs.py scans for them).
"""

import contextvars
import logging
import logging.config
import sys
from datetime import UTC, datetime
from typing import Any, TextIO

import msgspec

from ledger.core.entry import format_time
from ledger.settings import LogFormat

__all__ = ["REQUEST_FIELDS", "REQUEST_ID", "configure", "default_format", "dict_config"]

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


class Stderr(logging.StreamHandler[TextIO]):
    """The one handler. It also routes Python's warnings into logging: granian's workers set up
    logging from the dictConfig alone, so this is the one place every process passes through."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)
        logging.captureWarnings(True)


class Context(logging.Filter):
    """Adds to each record what its caller did not pass: the id of the request being answered,
    and a logger's public name."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "request_id", None) is None:
            record.request_id = REQUEST_ID.get()
        if record.name.startswith(PRIVATE_PREFIX):
            record.name = PUBLIC_PREFIX + record.name[len(PRIVATE_PREFIX) :]
        return True


class JsonLines(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": format_time(datetime.fromtimestamp(record.created, UTC)),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            "pid": record.process,
        }
        for field in REQUEST_FIELDS:
            value = getattr(record, field, None)
            if value is not None:
                line[field] = value
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        return _encode(line).decode()


class TextLines(logging.Formatter):
    """The human-readable line, then the request's fields as `name=value`."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:
        text = super().formatMessage(record)
        fields = [f"{field}={value}" for field in REQUEST_FIELDS if (value := getattr(record, field, None)) is not None]
        return f"{text} [{' '.join(fields)}]" if fields else text
