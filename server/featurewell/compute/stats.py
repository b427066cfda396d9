"""What the streaming runner counts: events, dead letters, rows, checkpoints, and how long each
event took from appended to servable (exported by `compute/metrics.py`)."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from featurewell.compute.events import REASONS

VISIBLE_BUCKETS_MS = np.array(
    [5, 10, 25, 50, 100, 250, 500, 750, 1000, 2500, 5000, 10000, 30000, 60000], dtype=np.float64
)


@dataclass
class StreamStats:
    batches: int = 0
    events: int = 0
    rows_written: int = 0
    # Computed rows the write validation refused (e.g. a float32 sum that overflowed): not
    # written, logged, counted; the stream goes on.
    rows_refused: int = 0
    checkpoints: int = 0
    refreshed: int = 0
    # Appended (the stream entry's time) to servable (its entity's row written), per event, in
    # ms: the cumulative histogram over VISIBLE_BUCKETS_MS (+Inf last), and the latest values.
    visible_counts: npt.NDArray[np.int64] = field(
        default_factory=lambda: np.zeros(len(VISIBLE_BUCKETS_MS) + 1, dtype=np.int64)
    )
    # Events sent to the dead letters, by reason class (every class present from the start).
    dead_letters: dict[str, int] = field(default_factory=lambda: dict.fromkeys(REASONS, 0))
    visible_sum_ms: float = 0.0
    visible_recent_ms: deque[npt.NDArray[np.float64]] = field(
        default_factory=lambda: deque(maxlen=400)
    )

    def dead_letter(self, reason_class: str) -> None:
        self.dead_letters[reason_class] = self.dead_letters.get(reason_class, 0) + 1

    def visible(self, latencies_ms: npt.NDArray[np.float64]) -> None:
        bins = np.searchsorted(VISIBLE_BUCKETS_MS, latencies_ms, side="left")
        self.visible_counts += np.bincount(bins, minlength=len(self.visible_counts))
        self.visible_sum_ms += float(latencies_ms.sum())
        self.visible_recent_ms.append(latencies_ms)
