"""The served-feature log's writer: what sampled GetFeatures calls answered, and the rows pushed
with WriteFeatures, added to the offline store by a background thread.

Sampling: each call gets a rate per view (or transform), `served_log_callers` for its caller if
listed, else `served_log_views` for the view if listed, else `served_log_rate`. A call whose
caller can be logged at all draws a fraction of 2^32; its views are logged when it falls under
their rate, and a logged call gets a request id (32 hex digits) whose first 8 are that draw.
So sampling is a function of the id (a reader can check it), and a call logged at 1% logs
every view whose rate is 1% or more.

Off the answer's path: the handler only draws (and, for a logged call, sets the id in the
trailing metadata); the record is queued (by reference: the call's result and request are
never changed after the answer) a moment after the answer (service.AFTER_ANSWER_S), and a
thread turns the queue into Parquet files every `served_log_flush_s` or `served_log_batch_rows`
rows. The queue holds at most `served_log_queue_rows` rows: a record that does not fit is
dropped and counted
(`featurewell_served_log_dropped_total{reason="queue_full"}`), never waited for.

At least once: a batch whose files cannot be written (a full or unmounted volume) stays queued
and is retried every flush; records arriving meanwhile fill the queue, then drop and count.
Files are renamed into place whole, so a batch is either read or retried; readers drop any
duplicate by (request_id, row) all the same (offline/served.py).

Why a writer in the server rather than a Redis Stream and a sink process: a stream moves every
logged row through Redis (the serving store's memory and network, at 100% a ranking call's 500
rows twice), and adds a process to run; a writer needs only a volume shared with the offline
store (the same one `featurewell stream --history-out` writes). A pod without one logs nothing:
the server refuses to start with a rate above 0 and no `offline_dir`.
"""

from __future__ import annotations

import logging
import os
import random
import sys
import threading
import time
import uuid
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from prometheus_client import CollectorRegistry, Counter

from featurewell.definitions import Feature, FeatureView, Kind
from featurewell.engine.calls import FeatureResult, InputColumn, WriteRequest
from featurewell.offline import served
from featurewell.offline.store import US_PER_DAY, OfflineStore, write_stamp
from featurewell.values import Ragged

log = logging.getLogger("featurewell.served_log")
DROP_REASONS = ("queue_full", "shutdown")
RETRY_S = 1.0
SETTLE_S = 0.05  # well past service.AFTER_ANSWER_S


_DRAWS = random.Random()  # seeded from the OS; reseeded in a forked child (CPython does)


class Sampler:
    def __init__(self, rate: float, callers: Mapping[str, float], views: Mapping[str, float]):
        self.rate = rate
        self.callers = dict(callers)
        self.views = dict(views)
        self._widest = max([rate, *views.values()])
        self.on = self._widest > 0 or any(rate > 0 for rate in self.callers.values())

    def rate_of(self, view: str, caller: str) -> float:
        if caller in self.callers:
            return self.callers[caller]
        return self.views.get(view, self.rate)

    def widest(self, caller: str) -> float:
        """The highest rate any view has for `caller`: 0 means no call of it is logged."""
        return self.callers.get(caller, self._widest)

    @staticmethod
    def fraction() -> float:
        """A call's draw in [0, 1), in steps of 2^-32: what its request id's first 8 digits
        will say. Every call draws and about 1 in 100 is logged, so the draw comes from a PRNG
        in memory (50 ns) and only a logged call's id asks the OS for randomness. Under the
        gate's load (py-spy, the loop's Python) the draw took 24 of 1,283 samples with a system
        call in every call, 7 of 1,167 like this."""
        return _DRAWS.getrandbits(32) / 2**32

    @staticmethod
    def request_id(fraction: float) -> str:
        """The id of a call drawn at `fraction`: 32 hex digits, the first 8 the draw (exact:
        a fraction of 2^32 survives the float), the other 24 random."""
        return f"{int(fraction * 2**32):08x}{os.urandom(12).hex()}"


@dataclass(frozen=True, slots=True)
class LoggedCall:
    request_id: str
    fraction: float
    logged_at_us: int
    caller: str
    principal: str
    entities: Mapping[str, InputColumn]
    result: FeatureResult


