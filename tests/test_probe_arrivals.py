"""The gate's probes send at random moments (loadtest/probe.py `due_offsets`), so a run samples
every phase of the load's own cycles: on a fixed grid the single probe (60/s) met Locust's
rankings (one every 50 ms) at the same three moments of that cycle for a whole run."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "loadtest"))
import probe
import scenarios

RATE = 60.0
CALLS = 2_400  # the gate's 40 s window at 60/s
LOCUST_RANKING_PERIOD_S = 0.05  # 20 rankings/s, evenly spaced


def _phase_counts(offsets: list[float], period: float, bins: int = 10) -> np.ndarray:
    phases = np.mod(np.asarray(offsets), period) / period
    return np.bincount((phases * bins).astype(int), minlength=bins)


def test_random_arrivals_sample_every_phase_of_a_periodic_load() -> None:
    counts = _phase_counts(probe.due_offsets(CALLS, RATE, "poisson", 9), LOCUST_RANKING_PERIOD_S)

    assert counts.min() > 0.7 * CALLS / 10, counts
    assert counts.max() < 1.3 * CALLS / 10, counts


def test_grid_arrivals_lock_onto_a_few_phases() -> None:
    """The bias the random arrivals remove, shown by the same check."""
    counts = _phase_counts(probe.due_offsets(CALLS, RATE, "grid", 9), LOCUST_RANKING_PERIOD_S)

    assert (counts == 0).sum() >= 6, counts
    assert probe.due_offsets(5, 10.0, "grid", 0) == pytest.approx([0.0, 0.1, 0.2, 0.3, 0.4])


def test_random_arrivals_keep_the_window_the_count_and_a_gap_floor() -> None:
    offsets = np.asarray(probe.due_offsets(CALLS, RATE, "poisson", 9))
    gaps = np.diff(offsets)

    assert len(offsets) == CALLS
    assert offsets[0] == 0.0
    # The last call is due when the grid's would be: the window (and Locust's load) covers it.
    assert offsets[-1] == pytest.approx((CALLS - 1) / RATE)
    assert gaps.min() >= 0.9 * scenarios.MIN_GAP / RATE
    assert gaps.mean() == pytest.approx(1 / RATE, rel=0.01)
    # Irregular, not a grid with noise: exponential rests have a spread near their mean.
    assert gaps.std() > 0.5 / RATE


def test_random_arrivals_repeat_by_seed() -> None:
    one = probe.due_offsets(100, RATE, "poisson", 4)

    assert probe.due_offsets(100, RATE, "poisson", 4) == one
    assert probe.due_offsets(100, RATE, "poisson", 5) != one
    assert probe.due_offsets(1, RATE, "poisson", 4) == [0.0]
    assert probe.due_offsets(0, RATE, "poisson", 4) == []
