"""`featurewell repair`: find and delete rows poisoned by a future event time.

Such a row (written before writes were validated, or by hand) shadows every later write of its
entity: each is skipped as older, and the row never goes STALE. Repair deletes the row (the next
write lands again) only while its stored time is beyond now + `max_future_skew_s`, the same
bound writes are held to, so a sound row is never deleted; `dry_run` only reports.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from featurewell.definitions import FeatureView, Kind
from featurewell.errors import ConfigError
from featurewell.store import repair
from featurewell.store.cluster import ClusterClient
from featurewell.store.keys import KeyColumn

PoisonedRow = repair.PoisonedRow


@dataclass(frozen=True, slots=True)
class Repair:
    view: str
    cutoff_us: int
    rows: list[PoisonedRow]  # found beyond the cutoff
    deleted: list[bool]  # per row (empty on a dry run)
    marker_newest_us: int  # the write marker's newest event time before the repair
    marker_reset: bool
    dry_run: bool


async def repair_view(
    cluster: ClusterClient,
    view: FeatureView,
    entities: Mapping[str, Sequence[str]] | None,
    max_future_skew_s: float,
    *,
    dry_run: bool = False,
    timeout: float = 10.0,
) -> Repair:
    """Repair `view`'s rows of `entities` (key -> values as typed on the command line), or of
    every entity it has (`None`: a SCAN of every master)."""
    cutoff_us = time.time_ns() // 1000 + int(max_future_skew_s * 1_000_000)
    if entities is None:
        rows = await repair.scan_future_rows(cluster, view, cutoff_us, timeout)
    else:
        columns, count = key_columns(view, entities)
        rows = await repair.future_rows(cluster, view, columns, count, cutoff_us, timeout)
    newest = await repair.marker_newest_event(cluster, view, timeout)
    if dry_run:
        return Repair(view.ref, cutoff_us, rows, [], newest, False, True)
    deleted = await repair.delete_future_rows(cluster, rows, cutoff_us, timeout)
    reset = await repair.reset_future_marker(cluster, view, cutoff_us, timeout)
    return Repair(view.ref, cutoff_us, rows, deleted, newest, reset, False)


def key_columns(
    view: FeatureView, entities: Mapping[str, Sequence[str]]
) -> tuple[list[KeyColumn], int]:
    """The entity's key columns from text values, checked against its keys and their types."""
    entity = view.entity
    keys = entity.key_names
    if set(entities) != set(keys):
        raise ConfigError(
            f"view {view.ref!r} (entity {entity.name!r}) is keyed by {list(keys)}: give "
            f"--entity KEY=VALUE for each, got {sorted(entities)}"
        )
    counts = {len(entities[key]) for key in keys}
    if len(counts) != 1:
        raise ConfigError(f"give the same number of values for each key of {list(keys)}")
    columns: list[KeyColumn] = []
    for key in keys:
        values = list(entities[key])
        if entity.join_keys[key].kind is Kind.INT64:
            try:
                columns.append([int(value) for value in values])
            except ValueError:
                raise ConfigError(f"entity key {key!r} takes integers, got {values}") from None
        else:
            columns.append(values)
    return columns, counts.pop()


def render(done: Repair) -> str:
    lines = [
        f"{done.view}: {len(done.rows)} rows with an event time beyond now + max_future_skew "
        f"({done.cutoff_us} µs)"
    ]
    outcomes = done.deleted or [False] * len(done.rows)
    for row, deleted in zip(done.rows, outcomes, strict=True):
        verb = (
            "would delete" if done.dry_run else "deleted" if deleted else "kept (rewritten since)"
        )
        ahead_s = (row.event_time_us - done.cutoff_us) / 1e6
        lines.append(
            f"  {verb} {done.view} entity {row.entity}: stored event time "
            f"{row.event_time_us} µs ({ahead_s:,.0f} s past the cutoff)"
        )
    if done.marker_newest_us > done.cutoff_us:
        action = "would reset" if done.dry_run else "reset" if done.marker_reset else "kept"
        lines.append(f"  write marker: newest event time {done.marker_newest_us} µs, {action}")
    if not done.dry_run:
        count = sum(done.deleted)
        lines.append(f"{done.view}: {count} rows deleted; the next write of each lands")
    return "\n".join(lines)
