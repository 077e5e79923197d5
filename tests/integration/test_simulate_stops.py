"""`promptproxy simulate` as a container's main process: its stop signal ends it at once."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

import pytest

from tests.processes import simulator

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_the_simulator_exits_0_on_sigterm_and_sigint(tmp_path: Path, sig: signal.Signals) -> None:
    # As PID 1 a signal without a handler is ignored: `docker stop` then waits 10 s and
    # SIGKILLs. Outside a container SIGTERM's default action would end it, so the exit
    # status is what tells a handled stop (0) from a killed one (-15).
    with simulator(tmp_path) as (_, proc):
        proc.popen.send_signal(sig)
        try:
            code = proc.popen.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the simulator ignored {sig.name}")
        assert code == 0, proc.log_path.read_text()
