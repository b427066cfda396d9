"""The columnar cache's storage (store/columnar.py): per group of views read together, a
`Table` of slots (an index by hash tag, when each slot stops being fresh) and per view a `Block`
of decoded rows, a row per slot, the last row a never-fresh sentinel's."""

from __future__ import annotations

from collections.abc import Sequence
from itertools import repeat
from typing import Any

import numpy as np
import numpy.typing as npt

from featurewell.store.codec import DecodedRows, RowCodec
from featurewell.store.gathered import Gathered, time_field

FIRST_CAPACITY = 8


class Block:
    """One view's rows, a row per slot (the last row is the never-fresh sentinel's): the
    fixed-width fields decoded; strings and lists left in the stored bytes (`stored`, the very
    objects the raw entries hold), parsed only by reads that ask for them, since parsing them is
    per-row Python that most reads of a view with a label or a list never need."""

    __slots__ = ("fixed", "fixed_names", "present", "stored", "time_field")

    def __init__(self, codec: RowCodec, capacity: int) -> None:
        self.time_field = time_field(codec)
        self.fixed_names = codec.fixed_names
        self.fixed = np.zeros(capacity + 1, codec.fixed_dtype)
        self.present = np.zeros(capacity + 1, np.bool_)
        variable = len(self.fixed_names) < len(codec.view.features)
        self.stored = np.empty(capacity + 1, object) if variable else None

    def grow(self, capacity: int) -> None:
        used = len(self.present) - 1
        self.fixed = _grown(self.fixed, used, capacity)
        self.present = _grown(self.present, used, capacity)
        if self.stored is not None:
            self.stored = _grown(self.stored, used, capacity)

    def gather(
        self,
        positions: npt.NDArray[np.intp],
        fetched: npt.NDArray[np.intp],
        slots: npt.NDArray[np.intp],
    ) -> Gathered:
        stored = self.stored.take(slots) if self.stored is not None else None
        return Gathered(
            positions, fetched, self.fixed.take(slots), self.present.take(slots), stored
        )

    def put(
        self,
        slots: npt.NDArray[np.intp],
        decoded: DecodedRows,
        at: npt.NDArray[np.intp],
        raw: Sequence[Any],
    ) -> None:
        """Rows `at` of `decoded` (its fixed-width features) and of `raw` into `slots`."""
        self.present[slots] = decoded.present[at]
        fixed = self.fixed
        fixed[self.time_field][slots] = decoded.event_time_us[at]
        for name, values in decoded.values.items():
            assert isinstance(values, np.ndarray)  # fixed-width features only
            fixed[name][slots] = values[at]
        if self.stored is not None:
            self.stored[slots] = [raw[row] for row in at.tolist()]


class Table:
    """One group's slots: an index by hash tag, when each slot stops being fresh, and the
    `fresh_until` at which its row was last handed to refresh-ahead (so a row is refreshed once
    per TTL, however many reads see it late in it)."""

    __slots__ = ("blocks", "codecs", "free", "fresh_until", "index", "noted")

    def __init__(self, codecs: Sequence[RowCodec]) -> None:
        self.codecs = codecs
        self.index: dict[bytes, int] = {}
        self.free = list(range(FIRST_CAPACITY - 1, -1, -1))
        self.fresh_until = np.zeros(FIRST_CAPACITY + 1)  # the last: the sentinel, never fresh
        self.noted = np.zeros(FIRST_CAPACITY + 1)
        self.blocks = [Block(codec, FIRST_CAPACITY) for codec in codecs]

    def slots(self, tags: list[bytes]) -> npt.NDArray[np.intp]:
        """Each of these (distinct) tags' slot, a free one for a new tag."""
        known = list(map(self.index.get, tags))
        new = [tag for tag, slot in zip(tags, known, strict=True) if slot is None]
        if not new:
            return np.asarray(known, np.intp)
        while len(self.free) < len(new):
            self._grow()
        taken = self.free[-len(new) :][::-1]  # what `free.pop()` would hand out, in order
        del self.free[-len(new) :]
        self.index.update(zip(new, taken, strict=True))
        if len(new) == len(tags):
            return np.asarray(taken, np.intp)
        return np.fromiter(map(self.index.__getitem__, tags), np.intp, len(tags))

    def find(self, tags: Sequence[bytes]) -> npt.NDArray[np.intp]:
        """Each tag's slot, or the sentinel's (-1: the last)."""
        return np.fromiter(map(self.index.get, tags, repeat(-1)), np.intp, len(tags))

    def release(self, tag: bytes) -> int | None:
        """Free the tag's slot (the caller clears its rows); returns it, None if not held."""
        slot = self.index.pop(tag, None)
        if slot is not None:
            self.free.append(slot)
        return slot

    def _grow(self) -> None:
        used = len(self.fresh_until) - 1
        capacity = 2 * used
        self.fresh_until = _grown(self.fresh_until, used, capacity)
        self.noted = _grown(self.noted, used, capacity)
        for block in self.blocks:
            block.grow(capacity)
        self.free[:0] = range(capacity - 1, used - 1, -1)  # after any still free: popped last


def _grown(array: npt.NDArray[Any], used: int, capacity: int) -> npt.NDArray[Any]:
    """`array` of `used` slots + the sentinel, with room for `capacity` (sentinel last)."""
    out = (
        np.zeros(capacity + 1, array.dtype)
        if array.dtype != object
        else np.empty(capacity + 1, object)
    )
    out[:used] = array[:used]
    return out
