"""The event spool: fsynced batches, replayed in order, torn tails skipped, limits enforced."""

from __future__ import annotations

import fcntl
from pathlib import Path

import pytest

from service.storage.spool import QUARANTINE_FOLDER, BatchMark, Spool, SpoolError


def test_batches_replay_in_order_then_disappear(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool", max_bytes=1_000_000)
    spool.append([("a", 1)])
    spool.append([("b", 2), ("c", 3)])
    spool.seal()
    spool.append([("d", 4)])
    spool.seal()
    seen: list[list[list[object]]] = []
    assert spool.replay(lambda batch, mark: seen.append(batch)) == 3
    assert seen == [[["a", 1]], [["b", 2], ["c", 3]], [["d", 4]]]
    assert not spool.has_segments()


def test_a_torn_last_line_is_skipped(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=1_000_000)
    spool.append([("a", 1)])
    spool.seal()
    (segment,) = tmp_path.glob("*.spool")
    with segment.open("a") as handle:
        handle.write('[["b", 2')  # the process died mid-write: never acknowledged
    seen: list[object] = []
    spool.replay(lambda batch, mark: seen.append(batch))
    assert seen == [[["a", 1]]]


def test_a_segment_locked_by_a_live_process_is_left_alone(tmp_path: Path) -> None:
    owner = Spool(tmp_path, max_bytes=1_000_000)
    owner.append([("a", 1)])  # open segment, flock held
    other = Spool(tmp_path, max_bytes=1_000_000)
    seen: list[object] = []
    assert other.replay(lambda batch, mark: seen.append(batch)) == 0 and seen == []
    owner.seal()
    assert other.replay(lambda batch, mark: seen.append(batch)) == 1
    other.seal()


def test_a_failed_replay_keeps_the_segment(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=1_000_000)
    spool.append([("a", 1)])
    spool.seal()

    def broken(batch: object, mark: object) -> None:
        raise ConnectionError("database went away again")

    with pytest.raises(ConnectionError):
        spool.replay(broken)
    assert spool.has_segments()
    (segment,) = tmp_path.glob("*.spool")
    with segment.open() as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)  # lock was released


def test_size_limit_and_unwritable_directory(tmp_path: Path) -> None:
    small = Spool(tmp_path / "small", max_bytes=64)
    small.append([("a", 1)])
    with pytest.raises(SpoolError, match="exceed its limit"):
        small.append([("x" * 100, 1)])
    small.seal()
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(SpoolError, match="cannot write to spool"):
        Spool(blocker / "spool", max_bytes=1_000_000).append([("a", 1)])


def test_a_segment_moved_aside_keeps_the_batches_from_the_failing_one_on(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=1_000_000, max_replay_failures=1)
    for unit in ("a", "b", "bad", "c"):
        spool.append([(unit, 1)])
    spool.seal()
    written: list[object] = []

    def ingest(batch: list[list[object]], mark: BatchMark) -> None:
        if batch[0][0] == "bad":
            raise KeyError("bad")  # neither an outage nor a refused row
        written.append((batch[0][0], mark.line))

    assert spool.replay(ingest) == 2
    assert written == [("a", 1), ("b", 2)]
    (aside,) = spool.quarantined_segments()
    assert aside.name.endswith("+3.spool") and not spool.has_segments()
    assert aside.read_text() == '[["bad",1]]\n[["c",1]]\n'


def test_a_crash_after_the_aside_copy_never_replays_the_segment_again(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=1_000_000)
    spool.append([("a", 1)])
    spool.append([("b", 1)])
    spool.seal()
    (segment,) = tmp_path.glob("*.spool")
    # The state a crash leaves between the aside copy's rename and the segment's removal:
    # line 1 is in PostgreSQL, line 2 in the copy.
    aside = tmp_path / QUARANTINE_FOLDER
    aside.mkdir()
    (aside / f"{segment.stem}+2.spool").write_text('[["b",1]]\n')
    seen: list[object] = []
    assert spool.replay(lambda batch, mark: seen.append(batch)) == 0
    assert seen == [] and not segment.exists()
    assert [p.name for p in spool.quarantined_segments()] == [f"{segment.stem}+2.spool"]
