import io
import logging
import random
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from proxy.log import (
    APP_LOGGER,
    DirectWriter,
    JsonFormatter,
    LineSink,
    direct_info_writer,
    milliseconds,
    redact,
    setup_logging,
)


@pytest.fixture(autouse=True)
def _restore_loggers() -> Iterator[None]:
    """setup_logging rewires process-wide loggers; later tests must not log into a sink
    that was stopped here."""
    saved = {
        name: (logger.handlers[:], logger.level, logger.propagate)
        for name in (APP_LOGGER, "aiohttp")
        for logger in (logging.getLogger(name),)
    }
    yield
    for name, (handlers, level, propagate) in saved.items():
        logger = logging.getLogger(name)
        logger.handlers[:] = handlers
        logger.setLevel(level)
        logger.propagate = propagate


@pytest.mark.parametrize(
    "text",
    [
        "Authorization: Bearer sk-CANARY123456789",
        "GET https://generativelanguage.example/v1/models?key=CANARY123456789&alt=sse",
        "headers={'api-key': 'CANARY123456789'}",
        "upstream said: invalid key sk-proj-CANARY123456789",
        '{"x-api-key": "CANARY123456789"}',
    ],
)
def test_redact_masks_secrets(text: str) -> None:
    assert "CANARY123456789" not in redact(text)


def test_formatter_merges_dict_messages_and_redacts_text() -> None:
    formatter = JsonFormatter()
    record = logging.makeLogRecord({"msg": {"event": "request", "status": 200}, "name": "a"})
    assert orjson.loads(formatter.format(record))["status"] == 200
    try:
        raise ValueError("bad url https://x/?key=sk-CANARY1234567")
    except ValueError:
        import sys

        record = logging.makeLogRecord({"msg": "failed", "exc_info": sys.exc_info()})
    line = formatter.format(record)
    assert "CANARY" not in line
    assert orjson.loads(line)["msg"] == "failed"


def test_setup_logging_writes_json_lines_from_a_thread() -> None:
    stream = io.StringIO()
    listener = setup_logging("INFO", stream)
    try:
        logging.getLogger(APP_LOGGER + ".access").info({"event": "request", "n": 1})
        logging.getLogger(APP_LOGGER).debug("hidden")
        deadline = time.monotonic() + 2
        while "request" not in stream.getvalue() and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        listener.stop()
    lines = [orjson.loads(line) for line in stream.getvalue().splitlines()]
    assert [line["event"] for line in lines] == ["request"]


def test_sink_batches_keeps_order_and_flushes_on_stop() -> None:
    stream = io.StringIO()
    sink = LineSink(stream, batch_interval=0.05)
    sink.start()
    for n in range(1000):
        sink.put(f"line {n}")
    sink.stop()
    assert stream.getvalue().splitlines() == [f"line {n}" for n in range(1000)]


def test_sink_is_bounded_and_counts_what_it_drops() -> None:
    stream = io.StringIO()
    sink = LineSink(stream, max_lines=10)  # not started: nothing drains the queue
    for n in range(25):
        sink.put(f"line {n}")
    assert sink.dropped == 15
    sink.start()
    sink.stop()
    assert len(stream.getvalue().splitlines()) == 10


def _lines(stream: io.StringIO, count: int) -> list[dict[str, object]]:
    deadline = time.monotonic() + 2
    while stream.getvalue().count("\n") < count and time.monotonic() < deadline:
        time.sleep(0.01)
    return [orjson.loads(line) for line in stream.getvalue().splitlines()]


def test_direct_writer_writes_the_line_logging_would() -> None:
    stream = io.StringIO()
    sink = setup_logging("INFO", stream)
    access = logging.getLogger(APP_LOGGER + ".access")
    try:
        direct = direct_info_writer(access)
        assert direct is not None
        fields: dict[str, object] = {"event": "request", "status": 200, "path": Path("/x")}
        access.info(fields)
        direct.write({"ts": direct.now(), "level": "info", "logger": direct.logger, **fields})
    finally:
        sink.stop()
    by_logging, direct = _lines(stream, 2)
    assert list(direct) == list(by_logging)  # same keys, same order: ts, level, logger, ...
    assert {**direct, "ts": 0} == {**by_logging, "ts": 0}
    assert direct["path"] == "/x"


def test_direct_writer_steps_aside_for_other_handlers_and_levels() -> None:
    sink = setup_logging("WARNING", io.StringIO())
    access = logging.getLogger(APP_LOGGER + ".access")
    try:
        assert direct_info_writer(access) is None  # INFO is off: the caller checks as before
        logging.getLogger(APP_LOGGER).setLevel(logging.INFO)
        assert direct_info_writer(access) is not None
        extra = logging.NullHandler()
        logging.getLogger(APP_LOGGER).addHandler(extra)  # e.g. a test capturing lines
        assert direct_info_writer(access) is None
    finally:
        logging.getLogger(APP_LOGGER).removeHandler(extra)
        sink.stop()


def test_line_times_round_as_round_does() -> None:
    rng = random.Random(15)
    for _ in range(20_000):
        duration = rng.random() * rng.choice((0.001, 0.1, 10.0, 600.0))
        assert milliseconds(duration) == round(duration * 1000, 3)
    before = round(time.time(), 6)
    ts = DirectWriter.now()
    assert before <= ts <= round(time.time(), 6)
    assert len(repr(ts).partition(".")[2]) <= 6  # no digits past the microsecond
