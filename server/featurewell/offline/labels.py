"""Label timestamps as the offline join needs them: int64 µs since the epoch, checked.

A label table is hostile input like any other: a column in seconds or milliseconds would join as
moments in the first weeks of 1970 and give every value NOT_FOUND, exit 0. So integers whose
magnitude says seconds, milliseconds or nanoseconds are refused with the fix. Timestamps with a
finer unit than µs (pandas' datetime64[ns]) are truncated to µs: history times are whole µs, so
a history row known at or before the truncated time is exactly one known at or before the
original (c <= floor(t) iff c <= t for an integer c), and nothing changes but the unit.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pyarrow as pa

from featurewell.errors import InvalidRequest

# Integer magnitudes that mean another unit for dates 2001-09-09 .. 2286-11-20; as µs they would
# be minutes or months after 1970-01-01, or after year 33,000.
_OTHER_UNITS = (
    ("seconds", 10**9, 10**10, "multiply by 1,000,000 (or cast to timestamp[s])"),
    ("milliseconds", 10**12, 10**13, "multiply by 1,000 (or cast to timestamp[ms])"),
    ("nanoseconds", 10**18, 2**63, "divide by 1,000 (or cast to timestamp[ns])"),
)


def microseconds(column: pa.ChunkedArray, name: str) -> npt.NDArray[np.int64]:
    """`column` (a timestamp of any unit, or integer µs) as int64 µs since the epoch."""
    if pa.types.is_timestamp(column.type):
        if column.null_count:
            raise InvalidRequest(f"{name!r} has {column.null_count} empty timestamps")
        if column.type.unit == "ns":  # pandas: truncate the sub-µs part (see the docstring)
            return np.asarray(column.cast(pa.int64()).to_numpy(), dtype=np.int64) // 1000
        column = column.cast(pa.timestamp("us", tz=column.type.tz)).cast(pa.int64())
        return np.asarray(column.to_numpy(), dtype=np.int64)
    if not pa.types.is_integer(column.type):
        raise InvalidRequest(f"{name!r} must be a timestamp or integer µs, not {column.type}")
    if column.null_count:
        raise InvalidRequest(f"{name!r} has {column.null_count} empty timestamps")
    values = np.asarray(column.to_numpy(), dtype=np.int64)
    if len(values):
        largest = int(np.abs(values).max())
        for unit, low, high, fix in _OTHER_UNITS:
            if low <= largest < high:
                raise InvalidRequest(
                    f"{name!r} holds integers like {largest}, which look like {unit} since the "
                    f"epoch; label times are integer µs: {fix}"
                )
    return values
