import collections
import io
import logging
import random
import threading
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


def _written(stream: io.StringIO, count: int, within: float) -> bool:
    """Whether ``stream`` holds ``count`` lines, waiting up to ``within`` seconds."""
    deadline = time.monotonic() + within
    while stream.getvalue().count("\n") < count:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.001)
    return True


def _switches(thread: threading.Thread) -> int:
    """How often ``thread`` has left the CPU: a writer that wakes and sleeps again counts one."""
    status = Path(f"/proc/self/task/{thread.native_id}/status").read_text()
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    return int(fields["voluntary_ctxt_switches"]) + int(fields["nonvoluntary_ctxt_switches"])


linux_only = pytest.mark.skipif(
    not Path("/proc/self/task").is_dir(), reason="counts a thread's context switches in /proc"
)


def test_a_line_after_a_quiet_spell_is_written_at_once_not_at_the_next_batch() -> None:
    stream = io.StringIO()
    sink = LineSink(stream, batch_interval=0.5, idle_after=0.5)
    sink.start()
    try:
        sink.put("first")
        assert _written(stream, 1, within=2)
        time.sleep(1.0)  # a batch turn found nothing: the writer sleeps until a line comes
        sink.put("second")
        # On its beat the writer would take up to batch_interval (0.5 s); asleep, it is woken.
        assert _written(stream, 2, within=0.25)
    finally:
        sink.stop()
    assert stream.getvalue().splitlines() == ["first", "second"]


@linux_only
def test_an_idle_writer_does_not_wake() -> None:
    sink = LineSink(io.StringIO(), batch_interval=0.01, idle_after=0.05)
    sink.start()
    try:
        sink.put("line")
        time.sleep(0.3)  # written, then idle_after of empty turns
        before = _switches(sink._thread)
        time.sleep(0.5)  # on its beat the writer would wake 50 times
        woken = _switches(sink._thread) - before
    finally:
        sink.stop()
    assert woken <= 2


@linux_only
def test_a_busy_writer_is_not_woken_per_line() -> None:
    sink = LineSink(io.StringIO(), batch_interval=0.05)
    sink.start()
    try:
        sink.put("first")
        time.sleep(0.1)
        before = _switches(sink._thread)
        for n in range(200):  # 400 lines a second for half a second
            sink.put(f"line {n}")
            time.sleep(0.0025)
        woken = _switches(sink._thread) - before
    finally:
        sink.stop()
    assert woken < 50  # a batch every 50 ms is about 10 wake-ups; one per line would be 200


class _JitteryDeque(collections.deque[str]):
    """A deque that gives the GIL away for a random moment after each look at its length and
    before each append: the window between a thread's look at the deque and its next step grows
    from a few bytecodes to up to 200 µs, so a race that needs a thread switch there is not left
    to luck (a writer that blocks without looking again once its flag is up, or a producer that
    reads the flag before appending, each failed the test below within a few dozen rounds)."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        self._rng = random.Random(seed)

    def _jitter(self) -> None:
        time.sleep(self._rng.random() * 0.0002)

    def __len__(self) -> int:
        length = super().__len__()
        self._jitter()
        return length

    def append(self, line: str) -> None:
        self._jitter()
        super().append(line)


def test_racing_producers_and_a_writer_falling_asleep_lose_no_line() -> None:
    """Rounds of lines, from one thread or several at once, each round landing on a writer
    that is awake, falling asleep or asleep. Nothing is put until a round is written, so a
    line left behind by a writer that slept on would never be written."""
    stream = io.StringIO()
    sink = LineSink(stream, batch_interval=0.001, idle_after=0.001)
    sink._lines = _JitteryDeque(seed=1)
    producers, rounds = 4, 400
    rng = random.Random(0)
    who = [rng.sample(range(producers), rng.choice((1, 1, 2, producers))) for _ in range(rounds)]
    go = threading.Barrier(producers + 1)
    put_all = threading.Barrier(producers + 1)

    def produce(producer: int) -> None:
        try:
            for round_ in range(rounds):
                go.wait(timeout=10)
                if producer in who[round_]:
                    sink.put(f"{producer} {round_}")
                put_all.wait(timeout=10)
        except threading.BrokenBarrierError:
            return  # the test failed and let go

    threads = [threading.Thread(target=produce, args=(p,)) for p in range(producers)]
    sink.start()
    try:
        for thread in threads:
            thread.start()
        expected = 0
        for round_ in range(rounds):
            time.sleep(rng.uniform(0, 0.002))  # around the writer's 1 ms beat and its sleep
            go.wait(timeout=10)
            put_all.wait(timeout=10)
            expected += len(who[round_])
            deadline = time.monotonic() + 2
            while stream.getvalue().count("\n") < expected:
                assert time.monotonic() < deadline, f"round {round_}: a line waits"
                time.sleep(0.0001)
    finally:
        go.abort()
        put_all.abort()
        for thread in threads:
            thread.join(timeout=10)
        started = time.monotonic()
        sink.stop()
        stopped_in = time.monotonic() - started
    written = stream.getvalue().splitlines()
    assert sorted(written) == sorted(f"{p} {r}" for r in range(rounds) for p in who[r])
    assert [line.split()[1] for line in written] == [  # rounds in order
        str(r) for r in range(rounds) for _ in who[r]
    ]
    assert stopped_in < 1


def test_stop_wakes_a_sleeping_writer() -> None:
    sink = LineSink(io.StringIO(), batch_interval=30)  # on its beat, stop() would time out
    sink.start()
    time.sleep(0.05)  # no line yet: asleep
    started = time.monotonic()
    sink.stop()
    assert time.monotonic() - started < 2
    assert not sink._thread.is_alive()


def test_stop_writes_lines_put_on_a_sleeping_writer() -> None:
    stream = io.StringIO()
    sink = LineSink(stream, batch_interval=0.2)
    sink.start()
    time.sleep(0.05)  # asleep: the first line wakes it, stop() may come before it runs
    for n in range(100):
        sink.put(f"line {n}")
    started = time.monotonic()
    sink.stop()
    assert time.monotonic() - started < 2
    assert not sink._thread.is_alive()
    assert stream.getvalue().splitlines() == [f"line {n}" for n in range(100)]


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
