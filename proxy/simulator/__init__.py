"""A fake OpenAI and Anthropic provider for tests, first-run demos and load benchmarks.

Deterministic (identical requests give byte-identical bodies), cheap per request,
and steerable per request through ``x-sim-*`` headers or ``sim-*`` model names
(see ``proxy.simulator.faults``); a ``[[sim ...]]`` marker in the system prompt
degrades answer quality on purpose (see ``proxy.simulator.directives``).
"""

from .app import build_simulator_app, serve_simulator, start_simulator
from .settings import SimulatorSettings

__all__ = [
    "SimulatorSettings",
    "build_simulator_app",
    "serve_simulator",
    "start_simulator",
]
