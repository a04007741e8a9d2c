"""The rollup holds the cyclic garbage collector during a round and always gives it back."""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator

import pytest

from service.events.rollup import _collector_paused


@pytest.fixture
def collector_on() -> Iterator[None]:
    was = gc.isenabled()
    gc.enable()
    yield
    if not was:
        gc.disable()


def test_off_during_a_round_and_on_after_it_even_when_it_fails(collector_on: None) -> None:
    with _collector_paused():
        assert not gc.isenabled()
    assert gc.isenabled()
    with pytest.raises(RuntimeError), _collector_paused():
        raise RuntimeError("the database went away")
    assert gc.isenabled()


def test_left_off_when_it_was_off_before(collector_on: None) -> None:
    gc.disable()
    with _collector_paused():
        assert not gc.isenabled()
    assert not gc.isenabled()


def test_overlapping_rounds_of_two_threads_turn_it_on_once_both_are_done(
    collector_on: None,
) -> None:
    """The first round ends while the second still runs: off until the second ends."""
    second_started, first_done = threading.Event(), threading.Event()
    during_second: list[bool] = []

    def second() -> None:
        with _collector_paused():
            second_started.set()
            first_done.wait(5)
            during_second.append(gc.isenabled())

    with _collector_paused():
        thread = threading.Thread(target=second)
        thread.start()
        assert second_started.wait(5)
    first_done.set()
    thread.join(5)
    assert during_second == [False]
    assert gc.isenabled()
