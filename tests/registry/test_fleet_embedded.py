"""The embedded fleet board keeps one connection open across beats: what a user of it would
notice if that went wrong. The board holds exactly the live replicas after many beats; a
file deleted or replaced between beats is noticed, and the beat lands in the file at the
path (where the other processes look), not in the old one; processes sharing the file see
each other; after ``close`` every call is a ``FleetError``."""

from __future__ import annotations

import asyncio
import sqlite3
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from proxy.registry.fleet import FleetError, ReplicaBeat
from proxy.registry.fleet_embedded import EmbeddedFleetBoard, board_path
from tests.registry.helpers import REPO


def beat(name: str, revision: int) -> ReplicaBeat:
    return ReplicaBeat(name, "host", 7, "0.1.0", revision, 1.5, 0.25, True)


def on_file(path: Path) -> list[tuple[str, int]]:
    """(replica, revision) in the file at ``path`` now, read as another process would."""
    conn = sqlite3.connect(path)
    try:
        rows = conn.execute("SELECT info FROM fleet").fetchall()
    finally:
        conn.close()
    beats = [ReplicaBeat.from_json(info) for (info,) in rows]
    return sorted((b.replica, b.revision) for b in beats if b is not None)


async def on_board(board: EmbeddedFleetBoard) -> list[tuple[str, int]]:
    return sorted((b.replica, b.revision) for b, _ in (await board.read()).entries)


def delete_board_files(path: Path, suffixes: tuple[str, ...] = ("", "-wal", "-shm")) -> None:
    for suffix in suffixes:
        Path(f"{path}{suffix}").unlink(missing_ok=True)


def board_files(path: Path) -> list[str]:
    return sorted(p.name for p in path.parent.iterdir() if p.name.startswith(path.name))


def write_garbage(path: Path) -> None:
    delete_board_files(path)
    path.write_bytes(b"not a database, " * 256)


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return board_path(tmp_path / "registry.db")


@pytest.fixture
async def board(path: Path) -> AsyncIterator[EmbeddedFleetBoard]:
    board = EmbeddedFleetBoard(path, 60.0)
    try:
        yield board
    finally:
        await board.close()


async def test_after_many_beats_the_board_holds_exactly_the_live_replicas(path: Path) -> None:
    now = [1000.0]
    board = EmbeddedFleetBoard(path, 60.0, clock=lambda: now[0])
    try:
        for second in range(300):
            now[0] += 1
            for name in ("a", "b", "c") if second < 100 else ("a", "b"):
                await board.publish(beat(name, second))
            if second == 150:
                await board.publish(beat("leaving", second))
                await board.remove("leaving")
        # "c" stopped at second 99, forgotten 60 s later; "leaving" left on its own.
        assert await on_board(board) == [("a", 299), ("b", 299)]
        assert on_file(path) == [("a", 299), ("b", 299)]
    finally:
        await board.close()


async def test_a_beat_after_the_file_was_deleted_makes_it_again_with_the_replica(
    path: Path, board: EmbeddedFleetBoard
) -> None:
    await board.publish(beat("a", 1))
    await board.publish(beat("b", 1))
    delete_board_files(path)
    await board.publish(beat("a", 2))
    # In the new file at the path, where the other processes look: "b" went with the old.
    assert on_file(path) == [("a", 2)]
    assert await on_board(board) == [("a", 2)]


async def test_a_file_renamed_over_the_board_is_noticed(
    path: Path, board: EmbeddedFleetBoard
) -> None:
    theirs = EmbeddedFleetBoard(path, 60.0)  # another process, its connection open too
    try:
        await board.publish(beat("a", 1))
        await theirs.publish(beat("b", 1))
        # Another board file, made elsewhere (a restored volume), moved over the path.
        other = path.with_name("other.db")
        other_board = EmbeddedFleetBoard(other, 60.0)
        await other_board.publish(beat("elsewhere", 5))
        await other_board.close()
        other.replace(path)

        # The new file as it is: nothing of the old one's -wal read into it.
        assert await on_board(board) == [("elsewhere", 5)]
        await board.publish(beat("a", 2))
        await theirs.publish(beat("b", 2))
        assert on_file(path) == [("a", 2), ("b", 2), ("elsewhere", 5)]
        assert await on_board(theirs) == [("a", 2), ("b", 2), ("elsewhere", 5)]
    finally:
        await theirs.close()


async def test_a_board_whose_table_was_dropped_is_written_again(
    path: Path, board: EmbeddedFleetBoard
) -> None:
    await board.publish(beat("a", 1))
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("DROP TABLE fleet")
    conn.close()
    await board.publish(beat("a", 2))
    assert on_file(path) == [("a", 2)]


