"""Progress of a long command on stderr: a bar on a terminal, plain lines anywhere else.

tqdm draws the bar. Off a terminal (a log file, a pipe, CI) no bar is drawn at all: redrawing is
carriage returns and escape sequences, which a log keeps as garbage. There a step of known length
says where it ended in one line, and a step of unknown length says every `every` items how far it
has come, so that a long run shows it is alive.
"""

import sys
from types import TracebackType
from typing import Any, TextIO

from tqdm import tqdm

__all__ = ["Progress", "Steps"]

# On a terminal the bar is handed a new count at most every this many items: a bar update per
# entry would cost more than verifying some entries does.
REDRAW_EVERY = 1024
KNOWN_TOTAL = "{l_bar}{bar}| {n:,} of {total:,} [{elapsed}<{remaining}, {rate_fmt}]"
UNKNOWN_TOTAL = "{desc}: {n:,} [{elapsed}, {rate_fmt}]"


class Progress:
    """One step: `update(done)` as it goes, `close()` when it ends (or use it as a context manager)."""

    def __init__(self, what: str, total: int | None = None, *, every: int | None = None, stream: TextIO | None = None):
        self.what = what
        self.total = total
        self.every = every
        self.stream = stream or sys.stderr
        self.done = 0
        self._bar: tqdm[Any] | None = None
        if self.stream.isatty():
            self._bar = tqdm(
                total=total,
                desc=what,
                unit=" entries",
                unit_scale=True,  # for the rate; the counts are shown whole, with thousands separators
                bar_format=KNOWN_TOTAL if total is not None else UNKNOWN_TOTAL,
                file=self.stream,
                dynamic_ncols=True,
            )

    def update(self, done: int) -> None:
        self.done = done
        if self._bar is not None:
            if done - self._bar.n >= REDRAW_EVERY or done == self.total:
                self._bar.update(done - self._bar.n)
        elif self.every and done % self.every == 0:
            self._line()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.update(self.done - self._bar.n)
            self._bar.close()
            self._bar = None
        elif self.total is not None:
            self._line()

    def _line(self) -> None:
        of = "" if self.total is None else f" of {self.total:,}"
        self.stream.write(f"{self.what}: {self.done:,}{of}\n")
        self.stream.flush()

    def __enter__(self) -> "Progress":
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()


class Steps:
    """Named steps one after another (an export's files), each with its own Progress; callable as
    `(what, done, total)`, the shape `ledger.export.write_directory` reports in."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream
        self.current: Progress | None = None

    def __call__(self, what: str, done: int, total: int) -> None:
        if self.current is None or self.current.what != what:
            self.close()
            self.current = Progress(what, total, stream=self.stream)
        self.current.update(done)

    def close(self) -> None:
        if self.current is not None:
            self.current.close()
            self.current = None

    def __enter__(self) -> "Steps":
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()
