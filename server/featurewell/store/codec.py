"""Compact positional rows: one Redis value holds a whole feature-view row.

    row = fixed block | variable part
    fixed block    = event time (int64 µs, little-endian) then every fixed-width feature in schema
                     order (int64, float32, float64, bool as 1 byte, embeddings as dim float32)
    variable part  = for each string or list feature in schema order: uint32 byte length + bytes

The fixed block has the same size in every row of a view version, so a batch of rows decodes with
one `np.frombuffer` over their concatenation: no per-value Python work. The version in the key
binds a row to its schema, which is why a schema change needs a new view version.
"""

from __future__ import annotations

import logging
import struct
import time
from collections.abc import Collection, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt

from featurewell.definitions import Feature, FeatureView, Kind
from featurewell.errors import CorruptRow, InvalidRequest
from featurewell.values import ColumnValues, Ragged

log = logging.getLogger("featurewell.store")
_TS = "__event_time_us"
_U32 = struct.Struct("<I")
# numpy kinds a feature accepts: the same kind of number only (int64 <- ints, floats <- floats),
# since a silent int -> float or bool -> int cast is how training/serving skew creeps in
# unnoticed. The write validation (engine/feature_checks.py) checks the same rule first, so its
# refusal can name the row.
ACCEPTED_KINDS = {
    Kind.INT64: "iu",
    Kind.FLOAT32: "f",
    Kind.FLOAT64: "f",
    Kind.BOOL: "b",
    Kind.EMBEDDING: "f",
    Kind.INT64_LIST: "iu",
    Kind.FLOAT64_LIST: "f",
}


class DecodedRows(NamedTuple):
    """A view's rows for a batch of entities; missing entities hold the feature defaults.
    (Immutable, and built in C: one per view read on every call.)"""

    present: npt.NDArray[np.bool_]
    event_time_us: npt.NDArray[np.int64]
    values: dict[str, ColumnValues]
    corrupt: npt.NDArray[np.bool_] | None = None  # rows that did not decode (served as missing)


