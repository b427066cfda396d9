"""A read's rows from the columnar cache (`Gathered`, copied out of the blocks by
`ColumnarCache.lookup`) and how they join the rows fetched from Redis (`merge`): the engine
decodes only the fetched rows and places the gathered ones beside them, so statuses, ages and
max age are computed from the same event times as for rows from Redis."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from featurewell.store.codec import DecodedRows, RowCodec
from featurewell.values import ColumnValues, Ragged


@dataclass(frozen=True, slots=True)
class Gathered:
    """One view's cached rows for one read: their positions in the read, their fixed-width
    fields (structured, the codec's layout) and presence, their stored bytes when the view has
    string or list features (None otherwise); and the positions of the read's other rows
    (`fetched`: from Redis, or its fallbacks)."""

    positions: npt.NDArray[np.intp]
    fetched: npt.NDArray[np.intp]
    fixed: npt.NDArray[Any]
    present: npt.NDArray[np.bool_]
    stored: npt.NDArray[Any] | None


def merge(
    codec: RowCodec,
    rows: Sequence[Any],
    cached: Gathered | None,
    wanted: Collection[str] | None,
    decoded: DecodedRows | None = None,
) -> DecodedRows:
    """The rows of one view for a read, decoded: the stored `rows` (those at `cached.fetched`,
    or all of them without `cached`) through the codec, and the `cached` ones beside them.
    `decoded`: `rows` already decoded (their fixed-width features), used when the read wants
    no other feature."""
    if cached is None:
        return _fetched_rows(codec, rows, wanted, decoded)
    hits = _cached_rows(codec, cached, wanted)
    positions, fetched = cached.positions, cached.fetched
    if not len(fetched):  # every row from memory: nothing else to decode
        return hits
    decoded = _fetched_rows(codec, rows, wanted, decoded)
    count = len(positions) + len(fetched)
    present = np.empty(count, np.bool_)
    present[positions], present[fetched] = hits.present, decoded.present
    event_time = np.empty(count, np.int64)
    event_time[positions], event_time[fetched] = hits.event_time_us, decoded.event_time_us
    values: dict[str, ColumnValues] = {}
    for name, column in decoded.values.items():
        mine = hits.values[name]
        if isinstance(column, Ragged) or isinstance(mine, Ragged):
            assert isinstance(column, Ragged)
            assert isinstance(mine, Ragged)
            lists: list[Any] = [None] * count
            for position, row in zip(positions.tolist(), range(len(mine)), strict=True):
                lists[position] = mine.row(row)
            for position, row in zip(fetched.tolist(), range(len(column)), strict=True):
                lists[position] = column.row(row)
            values[name] = Ragged.from_rows(lists, column.flat.dtype)
            continue
        out = np.empty((count, *column.shape[1:]), column.dtype)
        out[fetched], out[positions] = column, mine
        values[name] = out
    corrupt = None
    if decoded.corrupt is not None or hits.corrupt is not None:
        corrupt = np.zeros(count, np.bool_)
        if decoded.corrupt is not None:
            corrupt[fetched] = decoded.corrupt
        if hits.corrupt is not None:
            corrupt[positions] = hits.corrupt
    return DecodedRows(present, event_time, values, corrupt)


def _fetched_rows(
    codec: RowCodec,
    rows: Sequence[Any],
    wanted: Collection[str] | None,
    decoded: DecodedRows | None,
) -> DecodedRows:
    """`rows` decoded (the `wanted` features): `decoded` when it holds them all (the same
    decode of the same bytes), else through the codec."""
    if decoded is None or not _fixed_only(codec, wanted):
        return codec.decode(rows, wanted)
    values = decoded.values
    if wanted is not None and len(values) != len(wanted):
        values = {name: column for name, column in values.items() if name in wanted}
    return DecodedRows(decoded.present, decoded.event_time_us, values, decoded.corrupt)


def _cached_rows(codec: RowCodec, cached: Gathered, wanted: Collection[str] | None) -> DecodedRows:
    """The cached rows decoded: straight from the fixed-width block, unless the read wants a
    string or list feature (then through the codec, from the stored bytes, as if fetched)."""
    if cached.stored is not None and not _fixed_only(codec, wanted):
        return codec.decode(cached.stored.tolist(), wanted)
    return DecodedRows(
        cached.present,
        cached.fixed[time_field(codec)],
        {
            f.name: cached.fixed[f.name]
            for f in codec.view.features
            if wanted is None or f.name in wanted
        },
    )


def _fixed_only(codec: RowCodec, wanted: Collection[str] | None) -> bool:
    """Whether the read wants only fixed-width features (None: every feature)."""
    names = codec.fixed_names
    if wanted is None:
        return len(names) == len(codec.view.features)
    return names.issuperset(wanted)


def time_field(codec: RowCodec) -> str:
    """The event time's field in the codec's fixed block (always the first)."""
    names = codec.fixed_dtype.names
    assert names is not None
    return names[0]
