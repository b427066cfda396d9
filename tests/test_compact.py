"""An offline store that stays fast: training sets read only the files their label range needs
(later partitions skipped; earlier ones replaced by `compact`'s as-of snapshot), and the result
is the same cell for cell as reading every file, before and after compaction, with late rows,
ties, stale-only entities, and readers and writers running while it compacts."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet
import pytest

from featurewell.definitions import Entity, Feature, FeatureView, Float64, Registry, String
from featurewell.errors import ConfigError
from featurewell.offline import OfflineStore, get_historical_features
from featurewell.offline import partitions as layout
from featurewell.offline.compact import compact
from featurewell.values import NOT_FOUND, PRESENT, STALE

DAY = 86_400_000_000
HOUR = 3_600_000_000
D0 = 1_790_000_000_000_000 // DAY * DAY  # a UTC midnight
rider = Entity("rider", join_keys={"rider_id": String})
view = FeatureView(
    "rides",
    entity=rider,
    max_age=timedelta(days=2),
    features=[Feature("score", Float64, default=-1.0)],
)
REGISTRY = Registry.build([rider, view])
START = D0 + 15 * DAY  # the labels' range: days 15 to 20


def _rows(rows: list[tuple[str, int, int, float]]) -> pa.Table:
    return pa.table(
        {
            "rider_id": [r[0] for r in rows],
            "event_time": pa.array([r[1] for r in rows], pa.int64()),
            "created": pa.array([r[2] for r in rows], pa.int64()),
            "score": [r[3] for r in rows],
        }
    )


def _random_history(
    store: OfflineStore, rng: np.random.Generator, writes: int, base: float
) -> None:
    """Small stream-like writes over 20 days: event times on an hourly grid (ties), created
    mostly soon after, sometimes equal, sometimes days late; r0-r4 only in the first 3 days."""
    for n in range(writes):
        rows = []
        for k in range(int(rng.integers(1, 5))):
            who = int(rng.integers(0, 30))
            days = 3 if who < 5 else 20
            event = D0 + int(rng.integers(0, days * 24)) * HOUR
            delay = [0, 0, HOUR, int(rng.integers(1, 6)) * DAY][int(rng.integers(0, 4))]
            rows.append((f"r{who}", event, event + delay, base + n + k / 10))
        store.write(view, _rows(rows))


def _labels(rng: np.random.Generator, count: int) -> pa.Table:
    who = [f"r{n}" for n in rng.integers(0, 32, count)]  # r30, r31: no history at all
    times = START + rng.integers(0, 5 * 24, count) * HOUR  # on the grid: ties with known times
    times[:3] = START  # exactly the snapshot's midnight
    return pa.table({"rider_id": who, "event_timestamp": pa.array(times, pa.int64())})


def _train(store: OfflineStore, labels: pa.Table, prune: bool) -> pa.Table:
    return get_historical_features(REGISTRY, labels, ["rides:score"], store, prune=prune)


def _files(store: OfflineStore, labels: pa.Table) -> list[str]:
    times = labels.column("event_timestamp").to_numpy()
    source = store.source_of(view, REGISTRY, (int(times.min()), int(times.max())))
    assert source is not None
    return list(source.files)


def test_pruned_reads_equal_full_reads_before_and_after_compaction(tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    store = OfflineStore(tmp_path)
    _random_history(store, rng, 160, 0.0)
    # Known cases: "old" has one row from day 1 (served STALE at every label, so it must not be
    # pruned away); "late" has a day-2 row and a day-10 row written only on day 16, which wins
    # from then on although its partition is before the labels.
    store.write(view, _rows([("old", D0 + DAY, D0 + DAY, 1.0), ("late", D0 + 2 * DAY, 0, 2.0)]))
    store.write(view, _rows([("late", D0 + 10 * DAY, D0 + 16 * DAY, 3.0)]))
    known = pa.table(
        {
            "rider_id": ["old", "late", "late"],
            "event_timestamp": pa.array([START + 1, START + 1, D0 + 16 * DAY], pa.int64()),
        }
    )
    labels = pa.concat_tables([known, _labels(rng, 400)])
    full = _train(store, labels, prune=False)
    assert full.column("rides:score").to_pylist()[:3] == [1.0, 2.0, 3.0]
    assert full.column("rides:__status").to_pylist()[:3] == [STALE] * 3
    statuses = set(full.column("rides:__status").to_pylist())
    assert statuses == {PRESENT, STALE, NOT_FOUND}  # the case covers all three
    # Before compaction only the later partitions can be skipped.
    assert _train(store, labels, prune=True).equals(full)

    before = layout.date_of(START)
    done = compact(store, view, before, settle_s=0)
    assert done.partitions == 15
    assert done.files_out == 15
    assert done.files_in > 60
    assert done.snapshot is not None
    assert 0 < done.snapshot_rows < 60
    read = _files(store, labels)
    assert read[0] == str(done.snapshot)
    assert all("_asof" in f or f.split("date=")[1][:10] >= before for f in read)
    assert _train(store, labels, prune=True).equals(full)
    assert _train(store, labels, prune=False).equals(full)

    # Labels ending early: the partitions after the last label are not read.
    early = labels.filter(pa.compute.less(labels.column("event_timestamp"), START + DAY))
    assert all(f.split("date=")[-1][:10] <= before for f in _files(store, early)[1:])
    assert _train(store, early, prune=True).equals(_train(store, early, prune=False))

    # More writes after the snapshot, into old partitions too (late, tied, corrections): the
    # snapshot no longer covers those files, so they are read in full, and nothing changes.
    _random_history(store, rng, 60, 1000.0)
    full = _train(store, labels, prune=False)
    assert _train(store, labels, prune=True).equals(full)
    compact(store, view, before, settle_s=0)
    assert _train(store, labels, prune=True).equals(full)
    again = _files(store, labels)
    assert "_asof" in again[0]
    assert all(f.split("date=")[1][:10] >= before for f in again[1:])


def test_a_merged_file_sorts_where_its_inputs_did(tmp_path: Path) -> None:
    store = OfflineStore(tmp_path)
    e = D0 + HOUR  # every row below: rider a, the same event time and created
    store.write(view, _rows([("a", e, e, 1.0)]))
    store.write(view, _rows([("a", e, e, 2.0), ("b", e, e, 5.0)]))
    # Settled: the two files above are 2.5 s old; the next must still be younger than 2 s when
    # compaction looks (was 0.5 s after a 1 s sleep: little for a loaded machine's write).
    time.sleep(2.5)
    store.write(view, _rows([("a", e, e, 3.0)]))  # written after, not settled: not merged
    labels = pa.table({"rider_id": ["a", "b"], "event_timestamp": pa.array([e, e], pa.int64())})
    done = compact(store, view, layout.date_of(D0 + DAY), settle_s=2.0)
    assert (done.files_in, done.files_out) == (2, 1)
    assert _train(store, labels, prune=True).column("rides:score").to_pylist() == [3.0, 5.0]
    names = sorted(p.name for p in (store.folder(view) / f"date={layout.date_of(e)}").iterdir())
    assert len(names) == 2
    assert names[0].endswith("~c.parquet")
    store.write(view, _rows([("b", e, e, 6.0)]))  # a correction written after compaction wins
    compact(store, view, layout.date_of(D0 + DAY), settle_s=0)
    assert _train(store, labels, prune=True).column("rides:score").to_pylist() == [3.0, 6.0]


def test_a_stream_consumers_newest_batch_stays_replaceable(tmp_path: Path) -> None:
    """A consumer restarted after a crash writes its newest batch again, replacing its files
    (OfflineStore.write_batch): compaction leaves that batch alone, so no stale copy stays."""
    store = OfflineStore(tmp_path)
    e = D0 + HOUR
    store.write(view, _rows([("a", e, e, 1.0)]))
    store.write_batch(view, _rows([("a", e + 1, e + 1, 2.0)]), "stream_w1_abc_0000000001")
    store.write_batch(view, _rows([("a", e + 2, e + 2, 3.0)]), "stream_w1_abc_0000000002")
    done = compact(store, view, layout.date_of(D0 + DAY), settle_s=0)
    assert (done.files_in, done.files_out) == (2, 1)  # batch 2 is held back
    # The restart rewrites batch 2 with what it re-derived.
    store.write_batch(view, _rows([("a", e + 2, e + 3, 4.0)]), "stream_w1_abc_0000000002")
    source = store.source_of(view, REGISTRY)
    assert source is not None
    rows = sum(pa.parquet.read_metadata(f).num_rows for f in source.files)
    assert rows == 3  # 1.0, 2.0 merged; 4.0 replaced 3.0
    labels = pa.table({"rider_id": ["a"], "event_timestamp": pa.array([e + 2], pa.int64())})
    assert _train(store, labels, prune=True).column("rides:score").to_pylist() == [2.0]


def test_readers_and_writers_during_compaction_see_one_consistent_history(tmp_path: Path) -> None:
    rng = np.random.default_rng(11)
    store = OfflineStore(tmp_path)
    _random_history(store, rng, 80, 0.0)
    labels = _labels(rng, 200)
    expected = _train(store, labels, prune=False)
    failures: list[str] = []
    reads = 0
    stop = threading.Event()

    def reader() -> None:
        nonlocal reads
        while not stop.is_set():
            try:
                got = _train(store, labels, prune=reads % 2 == 0)
            except Exception as exc:  # any failure of a concurrent read counts
                failures.append(repr(exc))
                return
            if not got.equals(expected):
                failures.append(f"read {reads} differs")
            reads += 1

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        # At least 6 rounds, and on until the reader has finished two reads beside them: on a slow
        # machine 6 compactions can end within one read. The cap keeps a hung reader a failure.
        round_ = 0
        while (round_ < 6 or reads < 2) and round_ < 200:
            # Rows known only after every label: they change no answer, but they are new small
            # files in old partitions for each compaction to merge.
            late = D0 + 25 * DAY
            rows = [(f"r{n}", D0 + n * DAY // 2, late, 9000.0 + round_) for n in range(30)]
            store.write(view, _rows(rows))
            compact(store, view, layout.date_of(START), settle_s=0)
            round_ += 1
    finally:
        stop.set()
        thread.join(timeout=120)
    assert not failures, failures[:3]
    assert reads >= 2


REPO = """
from featurewell.definitions import Entity, Feature, FeatureView, Float64, String
rider = Entity("rider", join_keys={"rider_id": String})
rides = FeatureView("rides", entity=rider, features=[Feature("score", Float64, default=-1.0)])
"""


def test_the_compact_command(tmp_path: Path) -> None:
    (tmp_path / "repo.py").write_text(REPO)
    store = OfflineStore(tmp_path / "offline")
    for n in range(3):
        store.write(view, _rows([("a", D0 + n, D0 + n, float(n))]))

    def command(*extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "featurewell.cli", "compact", "--repo",
             str(tmp_path / "repo.py"), "--offline-dir", str(tmp_path / "offline"), *extra],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip

    ok = command("--view", "rides", "--before", layout.date_of(D0 + DAY), "--settle-s", "0")
    assert ok.returncode == 0, ok.stderr
    assert "rides@v1: merged 3 files into 1 in 1 partitions" in ok.stdout
    assert "as-of snapshot" in ok.stdout
    assert "(1 rows)" in ok.stdout
    bad = command("--view", "rides", "--before", "21.09.2026")
    assert bad.returncode == 2
    assert "give a date as YYYY-MM-DD" in bad.stderr
    unknown = command("--view", "ridez")
    assert unknown.returncode != 0
    assert "ridez" in unknown.stderr
    assert "Traceback" not in bad.stderr + unknown.stderr


def test_a_delta_table_gets_the_snapshot_and_prunes_the_same(tmp_path: Path) -> None:
    rng = np.random.default_rng(9)
    store = OfflineStore(tmp_path, "delta")
    _random_history(store, rng, 40, 0.0)
    labels = _labels(rng, 200)
    full = _train(store, labels, prune=False)
    before = layout.date_of(START)
    done = compact(store, view, before)
    assert "OPTIMIZE" in done.skipped[0]  # files are not merged on Delta
    assert done.snapshot is not None
    read = _files(store, labels)
    assert read[0] == str(done.snapshot)
    assert all(f.split("date=")[1][:10] >= before for f in read[1:])
    assert _train(store, labels, prune=True).equals(full)
    _random_history(store, rng, 15, 500.0)  # commits after the snapshot, old dates included
    full = _train(store, labels, prune=False)
    assert _train(store, labels, prune=True).equals(full)
    with pytest.raises(ConfigError, match="YYYY-MM-DD"):
        compact(store, view, "21.09.2026")
