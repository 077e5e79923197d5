"""Where the Anthropic translation's CPU goes, step by step, on recorded answers.

    python -m loadtest.translation_steps                  # timed, ~20 s
    python -m loadtest.translation_steps --instructions   # callgrind counts, ~2 minutes

Asks the simulator once per scenario for the answer promptproxy_claude gets (``/v1/messages``,
the translated body and headers) and for the one promptproxy relays (``/v1/chat/completions``),
keeping the chunks as aiohttp handed them over. Then, with no I/O, replays what each proxy
does with them, step by step, per request: the request translation; for a stream, cutting
events, parsing each, decoding its JSON, translating it, recording the chunks
(``AnswerReader.decoded``) and encoding them; for a whole answer, decoding, translating,
encoding and recording. The pass-through's own work on its answer (cutting events and
``AnswerReader.accept``'s byte checks; ``AnswerReader.body``) is measured the same way, so
the difference is the translation's. Timed: the best of ``--repeat`` runs of ``--loops``
requests, as noisy as the core is shared. ``--instructions``: the replay runs under
callgrind (valgrind) and each step's user-space instructions per request are counted,
repeatable whatever else the machine does (use ``PYTHONHASHSEED=0``). Steps, not a load
test: the benchmark and ``loadtest.instructions`` stay the judges of the whole.
"""

from __future__ import annotations

import sys
from pathlib import Path

if not __package__:  # `python loadtest/translation_steps.py`: make `loadtest` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse
import asyncio
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import orjson
from multidict import CIMultiDict, CIMultiDictProxy

from loadtest.loadgen import SDK_HEADERS, chat_body
from loadtest.procs import REPO_ROOT, Fleet
from loadtest.scenarios import BY_NAME
from loadtest.targets import CLAUDE_MODEL, start_simulator
from proxy.anthropic.stream import StreamTranslator
from proxy.exchange.answer import AnswerReader
from proxy.exchange.messages_call import (
    ChatStream,
    chat_answer,
    chunk_event,
    messages_call,
    messages_headers,
)
from proxy.exchange.outcome import Exchange
from proxy.models import Route
from proxy.sse import SSESplitter, parse_event

Step = Callable[[], object]


async def _record(url: str, body: bytes, headers: dict[str, str]) -> list[bytes]:
    async with (
        aiohttp.ClientSession() as session,
        session.post(url, data=body, headers=headers) as resp,
    ):
        if resp.status != 200:
            raise RuntimeError(f"{url}: {resp.status} {await resp.text()}")
        return [chunk async for chunk in resp.content.iter_any()]


def _exchange() -> Exchange:
    return Exchange(request_id="r", method="POST", route=Route.CHAT, started=0.0, stream=True)


