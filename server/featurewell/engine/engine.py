"""The serving engine: validated domain requests in, typed columns with per-value status out.

Knows nothing of gRPC. Per call it does O(rows) work only where it must (building key tags) and
everything else in bulk: one store round trip for all views and entities, numpy decoding per view,
vectorised transforms.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt

from featurewell.definitions import Entity, FeatureType, FeatureView, Kind, Registry
from featurewell.engine.calls import (
    Budget,
    CallTimings,
    FallbackCount,
    FeatureRequest,
    FeatureResult,
    InputColumn,
    ResultColumn,
    ServedView,
    WriteRequest,
    WriteResult,
)
from featurewell.engine.failures import count_fallbacks, strict_failure
from featurewell.engine.plan import Plan, Planner, ViewRead
from featurewell.engine.validation import (
    Problem,
    WriteRules,
    check_kind,
    check_write,
    entity_key_problem,
    refusal,
    write_view,
)
from featurewell.errors import (
    EntityNotFound,
    InvalidRequest,
    RequestError,
    shown,
)
from featurewell.settings import CacheSettings, ServingSettings
from featurewell.store.addressing import EntityRows
from featurewell.store.breaker import timeout_counts
from featurewell.store.codec import DecodedRows
from featurewell.store.keys import KeyColumn
from featurewell.store.online import OnlineStore
from featurewell.values import (
    DATA_LOSS,
    NOT_FOUND,
    PRESENT,
    STALE,
    presence_statuses,
    worst_status,
)

log = logging.getLogger("featurewell.engine")


class _Fetched(NamedTuple):
    rows: DecodedRows
    statuses: npt.NDArray[np.uint8]


class FeatureEngine:
    """Serves one registry at a time; `prepare` + `use` swap in a new one atomically (a call in
    flight finishes with the planner it started with)."""

    def __init__(
        self,
        registry: Registry,
        store: OnlineStore,
        limits: ServingSettings | None = None,
        cache: CacheSettings | None = None,
    ) -> None:
        self.store = store
        self.limits = limits if limits is not None else ServingSettings()
        self.cache = cache if cache is not None else CacheSettings()
        self.rules = WriteRules.from_settings(self.limits)
        self.planner = self._planner(registry)

    @property
    def registry(self) -> Registry:
        return self.planner.registry

    def prepare(self, registry: Registry) -> Planner:
        """A planner for `registry` with the plans callers use already built (safe to run in a
        thread while this engine serves)."""
        planner = self._planner(registry)
        for references in self.planner.cached_references():
            with contextlib.suppress(RequestError):  # a view the new repo no longer has
                planner.plan(references)
        return planner

    def use(self, planner: Planner) -> None:
        """Serve `planner`'s registry from the next call on: one assignment, so a call in
        flight finishes with the definitions it started with."""
        self.planner = planner

    def _planner(self, registry: Registry) -> Planner:
        ttl = self.cache.ttl_s if self.store.cache is not None else 0.0
        return Planner(registry, cache_ttl_s=ttl, cache_ttl_fraction=self.cache.ttl_fraction)

    async def get_features(self, request: FeatureRequest, budget: Budget) -> FeatureResult:
        if len(request.features) > self.limits.max_features:
            raise InvalidRequest(
                f"{len(request.features)} feature references exceed the limit of "
                f"{self.limits.max_features} per call; split the request"
            )
        plan = self.planner.plan(request.features)
        rows = self._row_count(request, plan)
        timings = CallTimings()
        fetched, fallbacks = await self._fetch(plan, request, rows, budget, timings)
        if request.strict:
            self._require_intact(plan, fetched)
            self._require_present(plan, fetched)
        columns: list[ResultColumn] = []
        computed = self._run_transforms(plan, fetched, request.context, rows, timings)
        for output in plan.outputs:
            if output.read is not None:
                got = fetched[id(output.read)]
                columns.append(
                    ResultColumn(
                        name=output.name,
                        dtype=output.feature.dtype,
                        values=got.rows.values[output.feature.name],
                        statuses=got.statuses,
                        event_time_us=got.rows.event_time_us
                        if request.include_event_timestamps
                        else None,
                        entity=output.read.view.entity.name,
                        version=output.read.view.version,
                    )
                )
            else:
                assert output.transform is not None
                values, statuses = computed[output.transform.name]
                columns.append(
                    ResultColumn(
                        name=output.name,
                        dtype=output.feature.dtype,
                        values=values[output.feature.name],
                        statuses=statuses,
                        event_time_us=None,
                        entity="",
                        version=0,
                    )
                )
        served = [
            ServedView(read.view, fetched[id(read)].rows, fetched[id(read)].statuses)
            for group in plan.groups
            for read in group.reads
        ]
        return FeatureResult(rows, columns, fallbacks, served, timings)

    # -- validation ----------------------------------------------------------------------------

    def _check_key_sizes(self, name: str, values: Sequence[str]) -> None:
        """No row can be stored under a key longer than writes accept, so reading one only
        costs Redis and the cache: refused, with the limit named. One C-level pass over the
        lengths; bytes are counted only when some value could be over (UTF-8: <= 4 per char)."""
        limit = self.rules.max_entity_key_bytes
        if max(map(len, values)) * 4 <= limit:
            return
        for value in values:
            if len(value) > limit // 4 and len(value.encode("utf-8", "surrogatepass")) > limit:
                raise InvalidRequest(
                    f"entity key {shown(name)}: {entity_key_problem(value, self.rules)}"
                )

    def _row_count(self, request: FeatureRequest, plan: Plan) -> int:
        known = self.registry.join_keys
        empty = [
            k for k, c in (*request.entities.items(), *request.context.items()) if not c.values
        ]
        if empty:
            raise InvalidRequest(
                f"empty batch: columns {', '.join(map(shown, empty[:5]))} have no values"
            )
        for name, column in request.entities.items():
            expected = known.get(name)
            if expected is None:
                raise InvalidRequest(
                    f"unknown entity key {shown(name)}; known keys: {sorted(known)}"
                )
            check_kind(f"entity key {name!r}", expected, column)
            if expected.kind is Kind.STRING:
                self._check_key_sizes(name, column.values)
        needed = {key for entity in plan.entities for key in entity.key_names}
        for entity in plan.entities:
            for key in entity.key_names:
                if key not in request.entities:
                    raise InvalidRequest(
                        f"features of entity {entity.name!r} need entity key {key!r}; "
                        f"send entities={{'{key}': [...]}}"
                    )
        for name, field_type in plan.context.items():
            given = request.context.get(name)
            if given is None:
                raise InvalidRequest(
                    f"the requested on-demand features need request context {name!r} "
                    f"({field_type}); send context={{'{name}': [...]}}"
                )
            check_kind(f"context {name!r}", field_type, given)
        lengths = {
            f"entity key {k!r}": len(c.values) for k, c in request.entities.items() if k in needed
        }
        lengths.update({f"context {k!r}": len(request.context[k].values) for k in plan.context})
        rows = max(lengths.values())
        if rows > self.limits.max_rows:
            raise InvalidRequest(
                f"batch of {rows} rows exceeds the limit of {self.limits.max_rows}; split it"
            )
        wrong = {what: n for what, n in lengths.items() if n not in (1, rows)}
        if wrong:
            raise InvalidRequest(f"column lengths must be 1 (broadcast) or {rows}; got {wrong}")
        return rows

    # -- reading -------------------------------------------------------------------------------

    async def _fetch(
        self, plan: Plan, request: FeatureRequest, rows: int, budget: Budget, timings: CallTimings
    ) -> tuple[dict[int, _Fetched], list[FallbackCount]]:
        entities = request.entities
        reads = [
            EntityRows(group.views, _key_columns(group.entity, entities), rows, group.cache_ttl_s)
            for group in plan.groups
        ]
        # A timeout counts against the node whatever set the budget, unless the budget was too
        # short to say anything of the node (store/breaker.py).
        timings.store_started_ns = time.perf_counter_ns()
        stored = await self.store.read(
            reads, budget.seconds, count_timeouts=timeout_counts(budget.seconds)
        )
        timings.store_ended_ns = time.perf_counter_ns()
        timings.nodes = stored.timings
        if stored.failures and request.strict:
            raise strict_failure(stored.failures, budget)
        now_us = time.time_ns() // 1000
        fetched: dict[int, _Fetched] = {}
        fallbacks: list[FallbackCount] = []
        for group, views in zip(plan.groups, stored.views, strict=True):
            for read, wanted, got in zip(group.reads, group.wanted, views, strict=True):
                decoded = got.decode(read.codec, wanted)
                statuses = _statuses(read, decoded, now_us)
                if got.fallback is not None and got.reasons is not None:
                    statuses = np.where(got.fallback > 0, got.fallback, statuses)
                    fallbacks += count_fallbacks(read, got.fallback, got.reasons)
                fetched[id(read)] = _Fetched(decoded, statuses)
        return fetched, fallbacks

    def _require_intact(self, plan: Plan, fetched: Mapping[int, _Fetched]) -> None:
        """Strict mode: a corrupt row fails the call (DATA_LOSS) rather than serving defaults."""
        for read in (read for group in plan.groups for read in group.reads):
            corrupt = fetched[id(read)].rows.corrupt
            if corrupt is not None:
                raise read.codec.corrupt_error(int(np.count_nonzero(corrupt)))

    def _require_present(self, plan: Plan, fetched: Mapping[int, _Fetched]) -> None:
        for read in (read for group in plan.groups for read in group.reads):
            got = fetched[id(read)]
            missing = int(np.count_nonzero(~got.rows.present))
            if missing:
                raise EntityNotFound(
                    f"strict: {missing} of {len(got.rows.present)} entities have no row in "
                    f"feature view {read.view.ref!r}"
                )

    def _run_transforms(
        self,
        plan: Plan,
        fetched: Mapping[int, _Fetched],
        context: Mapping[str, InputColumn],
        rows: int,
        timings: CallTimings,
    ) -> dict[str, tuple[dict[str, npt.NDArray[Any]], npt.NDArray[np.uint8]]]:
        out: dict[str, tuple[dict[str, npt.NDArray[Any]], npt.NDArray[np.uint8]]] = {}
        for step in plan.transforms:
            transform = step.transform
            columns: dict[str, Any] = {}
            statuses: list[npt.NDArray[np.uint8]] = []
            for alias, read, feature_name in step.inputs:
                got = fetched[id(read)]
                columns[alias] = got.rows.values[feature_name]
                statuses.append(got.statuses)
            for name, field_type in transform.context.items():
                columns[name] = _context_array(field_type, context[name].values)
            started = time.perf_counter_ns()
            values = transform.apply(columns, rows)
            timings.transforms.append((transform.name, started, time.perf_counter_ns()))
            width = max(len(v) for v in values.values())
            status = worst_status(statuses) if statuses else np.full(1, PRESENT, np.uint8)
            if len(status) != width:
                status = np.broadcast_to(status, (width,)).copy()
            out[transform.name] = (values, status)
        return out

    # -- writing -------------------------------------------------------------------------------

    async def write(self, request: WriteRequest) -> WriteResult:
        """Write whole rows, or nothing: a request with any problem (engine/validation.py) is
        refused as InvalidRequest naming its first problems and how many there are."""
        view, problems = self.check_write(request)
        if problems:
            raise InvalidRequest(refusal(f"write to {view.ref!r} refused", problems))
        encoded = self.planner.read_of(view).codec.encode(request.event_time_us, request.features)
        outcome = await self.store.write(
            view,
            _key_columns(view.entity, request.entities),
            encoded,
            request.event_time_us,
            timeout=self.limits.write_timeout_s,
        )
        return WriteResult(view.ref, outcome.written, outcome.skipped_older)

    def check_write(self, request: WriteRequest) -> tuple[FeatureView, list[Problem]]:
        """The view `request` writes and every problem of its values (none: it can be written).
        A request of the wrong shape raises at once (engine/validation.py `write_view`)."""
        view = write_view(self.registry, request, self.limits.max_rows)
        return view, check_write(view, request, self.rules, time.time_ns() // 1000)


def _key_columns(entity: Entity, entities: Mapping[str, InputColumn]) -> list[KeyColumn]:
    """The entity's key columns in key order, as the store takes them."""
    columns = [entities[key].values for key in entity.key_names]
    for key, column in zip(entity.key_names, columns, strict=True):
        if entity.join_keys[key].kind is Kind.STRING and "" in column:
            raise InvalidRequest(f"entity key {key!r} has an empty string value")
    return columns