async def test_a_file_that_is_not_a_board_is_a_fleet_error_until_it_is_gone(
    path: Path, board: EmbeddedFleetBoard
) -> None:
    await board.publish(beat("a", 1))
    write_garbage(path)
    with pytest.raises(FleetError, match="not a database"):
        await board.publish(beat("a", 2))
    with pytest.raises(FleetError):
        await board.read()
    delete_board_files(path)
    await board.publish(beat("a", 3))
    assert on_file(path) == [("a", 3)]


async def test_closed_the_board_refuses_every_call_with_a_fleet_error(
    path: Path, board: EmbeddedFleetBoard
) -> None:
    await board.publish(beat("a", 1))
    await board.close()
    await board.close()  # again: nothing left to close, nothing raised
    for call in (lambda: board.publish(beat("a", 2)), board.read, lambda: board.remove("a")):
        with pytest.raises(FleetError, match="closed"):
            await call()
    # The file is released: the last connection gone, SQLite folded its WAL back in.
    assert board_files(path) == [path.name]
    assert on_file(path) == [("a", 1)]


async def test_a_beat_queued_before_close_is_written(path: Path) -> None:
    board = EmbeddedFleetBoard(path, 60.0)
    publishing = asyncio.create_task(board.publish(beat("a", 1)))
    await asyncio.sleep(0)  # the beat is handed to the worker
    await board.close()
    await publishing
    assert on_file(path) == [("a", 1)]


async def test_two_boards_on_one_file_see_each_others_beats(path: Path) -> None:
    mine, theirs = EmbeddedFleetBoard(path, 60.0), EmbeddedFleetBoard(path, 60.0)
    try:
        # Both open the fresh file and write at once, on their own worker threads: the
        # switch to WAL is retried, the busy timeout orders the writes.
        await asyncio.gather(
            *(
                board.publish(beat(name, n))
                for n in range(50)
                for board, name in ((mine, "mine"), (theirs, "theirs"))
            )
        )
        assert await on_board(mine) == await on_board(theirs) == [("mine", 49), ("theirs", 49)]
        await theirs.remove("theirs")
        assert await on_board(mine) == [("mine", 49)]
    finally:
        await mine.close()
        await theirs.close()


_OTHER_PROCESS = """
import asyncio, sys
from pathlib import Path

import orjson

from proxy.registry.fleet import ReplicaBeat
from proxy.registry.fleet_embedded import EmbeddedFleetBoard


async def main() -> None:
    board = EmbeddedFleetBoard(Path(sys.argv[1]), 60.0)
    try:
        for n in range(30):
            await board.publish(ReplicaBeat("theirs", "host", 8, "0.1.0", n, 1.5, 0.25, True))
        read = await board.read()
    finally:
        await board.close()
    print(orjson.dumps(sorted(b.replica for b, _ in read.entries)).decode())


asyncio.run(main())
"""


async def test_another_process_on_the_file_sees_this_ones_beats_and_the_other_way(
    path: Path, board: EmbeddedFleetBoard
) -> None:
    await board.publish(beat("mine", 0))  # this process's connection is open from here on
    other = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _OTHER_PROCESS,
        str(path),
        cwd=REPO,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(30):
            for n in range(1, 31):  # beating while the other process does
                await board.publish(beat("mine", n))
            out, err = await other.communicate()
    finally:
        if other.returncode is None:
            other.kill()
            await other.wait()
    assert other.returncode == 0, err.decode()
    assert orjson.loads(out) == ["mine", "theirs"]
    assert await on_board(board) == [("mine", 30), ("theirs", 29)]


async def test_beats_reuse_one_connection(
    path: Path, board: EmbeddedFleetBoard, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The point of the persistent connection: an idle proxy's beat is one small write, not
    # an open, a checkpoint and an unlink of the -wal file each second.
    opened: list[Any] = []
    connect: Callable[..., sqlite3.Connection] = sqlite3.connect

    def counting(*args: Any, **kwargs: Any) -> sqlite3.Connection:
        opened.append(args)
        return connect(*args, **kwargs)

    monkeypatch.setattr(sqlite3, "connect", counting)
    for n in range(100):
        await board.publish(beat("a", n))
        await board.read()
    assert len(opened) == 1
    delete_board_files(path)
    await board.publish(beat("a", 100))
    assert len(opened) == 2  # reopened once, for the new file


async def test_a_beat_after_only_the_main_file_was_deleted_starts_a_clean_board(
    path: Path, board: EmbeddedFleetBoard
) -> None:
    # An operator removes registry.fleet.db, not its -wal and -shm: the pages left in them
    # belong to the old file and must not come back in the new one.
    for n in range(200):  # past a checkpoint: the old -wal holds only some of the pages
        await board.publish(beat("a", n))
        await board.publish(beat("b", n))
    delete_board_files(path, ("",))
    await board.publish(beat("a", 200))
    assert on_file(path) == [("a", 200)]
    assert await on_board(board) == [("a", 200)]
