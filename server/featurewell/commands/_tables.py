"""Plain-text tables and JSON for `featurewell get` and `featurewell list`: what a person reads
in a terminal, and what a script parses."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import numpy as np
from google.protobuf import json_format

from featurewell.client import FeatureResult, Status, ViewStatus
from featurewell.v1 import feature_service_pb2 as pb

MAX_ITEMS = 6  # embedding and list cells show this many values, then "..."


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    return "\n".join(lines)


def cell(value: Any, full: bool = False) -> str:
    """A value as a person reads it: `0.3`, not `np.float32(0.3)`; long vectors cut short."""
    if isinstance(value, np.ndarray):
        items = [cell(v) for v in value.tolist()]
        if not full and len(items) > MAX_ITEMS:
            return f"[{', '.join(items[:MAX_ITEMS])}, ...] ({len(items)})"
        return f"[{', '.join(items)}]"
    if isinstance(value, np.generic):
        return str(value)  # numpy's shortest round-trip text for its own precision
    if isinstance(value, float):
        return repr(value)
    return str(value)


def plain(value: Any) -> Any:
    """A value as JSON: numbers, strings, lists."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.floating):
        return float(str(value))  # float32 0.3 stays 0.3, not 0.30000001192092896
    if isinstance(value, np.generic):
        return value.item()
    return value


def age(stamp_us: int, now_s: float) -> str:
    if stamp_us <= 0:
        return "-"
    seconds = max(0.0, now_s - stamp_us / 1e6)
    for unit, size in (("d", 86_400), ("h", 3_600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f} {unit}"
    return f"{seconds:.1f} s"


def _row_cells(result: FeatureResult, name: str, row: int) -> tuple[Any, str, int]:
    column = result[name]
    index = row if column.length > 1 else 0
    values = column.values
    value = values[index]
    status = Status(int(column.statuses[index])).name
    stamps = column.event_time_us
    return value, status, int(stamps[index]) if stamps is not None else 0


def get_table(result: FeatureResult, entities: dict[str, list[Any]], now_s: float) -> str:
    rows = []
    for row in range(result.rows):
        keys = ", ".join(f"{k}={v[row if len(v) > 1 else 0]}" for k, v in entities.items())
        for name in result:
            value, status, stamp = _row_cells(result, name, row)
            rows.append([keys, name, cell(value), status, age(stamp, now_s)])
    out = table(["entity", "feature", "value", "status", "age"], rows)
    notes = [f"deprecated: {notice}" for notice in result.deprecations]
    notes += [
        f"fallback: {f.view} {f.reason.name} ({f.from_cache} from cache, {f.from_default} defaults)"
        for f in result.fallbacks
    ]
    return "\n".join([out, *notes])


def get_json(result: FeatureResult, entities: dict[str, list[Any]], now_s: float) -> str:
    rows = []
    for row in range(result.rows):
        features = {}
        for name in result:
            value, status, stamp = _row_cells(result, name, row)
            features[name] = {
                "value": plain(value),
                "status": status,
                "event_time_us": stamp or None,
                "age_s": round(now_s - stamp / 1e6, 3) if stamp else None,
            }
        keys = {k: plain(v[row if len(v) > 1 else 0]) for k, v in entities.items()}
        rows.append({"entity": keys, "features": features})
    fallbacks = [
        {"view": f.view, "reason": f.reason.name, "from_cache": f.from_cache}
        | {"from_default": f.from_default}
        for f in result.fallbacks
    ]
    return json.dumps(
        {"rows": rows, "deprecations": result.deprecations, "fallbacks": fallbacks}, indent=2
    )


def list_table(catalog: pb.ListFeaturesResponse) -> str:
    rows = []
    for view in catalog.views:
        status = ViewStatus(view.status).name if view.status else "-"
        if view.HasField("deprecation"):
            gone = view.deprecation
            status += f" -> {gone.replacement or '?'}"
            status += f" on {gone.removal_date}" if gone.removal_date else ""
        tags = ",".join(f"{k}={v}" for k, v in sorted(view.tags.items()))
        rows.append(
            [
                f"{view.name}@v{view.version}",
                status,
                view.entity,
                view.owner or "-",
                str(len(view.features)),
                _span(view.freshness_sla_seconds),
                tags or "-",
                view.description,
            ]
        )
    header = ["view", "status", "entity", "owner", "features", "sla", "tags", "description"]
    out = table(header, rows) if rows else "no view matches"
    if catalog.on_demand:
        names = ", ".join(t.name for t in catalog.on_demand)
        out += f"\non-demand transforms: {names}"
    return out


def list_json(catalog: pb.ListFeaturesResponse) -> str:
    return json.dumps(
        json_format.MessageToDict(catalog, preserving_proto_field_name=True), indent=2
    )


def _span(seconds: float) -> str:
    if not seconds:
        return "-"
    for unit, size in (("d", 86_400), ("h", 3_600), ("min", 60)):
        if seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"