# One row's status column per status (shared, so read-only): a single-entity call's statuses
# without numpy work, the path model servers take on every call.
_ONE_STATUS = {status: np.full(1, status, np.uint8) for status in (PRESENT, NOT_FOUND, STALE)}
for _column in _ONE_STATUS.values():
    _column.flags.writeable = False


def _statuses(read: ViewRead, decoded: DecodedRows, now_us: int) -> npt.NDArray[np.uint8]:
    if len(decoded.present) == 1 and decoded.corrupt is None:
        if not decoded.present[0]:
            return _ONE_STATUS[NOT_FOUND]
        if read.max_age_us and int(decoded.event_time_us[0]) < now_us - read.max_age_us:
            return _ONE_STATUS[STALE]
        return _ONE_STATUS[PRESENT]
    statuses = presence_statuses(decoded.present)
    if decoded.corrupt is not None:
        statuses[decoded.corrupt] = DATA_LOSS
    if read.max_age_us:
        # Missing rows have event time 0, so they look stale too: keep them NOT_FOUND.
        stale = (decoded.event_time_us < now_us - read.max_age_us) & decoded.present
        if stale.any():
            statuses[stale] = STALE
    return statuses


def _context_array(field_type: FeatureType, values: Sequence[Any]) -> npt.NDArray[Any]:
    if field_type.kind is Kind.STRING:
        return np.array(values, dtype=object)
    return np.asarray(values, dtype=field_type.element_dtype)
