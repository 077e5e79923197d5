"""JSON log lines, written off the event loop, with one redaction layer for every sink.

Records are formatted on the loop (cheap, orjson) and written in batches by a writer thread
(``LineSink``) so a slow stderr or disk never blocks a request. Every free-text field passes through
``redact`` so an exception that quotes a URL with ``?key=`` or an ``Authorization`` header
cannot leak a secret.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import re
import sys
import threading
import time
from collections.abc import Callable
from typing import IO, Any

import orjson

ACCESS_LOGGER = "promptproxy.access"
APP_LOGGER = "promptproxy"

_SECRET_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._~+/=-]+"), r"\1[REDACTED]"),
    (re.compile(r"\bsk-[A-Za-z0-9_-]{6,}"), "sk-[REDACTED]"),
    (re.compile(r"(?i)([?&](?:api[-_]?key|key|token|access_token)=)[^&\s\"']+"), r"\1[REDACTED]"),
    (
        re.compile(r"(?i)((?:authorization|api-key|x-api-key)[\"']?\s*[:=]\s*[\"']?)[^\s\"',}]+"),
        r"\1[REDACTED]",
    ),
)


def redact(text: str) -> str:
    for pattern, replacement in _SECRET_PATTERNS:
        text = pattern.sub(replacement, text)
    return text


def milliseconds(seconds: float) -> float:
    """A duration in milliseconds to the microsecond: ``round(seconds * 1000, 3)`` (but a
    billionth of a second from a half) at a third of its cost, which a line per request
    pays."""
    return int(seconds * 1e6 + 0.5) / 1e3


class JsonFormatter(logging.Formatter):
    """One JSON object per line. A record whose ``msg`` is a dict is merged in as fields."""

    def format(self, record: logging.LogRecord) -> str:
        fields: dict[str, Any] = {
            "ts": round(record.created, 6),
            "level": record.levelname.lower(),
            "logger": record.name,
        }
        if isinstance(record.msg, dict):
            fields.update(record.msg)
        else:
            fields["msg"] = redact(record.getMessage())
        if record.exc_info:
            fields["exc"] = redact(self.formatException(record.exc_info))
        return orjson.dumps(fields, default=str).decode()


class LineSink:
    """Hands finished log lines to a writer thread that writes them in batches.

    While lines keep coming, nothing a producer does wakes the writer: a producer appends to a
    deque (no lock: deque appends and pops are atomic), and the writer wakes every
    ``batch_interval`` on its own, takes what is there and writes it with one call. Waking the
    writer per line cost more CPU than the proxying itself: at a few hundred lines a second
    (streams) every line found the writer asleep, and each wake-up was two context switches
    and a GIL hand-off on the event loop's core. Past ``max_lines`` waiting lines, lines are
    dropped and counted, never blocking.

    After ``idle_after`` seconds without a line the writer sleeps until one comes, so an idle
    process pays no wake-ups (a turn every ``batch_interval`` cost about 1 ms of CPU a second,
    measured). The first line after a quiet spell wakes it and is written at once, then the
    writer batches again. Not sleeping at the first empty turn keeps a trickle of lines (ten
    or twenty a second) from waking the writer per line, which cost more than the turns it
    saved, measured: a producer wakes it at most once per ``idle_after``. A crash loses at most
    ``batch_interval`` of lines.
    """

    def __init__(
        self,
        stream: IO[str],
        max_lines: int = 100_000,
        batch_interval: float = 0.05,
        idle_after: float = 0.5,
    ) -> None:
        self._stream = stream
        self._lines: collections.deque[str] = collections.deque()
        self._stopping = False
        self._max_lines = max_lines
        self._interval = batch_interval
        self._quiet_turns = max(1, round(idle_after / batch_interval)) if batch_interval else 1
        # Held until a producer or stop() wakes the idle writer: a lock used as a binary
        # semaphore, because blocking on one allocates nothing (see _run).
        self._wake = threading.Lock()
        self._wake.acquire()
        self._asleep = False
        self._thread = threading.Thread(target=self._run, name="promptproxy-log", daemon=True)
        self.dropped = 0

    def put(self, line: str) -> None:
        if len(self._lines) >= self._max_lines:
            self.dropped += 1
            return
        self._lines.append(line)
        # Append before reading the flag, which the writer sets before its last look at the
        # deque: one of the two sees the other, so no line waits on a writer that sleeps on.
        if self._asleep:
            self._asleep = False
            self._release()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Write what is queued, then end the writer thread (at once if it sleeps, else within
        ``batch_interval``)."""
        self._stopping = True
        self._release()
        self._thread.join(timeout=5)

    def _release(self) -> None:
        # Released already (a racing producer, or stop): the writer wakes once either way.
        with contextlib.suppress(RuntimeError):
            self._wake.release()

    def _run(self) -> None:
        # A plain sleep while busy and a held lock while idle, not an Event or a Condition:
        # waiting on one allocates a lock each time, and the writer should allocate nothing
        # between lines (tests measure heaps with it running).
        lines = self._lines
        quiet_turns = self._quiet_turns
        empty_turns = quiet_turns  # nothing to write yet: sleep until the first line
        while True:
            stopping = self._stopping
            if stopping:
                pass
            elif empty_turns < quiet_turns:
                time.sleep(self._interval)
            else:
                self._asleep = True
                # Looked at again once the flag is up: a line put since the last turn found the
                # flag down and woke nobody.
                if not lines and not self._stopping:
                    self._wake.acquire()
                # A producer that saw the flag up may still release: one spare turn, later.
                self._asleep = False
            if not lines:
                if empty_turns < quiet_turns:
                    empty_turns += 1
            else:
                empty_turns = 0
                batch = [lines.popleft() for _ in range(len(lines))]
                try:
                    self._stream.write("\n".join(batch) + "\n")
                    self._stream.flush()
                except (OSError, ValueError):
                    pass  # nowhere left to report a broken log stream
            if stopping:
                return