def _best_us(step: Step, loops: int, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter_ns()
        for _ in range(loops):
            step()
        best = min(best, (time.perf_counter_ns() - started) / loops)
    return best / 1000


def stream_steps(upstream: list[bytes], relayed: list[bytes], model: str) -> dict[str, Step]:
    """What each proxy does with one streamed answer. A label starting with ``+`` adds one
    step to the line above it, so the step's own cost is the difference."""
    splitter = SSESplitter()
    parsed = [parse_event(raw) for chunk in upstream for raw in splitter.feed(chunk)]
    decoded = [(p.event, orjson.loads(p.data)) for p in parsed if p.data]

    def split() -> object:
        splitter = SSESplitter()
        return [splitter.feed(chunk) for chunk in upstream]

    def split_parse() -> object:
        splitter = SSESplitter()
        return [parse_event(raw) for chunk in upstream for raw in splitter.feed(chunk)]

    def split_parse_loads() -> object:
        splitter = SSESplitter()
        return [
            orjson.loads(e.data)
            for chunk in upstream
            for raw in splitter.feed(chunk)
            if (e := parse_event(raw)).data
        ]

    def chat_stream() -> list[list[dict[str, Any]]]:
        stream = ChatStream(model, include_usage=False)
        return [stream.feed(chunk) for chunk in upstream]

    def chat_stream_record() -> object:
        reader = AnswerReader(_exchange())
        sends = chat_stream()
        for chunks in sends:
            for chunk in chunks:
                reader.decoded(chunk, chunk=True)
        return sends

    def chat_stream_record_encode() -> object:
        return [b"".join(chunk_event(c) for c in chunks) for chunks in chat_stream_record()]

    def translate_only() -> object:
        translator = StreamTranslator(model=model, created=0)
        return [translator.feed(event, payload) for event, payload in decoded]

    def passthrough() -> object:
        splitter = SSESplitter()
        reader = AnswerReader(_exchange())
        return [[raw for raw in splitter.feed(chunk) if reader.accept(raw)] for chunk in relayed]

    return {
        "cut events (SSESplitter.feed)": split,
        "+ parse_event": split_parse,
        "+ orjson.loads of each event": split_parse_loads,
        "+ translate = ChatStream.feed": chat_stream,
        "+ AnswerReader.decoded per chunk": chat_stream_record,
        "+ chunk_event and join (encode)": chat_stream_record_encode,
        "StreamTranslator.feed alone": translate_only,
        "pass-through: cut events + AnswerReader.accept": passthrough,
    }


def whole_steps(upstream: bytes, relayed: bytes, model: str) -> dict[str, Step]:
    def translate() -> object:
        return chat_answer(200, upstream, {}, model)

    def translate_record() -> object:
        answer = translate()
        AnswerReader(_exchange()).decoded(answer.payload, chunk=False)
        return answer

    def passthrough() -> object:
        AnswerReader(_exchange()).body(relayed)
        return relayed

    return {
        "chat_answer (loads, to_chat_completion, dumps)": translate,
        "+ AnswerReader.decoded": translate_record,
        "pass-through: AnswerReader.body": passthrough,
    }


def request_steps(payload: dict[str, Any], client: CIMultiDictProxy[str]) -> dict[str, Step]:
    return {
        "messages_call (to_messages, dumps)": lambda: messages_call(payload, 4096),
        "messages_headers": lambda: messages_headers(client, None, stream=True),
    }


async def _collect(sim_url: str) -> dict[str, Any]:
    root = sim_url.removesuffix("/v1")
    out: dict[str, Any] = {}
    for name in ("nonstream_0ms", "stream_20x5ms"):
        scenario = BY_NAME[name]
        payload = orjson.loads(chat_body(stream=scenario.stream, model=CLAUDE_MODEL))
        client = CIMultiDictProxy(CIMultiDict({**SDK_HEADERS, **scenario.sim_headers}))
        call = messages_call(payload, 4096)
        headers = dict(messages_headers(client, None, stream=scenario.stream))
        upstream = await _record(root + "/v1/messages", call.body, headers)
        relayed = await _record(
            sim_url + "/chat/completions",
            chat_body(stream=scenario.stream),
            {**SDK_HEADERS, **scenario.sim_headers},
        )
        out[name] = (payload, client, upstream, relayed)
    return out


def _save(recorded: dict[str, Any], path: Path) -> None:
    def text(chunks: list[bytes]) -> list[str]:
        return [c.decode("latin-1") for c in chunks]

    path.write_bytes(
        orjson.dumps(
            {
                name: [
                    payload,
                    {str(k): v for k, v in client.items()},
                    text(upstream),
                    text(relayed),
                ]
                for name, (payload, client, upstream, relayed) in recorded.items()
            }
        )
    )


def _load(path: Path) -> dict[str, Any]:
    def raw(chunks: list[str]) -> list[bytes]:
        return [c.encode("latin-1") for c in chunks]

    return {
        name: (payload, CIMultiDictProxy(CIMultiDict(client)), raw(upstream), raw(relayed))
        for name, (payload, client, upstream, relayed) in orjson.loads(path.read_bytes()).items()
    }


class InstructionCounter:
    """Instructions per call of a step, in this process run under callgrind with
    instrumentation off: switched on around ``loops`` and ``2 x loops`` calls (each
    followed by a dump), the difference divided by ``loops`` (the switching cancels)."""

    def __init__(self, out_prefix: Path) -> None:
        self._prefix = out_prefix
        self._pid = str(os.getpid())
        self._dumps = 0

    def _control(self, *args: str) -> None:
        subprocess.run(
            ["callgrind_control", *args, self._pid],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def _count(self, step: Step, loops: int) -> int:
        self._control("-z")
        self._control("-i", "on")
        for _ in range(loops):
            step()
        self._control("-i", "off")
        self._control("-d")
        self._dumps += 1
        part = Path(f"{self._prefix}.{self._dumps}")
        return sum(
            int(line.split()[1])
            for line in part.read_text().splitlines()
            if line.startswith("totals:")
        )

    def per_call(self, step: Step, loops: int) -> float:
        return (self._count(step, 2 * loops) - self._count(step, loops)) / loops


def _report(recorded: dict[str, Any], measure: Callable[[Step], float], unit: str) -> None:
    for name, (payload, client, upstream, relayed) in recorded.items():
        print(f"\n{name}: upstream {len(upstream)} chunks, {sum(map(len, upstream))} bytes")
        steps = dict(request_steps(payload, client))
        if BY_NAME[name].stream:
            steps |= stream_steps(upstream, relayed, CLAUDE_MODEL)
        else:
            steps |= whole_steps(b"".join(upstream), b"".join(relayed), CLAUDE_MODEL)
        for label, step in steps.items():
            print(f"{measure(step):8.1f} {unit}  {label}", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--loops", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument(
        "--instructions",
        action="store_true",
        help="count user-space instructions per step under callgrind instead of timing",
    )
    parser.add_argument("--valgrind", default=shutil.which("valgrind"))
    parser.add_argument("--replay", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--count-prefix", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.replay is not None:  # the child under callgrind
        counter = InstructionCounter(args.count_prefix)
        loops = max(1, args.loops // 10)
        _report(_load(args.replay), lambda step: counter.per_call(step, loops) / 1000, "k instr")
        return 0
    with tempfile.TemporaryDirectory(prefix="promptproxy-steps-") as scratch:
        with Fleet(Path(scratch)) as fleet:
            sim = start_simulator(fleet, None)
            recorded = asyncio.run(_collect(sim.base_url))
        if not args.instructions:
            _report(recorded, lambda step: _best_us(step, args.loops, args.repeat), "us")
            return 0
        if args.valgrind is None or shutil.which("callgrind_control") is None:
            print("valgrind and callgrind_control are needed (Debian: valgrind)", file=sys.stderr)
            return 2
        replay, prefix = Path(scratch) / "recorded.json", Path(scratch) / "callgrind.out"
        _save(recorded, replay)
        command = [
            args.valgrind, "--tool=callgrind", "--instr-atstart=no",
            f"--callgrind-out-file={prefix}", sys.executable, "-m", "loadtest.translation_steps",
            "--replay", str(replay), "--count-prefix", str(prefix), "--loops", str(args.loops),
        ]  # fmt: skip
        done = subprocess.run(command, stderr=subprocess.DEVNULL, cwd=REPO_ROOT, check=False)
        return done.returncode


if __name__ == "__main__":
    sys.exit(main())
