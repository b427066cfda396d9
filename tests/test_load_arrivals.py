"""Locust's users call at random moments (loadtest/scenarios.py `schedule`): on grids every kind
started from the same instant, so the writer's call and a ranking reached the server together
ten times a second for a whole gate run, and the single calls beside them were the gate's
slowest (loadtest/README.md)."""

from __future__ import annotations

import itertools
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "loadtest"))
import scenarios

WINDOW_S = 40.0  # the gate's
NOW = 1234.5678  # any monotonic time


def _due_times(kind: str, users: int, rate: float, arrivals: str) -> np.ndarray:
    """Every due time of `users` users of `kind` in the window, as Locust's users keep them."""
    times = []
    for index in range(users):
        due, gaps = scenarios.schedule(kind, index, users, rate, arrivals, NOW)
        for gap in gaps:
            if due > NOW + WINDOW_S:
                break
            times.append(due)
            due += gap
    return np.sort(np.asarray(times))


def _writes_beside_a_ranking(arrivals: str, within_s: float = 0.002) -> float:
    """The share of the gate's writes (10/s, one user) due within `within_s` of a ranking's
    (20/s over four users)."""
    writes = _due_times("WriterUser", 1, 10.0, arrivals)
    rankings = _due_times("RankerUser", 4, 5.0, arrivals)
    at = np.clip(np.searchsorted(rankings, writes), 1, len(rankings) - 1)
    nearest = np.minimum(np.abs(rankings[at] - writes), np.abs(rankings[at - 1] - writes))
    return float(np.mean(nearest < within_s))


def test_random_arrivals_meet_other_kinds_as_independent_clients_do() -> None:
    # Independent clients: a write lands within 2 ms of one of 20 rankings/s about 8% of the
    # time (4 ms of every 50).
    assert _writes_beside_a_ranking("poisson") < 0.15


def test_grid_arrivals_put_every_write_beside_a_ranking() -> None:
    """The lock the random arrivals remove, shown by the same check."""
    assert _writes_beside_a_ranking("grid") > 0.99


@pytest.mark.parametrize("rate", [10.0, 5.0, 50.0])
def test_random_arrivals_keep_each_users_rate_and_a_gap_floor(rate: float) -> None:
    first, gaps = scenarios.schedule("ModelServerUser", 3, 6, rate, "poisson", NOW)
    drawn = np.fromiter(itertools.islice(gaps, 4 * scenarios.BLOCK), float)

    assert NOW <= first < NOW + 1 / rate
    # Each block of gaps is scaled to its mean: the rate holds exactly, not on average.
    for block in drawn.reshape(4, scenarios.BLOCK):
        assert block.sum() == pytest.approx(scenarios.BLOCK / rate, rel=1e-9)
    assert drawn.min() >= 0.5 * scenarios.MIN_GAP / rate
    assert drawn.std() > 0.4 / rate  # random, not a grid (a grid's spread is 0)


def test_users_draw_their_own_gaps() -> None:
    def gaps(kind: str, index: int) -> list[float]:
        return list(
            itertools.islice(scenarios.schedule(kind, index, 4, 5.0, "poisson", NOW)[1], 20)
        )

    assert gaps("RankerUser", 0) != gaps("RankerUser", 1)
    assert gaps("RankerUser", 0) != gaps("WriterUser", 0)
    assert gaps("RankerUser", 0) == gaps("RankerUser", 0)  # a run's schedule repeats