@dataclass(frozen=True, slots=True)
class PushedRows:
    view: FeatureView
    request: WriteRequest
    created_us: int


class ServedLog:
    def __init__(
        self,
        store: OfflineStore,
        sampler: Sampler,
        registry: CollectorRegistry,
        *,
        queue_rows: int = 200_000,
        flush_s: float = 5.0,
        batch_rows: int = 50_000,
        nice: int = 0,
    ) -> None:
        self.store = store
        self.nice = nice
        self.sampler = sampler
        self.queue_rows = queue_rows
        self.flush_s = flush_s
        self.batch_rows = batch_rows
        self.dropped = Counter(
            "featurewell_served_log_dropped",
            "Served-log or pushed-history rows dropped, by reason (queue_full: the writer is "
            "behind or its volume failing; shutdown: still queued when the server stopped).",
            ["reason"],
            registry=registry,
        )
        for reason in DROP_REASONS:
            self.dropped.labels(reason)
        self.written = Counter(
            "featurewell_served_log_rows",
            "Rows the served-log writer added to the offline store, by kind (served, pushed).",
            ["kind"],
            registry=registry,
        )
        for kind in ("served", "pushed"):
            self.written.labels(kind)
        self.failures = Counter(
            "featurewell_served_log_write_failures",
            "Batches the served-log writer could not write (kept and retried).",
            registry=registry,
        )
        self._queue: deque[tuple[int, LoggedCall | PushedRows]] = deque()
        self._queued = 0
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="served-log", daemon=True)
        self._thread.start()

    # -- the serving loop's side: cheap, never blocks --

    def logs_any(self, result: FeatureResult, fraction: float, caller: str) -> bool:
        """Whether a call drawn at `fraction` logs some view or transform of `result`."""
        rate_of = self.sampler.rate_of
        return any(fraction < rate_of(view.view.name, caller) for view in result.served) or any(
            fraction < rate_of(column.name.partition(":")[0], caller)
            for column in result.columns
            if not column.entity
        )

    def record(self, call: LoggedCall) -> None:
        rate_of, fraction, caller = self.sampler.rate_of, call.fraction, call.caller
        rows = sum(
            len(view.statuses)
            for view in call.result.served
            if fraction < rate_of(view.view.name, caller)
        )
        transforms = {c.name.partition(":")[0] for c in call.result.columns if not c.entity}
        rows += call.result.rows * sum(fraction < rate_of(name, caller) for name in transforms)
        if rows:
            self._put(rows, call)

    def record_write(self, view: FeatureView, request: WriteRequest, created_us: int) -> None:
        self._put(len(request.event_time_us), PushedRows(view, request, created_us))

    def _put(self, rows: int, item: LoggedCall | PushedRows) -> None:
        with self._lock:
            if self._stopping or self._queued + rows > self.queue_rows:
                self.dropped.labels("shutdown" if self._stopping else "queue_full").inc(rows)
                return
            self._queued += rows
            self._queue.append((rows, item))
            full = self._queued >= self.batch_rows
        if full:
            self._wake.set()

    @property
    def queued_rows(self) -> int:
        return self._queued

    # -- the writer thread --

    def _run(self) -> None:
        lower_own_priority(self.nice)
        pending: dict[Path, list[pa.Table]] = {}
        pushed: list[tuple[FeatureView, pa.Table]] = []
        counted = 0
        while True:
            stopping = self._stopping
            self._wake.wait(self.flush_s if not pending and not pushed else RETRY_S)
            self._wake.clear()
            with self._lock:
                taken = list(self._queue)
                self._queue.clear()
            for rows, item in taken:
                counted += rows
                try:
                    if isinstance(item, PushedRows):
                        table = history_table(item.view, item.request, item.created_us)
                        pushed.append((item.view, table))
                    else:
                        for folder, table in tables_of(self.store.root, self.sampler, item):
                            pending.setdefault(folder, []).append(table)
                except Exception:  # a record that cannot be turned into rows: never retried
                    log.exception("cannot log request %s", getattr(item, "request_id", "?"))
            try:
                self._write(pending, pushed)
                with self._lock:
                    self._queued -= counted
                counted = 0
            except Exception as exc:  # kept for the next try: at least once
                self.failures.inc()
                log.warning("served log not written (kept, retried in %.0f s): %s", RETRY_S, exc)
                if stopping:
                    self.dropped.labels("shutdown").inc(counted)
                    return
            if stopping:
                return

    def _write(
        self, pending: dict[Path, list[pa.Table]], pushed: list[tuple[FeatureView, pa.Table]]
    ) -> None:
        for folder in list(pending):
            table = pa.concat_tables(pending[folder], promote_options="permissive")
            write_files(folder, table)
            self.written.labels("served").inc(table.num_rows)
            del pending[folder]
        while pushed:
            view, table = pushed[0]
            self.written.labels("pushed").inc(self.store.write(view, table).rows)
            pushed.pop(0)

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every record queued so far is written (tests, shutdown); False if not.
        Calls answered just now are queued a moment after their answers (service.AFTER_ANSWER_S
        on the serving loop): give them that moment first."""
        time.sleep(SETTLE_S)
        deadline = time.monotonic() + timeout
        while self._queued and time.monotonic() < deadline:
            self._wake.set()
            time.sleep(0.01)
        return self._queued == 0

    def close(self, timeout: float = 5.0) -> None:
        """Write what is queued (one last try), then stop the thread. Blocks its caller (a
        stopping server's loop, its calls drained) for at most about 2 x `timeout`."""
        self.flush(timeout)
        with self._lock:
            self._stopping = True
        self._wake.set()
        self._thread.join(timeout)


def lower_own_priority(nice: int) -> bool:
    """Add `nice` to the calling thread's niceness (Linux: elsewhere a thread id given to
    setpriority would name a process); whether it did.

    Why: each batch (Arrow tables built, Parquet files written) takes 10-50 ms of CPU on the
    serving loop's core, and at the loop's priority the scheduler gave the writer the core in
    turns of milliseconds while calls waited. In the latency gate, 9-19 of the 24 slowest single
    calls of a run overlapped a batch that covered 3% of the time; at niceness 19, 3 of 24, and
    the single p99 fell from 8-9 to 5 ms (loadtest/README.md, 2026-12-06). Holding the GIL is
    not the cause: shorter GIL turns while it wrote did not help."""
    if nice <= 0 or not sys.platform.startswith("linux"):
        return False
    tid = threading.get_native_id()
    try:
        os.setpriority(os.PRIO_PROCESS, tid, min(os.getpriority(os.PRIO_PROCESS, tid) + nice, 19))
    except OSError:  # not permitted here: the writer keeps the loop's priority
        return False
    return True


def write_files(folder: Path, table: pa.Table) -> list[Path]:
    """Add `table` (offline/served.py's COLUMNS first) under `folder`, one file per UTC day of
    `logged_at_us`, named by its write time as offline/store.py names history files, and renamed
    into place whole, so a reader never sees half a file."""
    days = np.asarray(table.column("logged_at_us").to_numpy()) // US_PER_DAY
    stamp = write_stamp()
    written = []
    for day in np.unique(days).tolist():
        date = datetime.fromtimestamp(day * 86_400, tz=UTC).strftime("%Y-%m-%d")
        target = folder / f"date={date}"
        target.mkdir(parents=True, exist_ok=True)
        path = target / f"{stamp:016d}-{uuid.uuid4().hex[:12]}.parquet"
        temporary = path.with_suffix(".tmp")
        pq.write_table(table.filter(pa.array(days == day)), temporary)
        os.replace(temporary, path)
        written.append(path)
    return written


# -- records as rows (on the writer thread) --


def tables_of(root: Path, sampler: Sampler, call: LoggedCall) -> list[tuple[Path, pa.Table]]:
    """The call's logged views and transforms as (folder, rows) in offline/served.py's layout."""
    out: list[tuple[Path, pa.Table]] = []
    for view_rows in call.result.served:
        view = view_rows.view
        if call.fraction >= sampler.rate_of(view.name, call.caller):
            continue
        rows = len(view_rows.statuses)
        stamps = view_rows.rows.event_time_us
        columns = _common(call, rows, stamps, view_rows.statuses, view.version)
        for name in view.entity.key_names:
            columns[name] = _keys(call.entities.get(name), rows)
        for feature in view.features:
            values = view_rows.rows.values.get(feature.name)
            kind, dim = feature.dtype.kind, feature.dtype.dim
            # A feature the call did not ask for: nulls, typed as when asked (a file of such
            # calls alone must read with the others), which the skew check leaves out.
            columns[feature.name] = (
                arrow_values(kind, values, dim)
                if values is not None
                else pa.nulls(rows, arrow_values(kind, [], dim).type)
            )
        out.append((served.view_folder(root, view), pa.table(columns)))
    transforms: dict[str, dict[str, Any]] = {}
    for column in call.result.columns:
        if column.version != 0 or column.entity:
            continue
        name, _, output = column.name.partition(":")
        if call.fraction >= sampler.rate_of(name, call.caller):
            continue
        if name not in transforms:
            none = np.zeros(call.result.rows, np.int64)
            transforms[name] = _common(call, call.result.rows, none, column.statuses, 0)
        transforms[name][output] = arrow_values(column.dtype.kind, column.values, column.dtype.dim)
    for name, columns in transforms.items():
        out.append((served.transform_folder(root, name), pa.table(columns)))
    return out


def _common(
    call: LoggedCall, rows: int, event_time: Any, statuses: Any, version: int
) -> dict[str, Any]:
    """offline/served.py's COLUMNS for `rows` rows."""
    types = {field.name: field.type for field in served.COLUMNS}
    return {
        "request_id": pa.array([call.request_id] * rows, types["request_id"]),
        "logged_at_us": pa.array(np.full(rows, call.logged_at_us, np.int64)),
        "caller": pa.array([call.caller] * rows, types["caller"]),
        "principal": pa.array([call.principal] * rows, types["principal"]),
        "row": pa.array(np.arange(rows, dtype=np.int32)),
        "event_time": pa.array(np.asarray(event_time, np.int64)[:rows]),
        "status": pa.array(np.asarray(statuses, np.uint8)[:rows]),
        "version": pa.array(np.full(rows, version, np.int32)),
    }


def _keys(column: InputColumn | None, rows: int) -> pa.Array:
    """An entity key column, a length-1 column broadcast as the engine does."""
    if column is None:
        return pa.nulls(rows)
    values = list(column.values)
    if len(values) == 1 and rows != 1:
        values = values * rows
    return pa.array(values, pa.string() if column.kind is Kind.STRING else pa.int64())


def arrow_values(kind: Kind, values: Any, dim: int = 0) -> pa.Array:
    """Feature values as the offline store types them (offline/store.py)."""
    if kind is Kind.EMBEDDING:
        flat = pa.array(np.ascontiguousarray(values, np.float32).ravel())
        return pa.FixedSizeListArray.from_arrays(flat, dim)
    if kind is Kind.STRING:
        return pa.array(list(values), pa.string())
    if kind in (Kind.INT64_LIST, Kind.FLOAT64_LIST):
        element = np.int64 if kind is Kind.INT64_LIST else np.float64
        if isinstance(values, Ragged):
            offsets = pa.array(np.asarray(values.offsets, np.int32))
            return pa.ListArray.from_arrays(offsets, pa.array(values.flat.astype(element)))
        return pa.array(
            [np.asarray(v, element).tolist() for v in values],
            pa.list_(pa.from_numpy_dtype(element)),
        )
    dtype = {Kind.INT64: np.int64, Kind.FLOAT32: np.float32, Kind.FLOAT64: np.float64}
    return pa.array(np.asarray(values, dtype=dtype.get(kind, np.bool_)))


def history_table(view: FeatureView, request: WriteRequest, created_us: int) -> pa.Table:
    """Rows pushed with WriteFeatures as offline-store history, created when written."""
    rows = len(request.event_time_us)
    columns: dict[str, Any] = {
        name: _keys(request.entities.get(name), rows) for name in view.entity.key_names
    }
    columns["event_time"] = pa.array(np.asarray(request.event_time_us, np.int64))
    columns["created"] = pa.array(np.full(rows, created_us, np.int64))
    for feature in view.features:
        columns[feature.name] = _feature(feature, request.features[feature.name])
    return pa.table(columns)


def _feature(feature: Feature, values: Any) -> pa.Array:
    return arrow_values(feature.dtype.kind, values, feature.dtype.dim)
