"""`featurewell parity`: sample live online values of computed views, recompute them with the
batch engine from the event log as of each row's time, and report how many differ.

A row's event time is the time its values are as of (the streaming engine and backfill write it
so), which is what makes the offline recomputation exact. The log must hold the events the stream
saw (its archive); an entity whose events the log lacks shows up as a mismatch, which is the point.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from featurewell.compute import batch
from featurewell.compute.program import ViewProgram, compile_view
from featurewell.definitions import EventSource, Registry
from featurewell.engine.calls import Budget, FeatureRequest, InputColumn
from featurewell.engine.engine import FeatureEngine
from featurewell.values import PRESENT, STALE


@dataclass
class FeatureParity:
    view: str
    feature: str
    compared: int = 0
    mismatched: int = 0
    examples: list[tuple[Any, Any, Any]] = field(default_factory=list)  # (entity, online, batch)

    @property
    def rate(self) -> float:
        return self.mismatched / self.compared if self.compared else 0.0


async def parity(
    registry: Registry,
    source: EventSource,
    engine: FeatureEngine,
    log: pa.Table,
    *,
    sample: int = 200,
    allowed_lateness_s: float = 3600.0,
    seed: int = 0,
) -> list[FeatureParity]:
    accepted = batch.accepted_events(log, int(allowed_lateness_s * 1e6))
    out: list[FeatureParity] = []
    for view in registry.views.values():
        if view.events is None or view.events.name != source.name:
            continue
        program = compile_view(view)
        out += await _view_parity(program, engine, accepted, sample, random.Random(seed))
    return out


async def _view_parity(
    program: ViewProgram,
    engine: FeatureEngine,
    accepted: pa.Table,
    sample: int,
    rng: random.Random,
) -> list[FeatureParity]:
    view = program.view
    names = list(view.entity.key_names)
    keys = sorted(set(zip(*(accepted.column(n).to_pylist() for n in names), strict=True)))
    chosen = rng.sample(keys, min(sample, len(keys)))
    results = [FeatureParity(view.ref, f.name) for f in view.features]
    if not chosen:
        return results
    request = FeatureRequest(
        tuple(f"{view.name}@v{view.version}:{f.name}" for f in view.features),
        {
            n: InputColumn(view.entity.join_keys[n].kind, [k[i] for k in chosen])
            for i, n in enumerate(names)
        },
        {},
        include_event_timestamps=True,
    )
    served = await engine.get_features(request, Budget(10.0))
    columns = served.columns
    stamps = columns[0].event_time_us
    assert stamps is not None
    statuses = columns[0].statuses
    for row, key in enumerate(chosen):
        if int(statuses[row]) not in (PRESENT, STALE):
            continue  # no row online for it (yet): nothing to compare
        as_of = int(stamps[row])
        offline = batch.compute(program, accepted, as_of).get(key) or [
            batch.empty_value(f) for f in program.features
        ]
        for n, result in enumerate(results):
            online = _value(columns[n].values, row)
            result.compared += 1
            if not _same(online, offline[n]):
                result.mismatched += 1
                if len(result.examples) < 3:
                    result.examples.append((key, online, offline[n]))
    return results


def render(results: Sequence[FeatureParity]) -> str:
    lines = [f"{'feature':<48} {'compared':>9} {'mismatched':>10} {'rate':>7}"]
    for r in results:
        lines.append(
            f"{r.view + ':' + r.feature:<48} {r.compared:>9} {r.mismatched:>10} {r.rate:>7.2%}"
        )
        for key, online, offline in r.examples:
            lines.append(f"    {key}: online {online!r}, batch {offline!r}")
    return "\n".join(lines)


def _value(values: Any, row: int) -> Any:
    value = values[row]
    return value.item() if isinstance(value, np.generic) else value


def _same(online: Any, offline: Any) -> bool:
    if isinstance(online, np.ndarray) or isinstance(offline, np.ndarray):
        return bool(
            np.allclose(np.asarray(online, float), np.asarray(offline, float), rtol=1e-5, atol=1e-6)
        )
    if isinstance(online, float) or isinstance(offline, float):
        # Float32 features are stored as float32: compare at that precision.
        return math.isclose(float(online), float(offline), rel_tol=1e-5, abs_tol=1e-6)
    return bool(online == offline)
