"""Answers to hot single-entity calls, kept ready while the hot-key cache holds their rows.

A model server asks for the same features of the same hot entities again and again. When every
row such a call reads is a fresh entry of the hot-key cache (store/cache.py), the answer is a
function of those entries alone, so the engine's batch machinery (planning, addressing, the
columnar gather, numpy statuses, packing the response) computes the same thing on every call.
This module keeps that answer, keyed by the request's bytes, next to the *identities* of the
cache entries it was built from, and serves it while those very entries are still fresh:

- **Freshness is the cache's.** Each call looks its rows up in the `HotKeyCache` (`peek`,
  uncounted; a served answer counts its rows as hits): an answer is served only if every row
  is the same entry object it was built from. An entry never changes in place (a fresh entry
  is only ever dropped: by a write through this server, a Redis tracking invalidation, its TTL,
  eviction, or all at once when invalidations may have been lost), and a refetched row is a
  new object, so an answer can never outlive its rows (docs/caching.md's bound holds unchanged).
- **Only answers every path would give alike.** Kept: one row per entity, no on-demand
  transforms (they may read the clock), every value PRESENT, no fallbacks. Served only while
  no row has gone past its view's max age (past it the engine answers, with STALE). The
  registry in use is part of the key: a reload starts afresh.
- **Late in a TTL, the engine answers.** With refresh-ahead on (store/refresh.py), the calls
  made in the last part of a row's TTL go to the engine, whose cache lookup notes the row for a
  refresh; the refreshed row is a new entry, and the next call keeps a new answer. (Served from
  here to the end, a hot row would expire under its callers: refresh-ahead never hears of it.)
- **Learned from the engine.** On a call without a kept answer, `before` notes the cache
  entries the call will read (if they are all fresh already), the engine answers as always, and
  `learn` keeps the answer if the same entries are still fresh afterwards: the engine read
  them, decoded, from the columnar copy that leaves the cache with them.

Authorisation, admission, deprecation notices, sampling and telemetry stay in the servicer and
run for every call alike; a kept answer only replaces `engine.get_features` + the response's
packing. The cost of a miss is a dict lookup; of a call that cannot be kept, a few checks.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, NamedTuple

from featurewell.engine.calls import CallTimings, FeatureRequest, FeatureResult
from featurewell.engine.engine import FeatureEngine
from featurewell.engine.plan import Planner
from featurewell.errors import RequestError
from featurewell.store.addressing import Addresses
from featurewell.store.cache import Group, HotKeyCache
from featurewell.store.keys import entity_tags
from featurewell.v1 import feature_service_pb2 as pb
from featurewell.values import PRESENT

# Bounds: answers are kept for hot entities only, so a few thousand cover a model server's hot
# set; requests past this size (many features, long ids) are left to the engine.
MAX_ANSWERS = 4096
MAX_REQUEST_BYTES = 2048

_Rows = tuple[tuple[Group, bytes, Any], ...]  # (group, tag, the entry it read), per group


class Kept(NamedTuple):
    """A kept answer: the parsed request (for authorisation, faults and sampling), the result
    (for telemetry and notices) and the response message, the same objects for every call it
    answers. The result has no timings (a store span, a store reply): no store was asked, as
    for a call the cache answered whole; the servicer takes the time it found the answer."""

    request: FeatureRequest
    result: FeatureResult
    response: pb.GetFeaturesResponse


@dataclass(frozen=True, slots=True)
class _Answer:
    planner: Planner
    rows: _Rows
    stale_at_us: int  # the answer's values turn STALE after this instant (0: never)
    refresh_at: float  # from this monotonic instant calls go to the engine (see the docstring)
    kept: Kept


@dataclass(frozen=True, slots=True)
class Before:
    """What `before` saw of a call that may be kept: its key, the planner it runs with, the
    cache entries it reads and its views' max ages (per read, in the result's served order)."""

    key: bytes
    planner: Planner
    rows: _Rows
    max_ages_us: tuple[int, ...]
    request: FeatureRequest
    refresh_at: float


class SingleAnswers:
    def __init__(self, engine: FeatureEngine, max_answers: int = MAX_ANSWERS) -> None:
        self.engine = engine
        self.max_answers = max_answers
        self.served = 0  # answers served from here (also counted as the cache's hits)
        self._answers: dict[bytes, _Answer] = {}
        self._addresses = Addresses()

    def __len__(self) -> int:
        return len(self._answers)

    def _rows_cache(self) -> HotKeyCache | None:
        cache = self.engine.store.cache
        return cache.rows if cache is not None else None

    def answer(self, request: object) -> Kept | None:
        """The kept answer to `request` (its bytes) if every row it was built from is still
        the same fresh cache entry and none is past its max age; else None."""
        if type(request) is not bytes:
            return None
        answer = self._answers.get(request)
        if answer is None:
            return None
        rows_cache = self._rows_cache()
        if answer.planner is not self.engine.planner or rows_cache is None:
            del self._answers[request]
            return None
        now = time.monotonic()
        if now >= answer.refresh_at:
            return None  # kept until a refreshed row replaces one of its entries
        for group, tag, entry in answer.rows:
            if rows_cache.peek(group, tag, now) is not entry:
                del self._answers[request]  # its row changed or left: learn it again
                return None
        if answer.stale_at_us and time.time_ns() // 1000 > answer.stale_at_us:
            del self._answers[request]  # for good: the engine answers, with STALE
            return None
        rows_cache.stats.hits += len(answer.rows)  # rows answered from the cache, as counted
        self.served += 1
        return answer.kept

    def before(self, request: object, asked: FeatureRequest) -> Before | None:
        """For a call that may be kept (one row per entity, cached views, no transforms, every
        row a fresh cache entry now): what `learn` checks after the engine answered."""
        if type(request) is not bytes or len(request) > MAX_REQUEST_BYTES:
            return None
        rows_cache = self._rows_cache()
        if rows_cache is None or asked.context:
            return None
        if any(len(column.values) != 1 for column in asked.entities.values()):
            return None
        planner = self.engine.planner
        try:
            plan = planner.plan(asked.features)
        except RequestError:  # the engine refuses it, with the error it names
            return None
        if plan.transforms:
            return None
        now = time.monotonic()
        ahead = rows_cache.policy.refresh_ahead
        refresh_at = float("inf")
        rows: list[tuple[Group, bytes, Any]] = []
        for group in plan.groups:
            if group.cache_ttl_s <= 0:
                return None
            keys = []
            for key in group.entity.key_names:  # the store's key order
                column = asked.entities.get(key)
                if column is None or column.kind is not group.entity.join_keys[key].kind:
                    return None  # the engine refuses it, with the error it names
                keys.append(column.values)
            # The row's identity in the cache, as the store addresses it (no slots needed).
            cached_as = tuple(map(self._addresses.prefix, group.views))
            (tag,) = entity_tags(keys, 1)
            entry = rows_cache.peek(cached_as, tag, now)
            if type(entry) is not bytes and type(entry) is not list:
                return None  # not cached (MISS), or cached as having no row
            rows.append((cached_as, tag, entry))
            if ahead > 0:
                until = rows_cache.fresh_until(cached_as, tag)
                refresh_at = min(refresh_at, until - group.cache_ttl_s * ahead)
        max_ages = tuple(read.max_age_us for group in plan.groups for read in group.reads)
        return Before(request, planner, tuple(rows), max_ages, asked, refresh_at)

    def learn(
        self, before: Before, result: FeatureResult, response: pb.GetFeaturesResponse
    ) -> None:
        """Keep the engine's answer to the call `before` saw, if it is one every path gives
        alike and the entries it read are still the same fresh ones."""
        if result.rows != 1 or result.fallbacks:
            return
        if any(column.statuses[0] != PRESENT for column in result.columns):
            return
        if len(result.served) != len(before.max_ages_us):
            return
        rows_cache = self._rows_cache()
        if rows_cache is None or before.planner is not self.engine.planner:
            return
        now = time.monotonic()
        if now >= before.refresh_at:
            return  # its rows are due for a refresh: the engine answers until they have one
        for group, tag, entry in before.rows:
            if rows_cache.peek(group, tag, now) is not entry:
                return
        stale_at = [
            int(served.rows.event_time_us[0]) + max_age
            for served, max_age in zip(result.served, before.max_ages_us, strict=True)
            if max_age
        ]
        if len(self._answers) >= self.max_answers:
            del self._answers[next(iter(self._answers))]  # the oldest kept answer goes
        # Shared by every call it answers: nothing reads a result's timings but telemetry.
        shared = FeatureResult(result.rows, result.columns, [], result.served, CallTimings())
        self._answers[before.key] = _Answer(
            before.planner,
            before.rows,
            min(stale_at) if stale_at else 0,
            before.refresh_at,
            Kept(before.request, shared, response),
        )
