"""The three measured situations, steered per request through the simulator's headers."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Scenario:
    name: str
    stream: bool
    sim_headers: dict[str, str]
    description: str
    #: Multiplies ``--requests``: answers that take 0.3 ms need more of them than 100 ms
    #: streams for a stable CPU reading (CPU time is counted in 10 ms ticks).
    request_factor: int = 1

    def requests(self, base: int) -> int:
        return base * self.request_factor


SCENARIOS = (
    Scenario(
        "nonstream_0ms",
        stream=False,
        sim_headers={"x-sim-first-byte-ms": "0"},
        description="non-streaming chat completion, provider answers at once",
        request_factor=4,
    ),
    Scenario(
        "nonstream_50ms",
        stream=False,
        sim_headers={"x-sim-first-byte-ms": "50"},
        description="non-streaming chat completion, provider waits 50 ms before answering",
    ),
    Scenario(
        "stream_20x5ms",
        stream=True,
        sim_headers={"x-sim-first-byte-ms": "0", "x-sim-chunks": "20", "x-sim-chunk-delay-ms": "5"},
        description="streaming chat completion, 20 content chunks 5 ms apart",
    ),
)
BY_NAME = {s.name: s for s in SCENARIOS}
