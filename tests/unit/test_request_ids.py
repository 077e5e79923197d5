"""Request ids: what callers quote back for feedback, so unique and unguessable."""

from __future__ import annotations

import os
import re

from proxy.web.middlewares import RequestIds


def test_ids_are_24_hex_digits_and_never_repeat_across_refills() -> None:
    ids = RequestIds()
    made = [ids.new() for _ in range(5 * 341 + 7)]  # several refills of the pool
    assert all(re.fullmatch(r"[0-9a-f]{24}", one) for one in made)
    assert len(set(made)) == len(made)


def test_two_sources_share_nothing() -> None:
    first, second = RequestIds(), RequestIds()
    assert {first.new() for _ in range(100)}.isdisjoint(second.new() for _ in range(100))


def test_a_forked_child_does_not_repeat_its_parents_ids() -> None:
    ids = RequestIds()
    ids.new()  # the pool is filled before the fork, as in a serving process
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next id, then out without running the test session's exit
        os.write(write, ids.new().encode())
        os._exit(0)
    os.close(write)
    _, status = os.waitpid(pid, 0)
    child = os.read(read, 64).decode()
    os.close(read)
    assert status == 0
    assert re.fullmatch(r"[0-9a-f]{24}", child)
    assert child != ids.new()