class RowCodec:
    """Encodes and decodes the rows of one feature view version."""

    def __init__(self, view: FeatureView) -> None:
        self.view = view
        fixed = [f for f in view.features if f.dtype.is_fixed_width]
        self._fixed = fixed
        self._variable = [f for f in view.features if not f.dtype.is_fixed_width]
        # What one `np.frombuffer` decodes: a read wanting only these never parses the rest.
        self.fixed_names = frozenset(f.name for f in fixed)
        fields: list[tuple[Any, ...]] = [(_TS, "<i8")]
        for feature in fixed:
            shape = (feature.dtype.dim,) if feature.dtype.kind is Kind.EMBEDDING else ()
            fields.append((feature.name, feature.dtype.element_dtype, shape))
        self.fixed_dtype = np.dtype(fields)
        self.fixed_size = self.fixed_dtype.itemsize

    # -- writing -------------------------------------------------------------------------------

    def encode(
        self, event_time_us: npt.NDArray[np.int64], columns: Mapping[str, ColumnValues]
    ) -> list[bytes]:
        """Rows for `len(event_time_us)` entities from one column per feature."""
        rows = len(event_time_us)
        block = np.zeros(rows, dtype=self.fixed_dtype)
        block[_TS] = event_time_us
        for feature in self._fixed:
            block[feature.name] = self._checked(feature, columns, rows)
        raw = block.tobytes()
        size = self.fixed_size
        fixed_rows = [raw[i * size : (i + 1) * size] for i in range(rows)]
        if not self._variable:
            return fixed_rows
        variable = [self._variable_payloads(f, columns, rows) for f in self._variable]
        return [
            b"".join((fixed, *(_U32.pack(len(p[i])) + p[i] for p in variable)))
            for i, fixed in enumerate(fixed_rows)
        ]

    def _checked(
        self, feature: Feature, columns: Mapping[str, ColumnValues], rows: int
    ) -> npt.NDArray[Any]:
        column = columns[feature.name]
        if isinstance(column, Ragged):
            raise InvalidRequest(f"feature {feature.name!r} is {feature.dtype}, got lists")
        dtype = feature.dtype
        tail = (dtype.dim,) if dtype.kind is Kind.EMBEDDING else ()
        array = np.asarray(column)
        if array.shape != (rows, *tail):
            raise InvalidRequest(
                f"feature {feature.name!r} ({dtype}) needs shape {(rows, *tail)}, got {array.shape}"
            )
        # Same kind of number only (int64 <- ints, floats <- floats): a silent int -> float or
        # bool -> int cast is how training/serving skew creeps in unnoticed.
        if array.dtype.kind not in ACCEPTED_KINDS[dtype.kind]:
            raise InvalidRequest(
                f"feature {feature.name!r} is {dtype}; got {array.dtype} values: convert them first"
            )
        return array

    def _variable_payloads(
        self, feature: Feature, columns: Mapping[str, ColumnValues], rows: int
    ) -> list[bytes]:
        column = columns[feature.name]
        if feature.dtype.kind is Kind.STRING:
            if isinstance(column, Ragged) or len(column) != rows:
                raise InvalidRequest(f"feature {feature.name!r} needs {rows} strings")
            if not all(isinstance(v, str) for v in column):
                raise InvalidRequest(f"feature {feature.name!r} is a string feature")
            return [v.encode() for v in column]
        if not isinstance(column, Ragged) or len(column) != rows:
            raise InvalidRequest(f"feature {feature.name!r} ({feature.dtype}) needs {rows} lists")
        flat = column.flat.astype(feature.dtype.element_dtype).tobytes()
        width = feature.dtype.element_dtype.itemsize
        offsets = (column.offsets.astype(np.int64) * width).tolist()
        return [flat[offsets[i] : offsets[i + 1]] for i in range(rows)]

    # -- reading -------------------------------------------------------------------------------

    def decode(self, rows: Sequence[Any], wanted: Collection[str] | None = None) -> DecodedRows:
        """Decode rows; only the features in `wanted` (default: all) are materialised, so a
        request for one embedding of a view with strings parses no strings.

        A row that does not decode (wrong size, bad lengths, invalid UTF-8, a negative event
        time, or not bytes at all: a WRONGTYPE reply) is served as missing and
        flagged in `corrupt`; the other rows decode as usual. The checks are bulk numpy on the
        usual path; only a batch holding a bad row pays for finding which one."""
        count = len(rows)
        present_rows = [r for r in rows if r is not None]
        if len(present_rows) == count:
            present = _ONE_PRESENT if count == 1 else np.ones(count, dtype=np.bool_)
        else:
            present = np.fromiter((r is not None for r in rows), dtype=np.bool_, count=count)
        corrupt: npt.NDArray[np.bool_] | None = None
        block = self._fixed_block(present_rows)
        if block is None or _negative_time(present_rows, block):
            corrupt = self._bad_fixed(rows)
        elif self._variable and (wanted is None or any(f.name in wanted for f in self._variable)):
            variable = self._decode_variable(present_rows, present)
            if variable is None:
                corrupt = self._bad_fixed(rows) | self._bad_variable(rows)
            else:
                return self._rows(count, present, block, wanted, variable, None)
        if corrupt is not None:
            if not corrupt.any():  # a check above missed which row: refuse them all, not loop
                corrupt = present.copy()
            # Decode again without the bad rows (rare: only batches holding one pay for it).
            kept = [None if bad else r for r, bad in zip(rows, corrupt.tolist(), strict=True)]
            decoded = self.decode(kept, wanted)
            if decoded.corrupt is not None:  # a bad variable part behind a bad fixed block
                corrupt |= decoded.corrupt
            else:
                _log_corrupt(self.view.ref, int(np.count_nonzero(corrupt)))
            return DecodedRows(decoded.present, decoded.event_time_us, decoded.values, corrupt)
        return self._rows(count, present, block, wanted, {}, None)

    def _rows(
        self,
        count: int,
        present: npt.NDArray[np.bool_],
        block: npt.NDArray[Any] | None,
        wanted: Collection[str] | None,
        variable: dict[str, ColumnValues],
        corrupt: npt.NDArray[np.bool_] | None,
    ) -> DecodedRows:
        assert block is not None
        all_present = len(block) == count
        if all_present:
            event_time = block[_TS].copy()  # contiguous, and the block stays read-only
        else:
            event_time = np.zeros(count, dtype=np.int64)
            event_time[present] = block[_TS]
        values: dict[str, ColumnValues] = {}
        for feature in self._fixed:
            if wanted is not None and feature.name not in wanted:
                continue
            stored = block[feature.name]
            if all_present:
                values[feature.name] = stored
            else:
                column = np.empty((count, *stored.shape[1:]), dtype=stored.dtype)
                column[...] = feature.default
                column[present] = stored
                values[feature.name] = column
        values.update(variable)
        return DecodedRows(present, event_time, values, corrupt)

    def _fixed_block(self, present_rows: list[Any]) -> npt.NDArray[Any] | None:
        """The rows' fixed blocks as one structured array; None when some row is not bytes of
        a size that fits (the caller then finds which)."""
        size = self.fixed_size
        try:
            if self._variable:
                if present_rows and min(map(len, present_rows)) < size:
                    return None
                joined = b"".join([r[:size] for r in present_rows])
            else:
                joined = b"".join(present_rows)
                if present_rows and set(map(len, present_rows)) != {size}:
                    return None
        except TypeError:  # a reply that is not bytes (a WRONGTYPE error)
            return None
        return np.frombuffer(joined, dtype=self.fixed_dtype)

    def _bad_fixed(self, rows: Sequence[Any]) -> npt.NDArray[np.bool_]:
        """Per row: not bytes, a fixed block of the wrong size, or a negative event time."""
        size, variable = self.fixed_size, bool(self._variable)
        bad = np.zeros(len(rows), dtype=np.bool_)
        for i, row in enumerate(rows):
            if row is None:
                continue
            bad[i] = (
                type(row) is not bytes
                or (len(row) < size if variable else len(row) != size)
                or int.from_bytes(row[:8], "little", signed=True) < 0
            )
        return bad

    def _bad_variable(self, rows: Sequence[Any]) -> npt.NDArray[np.bool_]:
        """Per row: a variable part that does not parse."""
        bad = np.zeros(len(rows), dtype=np.bool_)
        for i, row in enumerate(rows):
            if type(row) is bytes and len(row) >= self.fixed_size:
                present = np.ones(1, dtype=np.bool_)
                bad[i] = self._decode_variable([row], present) is None
        return bad

    def _decode_variable(
        self, present_rows: list[bytes], present: npt.NDArray[np.bool_]
    ) -> dict[str, ColumnValues] | None:
        """The variable features, or None when some row's variable part does not parse."""
        payloads: list[list[bytes]] = [[] for _ in self._variable]
        for row in present_rows:
            offset = self.fixed_size
            for slot in payloads:
                if offset + 4 > len(row):
                    return None
                (length,) = _U32.unpack_from(row, offset)
                offset += 4
                slot.append(row[offset : offset + length])
                offset += length
            if offset != len(row):
                return None
        out: dict[str, ColumnValues] = {}
        positions = np.flatnonzero(present).tolist()
        try:
            for feature, raw in zip(self._variable, payloads, strict=True):
                out[feature.name] = _assemble(feature, raw, positions, len(present))
        except ValueError:  # invalid UTF-8 (UnicodeDecodeError), a list of partial elements
            return None
        return out

    def corrupt_error(self, rows: int) -> CorruptRow:
        return CorruptRow(
            f"{rows} stored rows of feature view {self.view.ref!r} do not match its schema "
            "(a definition changed without a new version, or bytes written by something "
            "else): re-write them, or bump the version and re-materialize"
        )


