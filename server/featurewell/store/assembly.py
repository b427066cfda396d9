"""From a batch's Redis replies to each entity read's rows per view, with the columnar cache's
part: the rows it answered (already gathered), the fetched rows it takes, and the fallbacks.

On the cached path the fetched rows are decoded here, once: the same `DecodedRows` answers the
read (`ViewRows.decoded`) and fills the cache's blocks with the rows it admits, so an admitted
row costs one numpy scatter instead of a second decode (it used to be decoded once for the answer
and again in `ColumnarCache.offer`)."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from featurewell.store import rowcheck
from featurewell.store.addressing import EntityRead
from featurewell.store.batch import Failure, NodeTiming
from featurewell.store.cache import MISS, Group
from featurewell.store.codec import DecodedRows, RowCodec
from featurewell.store.columnar import ColumnarCache, Gathered, merge
from featurewell.values import FALLBACK, FALLBACK_CACHE


@dataclass(slots=True)
class ViewRows:
    """One view's stored rows for one entity read (None where Redis has none). Rows Redis could
    not serve carry a `fallback` status (FALLBACK_CACHE with the cached row, or FALLBACK with
    None, so the default) and the `FailureReason` in `reasons`; both are None when every row
    was served. When the columnar cache answered some rows, they are already decoded in
    `cached`, and `rows` holds only the others (at `cached.fetched`): `decode` puts both
    together. `decoded`, when set, is `rows` already decoded (their fixed-width features):
    `decode` uses it when those are all the read wants."""

    rows: list[bytes | None]
    fallback: npt.NDArray[np.uint8] | None = None
    reasons: npt.NDArray[np.uint8] | None = None
    cached: Gathered | None = None
    decoded: DecodedRows | None = None

    def decode(self, codec: RowCodec, wanted: Collection[str] | None = None) -> DecodedRows:
        """Every row decoded (only the `wanted` features), cached or fetched."""
        return merge(codec, self.rows, self.cached, wanted, self.decoded)


@dataclass(frozen=True, slots=True)
class StoreRead:
    views: list[list[ViewRows]]  # [entity read][view]
    failures: list[Failure]  # which nodes failed and why, for strict errors and logs
    timings: list[NodeTiming]  # each node batch, for telemetry


@dataclass(slots=True)
class Pending:
    """An entity read's rows that need Redis: `rows` (None: all), at `start` in the batch, and
    when the read uses the cache, what the cache answered (each view's rows, decoded), and
    the codecs that decode what it is offered."""

    read: EntityRead
    start: int
    rows: list[int] | None
    group: Group = ()  # the read's key prefixes: its rows' identity in the cache
    codecs: Sequence[RowCodec] = ()  # set when the read uses the cache
    cached: list[Gathered] | None = None
    to_cache: list[int] | None = None  # positions in `rows` the cache takes once fetched


def assemble(
    cache: ColumnarCache | None,
    pending: Pending,
    replies: list[Any],
    failed: npt.NDArray[np.uint8] | None,
    now: float,
    since: int,
    errors: bool,
) -> list[ViewRows]:
    """The read's rows per view from its replies (`errors`: some reply of the batch may be an
    error reply, which the cache must not keep)."""
    read, start = pending.read, pending.start
    views = len(read.prefixes)
    fetched_rows = range(len(read.tags)) if pending.rows is None else pending.rows
    part = replies[start : start + len(fetched_rows)]
    reasons = failed[start : start + len(fetched_rows)] if failed is not None else None
    if reasons is not None and not reasons.any():
        reasons = None
    if reasons is None:
        if cache is not None and pending.to_cache and pending.codecs:
            return _admit(cache, pending, part, fetched_rows, now, since, errors)
        return per_view(part, views, pending.cached)
    # Rows Redis did not serve (rare): the cached reply if within the fallback horizon, else no
    # row (the engine serves the defaults), each flagged with the status and the reason.
    empty = None if views == 1 else (None,) * views
    merged: list[Any] = list(part)
    to_cache = frozenset(pending.to_cache or ())
    served_tags: list[bytes] = []
    served: list[Any] = []
    fallback = np.zeros(len(read.tags), dtype=np.uint8)
    why = np.zeros(len(read.tags), dtype=np.uint8)
    uses_cache = cache is not None and bool(pending.codecs)
    for j, r in enumerate(fetched_rows):
        if not reasons[j]:
            if j in to_cache and rowcheck.cacheable(part[j]):
                served_tags.append(read.tags[r])
                served.append(part[j])
            continue
        row: Any = MISS
        if cache is not None and uses_cache:
            row = cache.fallback(pending.group, read.tags[r], now)
        fallback[r] = FALLBACK if row is MISS else FALLBACK_CACHE
        merged[j] = empty if row is MISS else row
        why[r] = reasons[j]
    if cache is not None and uses_cache and served:
        cache.offer(pending.group, pending.codecs, served_tags, served, read.cache_ttl, now, since)
    out = per_view(merged, views, pending.cached)
    for view in out:
        view.fallback, view.reasons = fallback, why
    return out


def _admit(
    cache: ColumnarCache,
    pending: Pending,
    part: list[Any],
    fetched_rows: Sequence[int],
    now: float,
    since: int,
    errors: bool,
) -> list[ViewRows]:
    """Every fetched row served: decode them once per view, answer with that and let the cache
    take the chosen ones from it."""
    read, codecs = pending.read, pending.codecs
    views = len(codecs)
    raw = [part] if views == 1 else [[row[v] for row in part] for v in range(views)]
    decoded = [
        codec.decode(rows, codec.fixed_names) for codec, rows in zip(codecs, raw, strict=True)
    ]
    chosen = pending.to_cache or []
    if errors:  # an error reply (a WRONGTYPE row) is read again each time, never kept
        chosen = [j for j in chosen if rowcheck.cacheable(part[j])]
    if chosen:
        tags = read.tags if pending.rows is None else [read.tags[r] for r in fetched_rows]
        cache.offer_decoded(
            pending.group,
            codecs,
            tags,
            part,
            raw,
            decoded,
            chosen,
            read.cache_ttl,
            now,
            since,
            later=True,  # once the answer is on its way
        )
    cached = pending.cached
    return [
        ViewRows(raw[v], cached=cached[v] if cached is not None else None, decoded=decoded[v])
        for v in range(views)
    ]


def per_view(
    replies: list[Any], views: int, cached: list[Gathered] | None = None
) -> list[ViewRows]:
    """Per-view row lists from one reply per row (a GET's row, or an MGET's list of rows),
    with each view's rows from the cache."""
    if cached is not None:
        if views == 1:
            return [ViewRows(replies, cached=cached[0])]
        return [ViewRows([row[v] for row in replies], cached=cached[v]) for v in range(views)]
    if views == 1:
        return [ViewRows(replies)]
    return [ViewRows([row[v] for row in replies]) for v in range(views)]


def failed_commands(failures: list[Failure], count: int) -> npt.NDArray[np.uint8] | None:
    """Per command, the `FailureReason` that left it without a reply (0: served)."""
    if not failures:
        return None
    reasons = np.zeros(count, dtype=np.uint8)
    for failure in failures:
        reasons[failure.indexes] = failure.reason
    return reasons