class _SinkHandler(logging.Handler):
    def __init__(self, sink: LineSink) -> None:
        super().__init__()
        self.sink = sink

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.sink.put(self.format(record))
        except Exception:
            self.handleError(record)


#: The first keys of every line, in order, as ``JsonFormatter`` writes them.
LINE_HEAD = ("ts", "level", "logger")


class DirectWriter:
    """Puts a whole line into the sink, as ``logger.info(fields)`` would have written it,
    without a ``LogRecord``, the handler's lock, the formatter's calls or a merge of the
    caller's fields into a new dict: on a path that logs every request that was most of the
    access log's cost, measured. The caller builds the line with ``LINE_HEAD`` first
    (``now()``, ``"info"``, ``logger``), then its fields."""

    __slots__ = ("_dumps", "_put", "logger")

    def __init__(self, put: Callable[[str], None], logger: str) -> None:
        self._put = put
        self._dumps = orjson.dumps
        self.logger = logger

    @staticmethod
    def now() -> float:
        """The ``ts`` of a line written now: ``round(time.time(), 6)`` at a third of its
        cost, from the clock's integer nanoseconds."""
        return (time.time_ns() + 500) // 1000 / 1e6

    def write(self, line: dict[str, object]) -> None:
        self._put(self._dumps(line, default=str).decode())


def direct_info_writer(logger: logging.Logger) -> DirectWriter | None:
    """A ``DirectWriter`` for ``logger``'s INFO lines, or None when ``logger`` does not log
    INFO to a ``setup_logging`` sink alone (a test's capture, another handler, a filter):
    the caller then logs as usual. Decided once, when the caller is built (``setup_logging``
    runs before anything logs).
    """
    if not logger.isEnabledFor(logging.INFO):
        return None
    owner: logging.Logger | None = logger
    while owner is not None and not owner.handlers:
        owner = owner.parent if owner.propagate else None
    if owner is None or logger.filters or owner.filters or len(owner.handlers) != 1:
        return None
    handler = owner.handlers[0]
    if (
        type(handler) is not _SinkHandler
        or type(handler.formatter) is not JsonFormatter
        or handler.filters
        or handler.level > logging.INFO
    ):
        return None
    return DirectWriter(handler.sink.put, logger.name)


def setup_logging(level: str, stream: IO[str] | None = None) -> LineSink:
    """Route the app's loggers to JSON lines on ``stream``; the caller stops the sink."""
    sink = LineSink(stream or sys.stderr)
    handler = _SinkHandler(sink)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger(APP_LOGGER)
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False
    aio = logging.getLogger("aiohttp")
    aio.handlers[:] = [handler]
    aio.setLevel(logging.WARNING)
    aio.propagate = False
    sink.start()
    return sink