# The presence of a single stored row, the most common batch there is (a model server's one
# entity): shared, so read-only (every consumer reads it; writing would raise, not corrupt).
_ONE_PRESENT = np.ones(1, dtype=np.bool_)
_ONE_PRESENT.flags.writeable = False


def _negative_time(present_rows: list[bytes], block: npt.NDArray[Any]) -> bool:
    """Whether some row's event time is negative: for one row, the sign bit of its little-endian
    int64 (byte 7), read without a numpy reduction."""
    if len(present_rows) == 1:
        return present_rows[0][7] >= 0x80
    return bool(len(block)) and int(block[_TS].min()) < 0


_CORRUPT_LOG_EVERY_S = 60.0
_corrupt_logged: dict[str, float] = {}


def _log_corrupt(view: str, rows: int) -> None:
    """A warning per view at most once a minute: a hot corrupt row is read thousands of times
    a second (the metric featurewell_corrupt_rows_total counts every one)."""
    now = time.monotonic()
    if now - _corrupt_logged.get(view, -_CORRUPT_LOG_EVERY_S) < _CORRUPT_LOG_EVERY_S:
        return
    if len(_corrupt_logged) > 4096:  # views of many reloads: keep it bounded
        _corrupt_logged.clear()
    _corrupt_logged[view] = now
    log.warning(
        "feature view %r: %d stored rows do not decode with its schema (served as DATA_LOSS "
        "with the defaults); re-write them",
        view,
        rows,
    )


def _assemble(feature: Feature, raw: list[bytes], positions: list[int], count: int) -> ColumnValues:
    if feature.dtype.kind is Kind.STRING:
        strings = np.full(count, feature.default, dtype=object)
        for position, payload in zip(positions, raw, strict=True):
            strings[position] = payload.decode()
        return strings
    dtype = feature.dtype.element_dtype
    default = np.asarray(feature.default, dtype=dtype)
    lists = [default] * count
    for position, payload in zip(positions, raw, strict=True):
        lists[position] = np.frombuffer(payload, dtype=dtype)
    return Ragged.from_rows(lists, dtype)
