"""The training rule's joins on Spark (`engine="spark"`): the same files, the same total order,
the same answer as the DuckDB query in offline/training.py, cell for cell.

Spark has no ASOF join, so the rule is spelt with windows:
1. history rows get their rank per entity in the total order (event time, created, file in
   write order, row in file: `_metadata.row_index`), as in DuckDB;
2. only the rows whose rank is the highest of everything known at or before their own known
   time are kept (a RANGE window over the known time): along an entity's known times their
   ranks only grow, one row per known time;
3. labels and those rows are unioned per entity and ordered by time, a history row before a
   label at the same instant (a row known at exactly T counts): each label takes the last
   history row before it (`last(..., ignorenulls)` over a running window).

Everything after the join (defaults, STALE past max age, NOT_FOUND, on-demand transforms, the
output's types and version metadata) is offline/training.py's own code, run on the joined
Arrow rows: one code path for both engines. Delta tables are read as their live data files in
commit order (offline/store.py lists them with `deltalake`), so no delta-spark jars are needed.
"""

from __future__ import annotations

import functools
import operator
import os
import sys
import threading
from typing import Any

import pyarrow as pa

from featurewell.errors import ConfigError
from featurewell.offline.store import HistorySource

_lock = threading.Lock()
_sessions: dict[str, Any] = {}
LOCAL = "local[*]"


def session(master: str | None = None) -> Any:
    """One SparkSession per master for the process (starting one takes seconds)."""
    try:
        from pyspark.sql import SparkSession
    except ImportError:
        raise ConfigError(
            "the spark engine needs PySpark and Java 17: pip install 'featurewell[spark]'"
        ) from None
    chosen = master or LOCAL
    with _lock:
        if chosen not in _sessions:
            builder = (
                SparkSession.builder.appName("featurewell-training")
                .master(chosen)
                .config("spark.ui.enabled", "false")
                .config("spark.ui.showConsoleProgress", "false")
                .config("spark.sql.session.timeZone", "UTC")
                .config("spark.sql.execution.arrow.pyspark.enabled", "true")
            )
            if chosen.startswith("local"):
                cores = os.cpu_count() or 2
                builder = builder.config("spark.sql.shuffle.partitions", str(2 * cores))
                builder = builder.config("spark.driver.memory", "2g")
                # Python workers run this interpreter (its featurewell and pyarrow); on a
                # cluster, the executors' Python must have `featurewell[spark]` installed.
                os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
            spark = builder.getOrCreate()
            spark.sparkContext.setLogLevel("ERROR")
            _sessions[chosen] = spark
        return _sessions[chosen]


class AsOf:
    """Joins for one training set; the label table of an entity is uploaded once."""

    def __init__(self, spark: Any) -> None:
        self.spark = spark
        self._labels: tuple[int, Any] | None = None

    def _label_frame(self, keyed: pa.Table) -> Any:
        if self._labels is None or self._labels[0] != id(keyed):
            self._labels = (id(keyed), self.spark.createDataFrame(keyed))
        return self._labels[1]

    def rows(
        self, keyed: pa.Table, source: HistorySource, keys: list[str], wanted: list[str]
    ) -> pa.Table:
        """Per label row of `keyed` (keys, `__ts`, `__row`), in its order: the winning row's
        event time (null: none) and its `wanted` columns."""
        hits = as_of(self.spark, self._label_frame(keyed), source, keys, wanted)
        table = hits.select("__row", "__last.*").toArrow().sort_by("__row")
        return table.set_column(1, "__event_time", table.column("__event_time").cast(pa.int64()))


def as_of(
    spark: Any, labels: Any, source: HistorySource, keys: list[str], wanted: list[str]
) -> Any:
    """A DataFrame of (`__row`, `__last`): per row of `labels` (keys, `__ts`, `__row`) the
    winning history row as a struct of `__event_time` and `wanted` (null: none)."""
    from pyspark.sql import Window
    from pyspark.sql import functions as fn

    files = [os.path.abspath(f) for f in source.files]
    order = spark.createDataFrame(
        pa.table({"__path": files, "__file": pa.array(range(len(files)), pa.int64())})
    )
    history = spark.read.option("recursiveFileLookup", "true").parquet(*files)
    event_time = fn.col(source.event_time)
    if source.event_time_is_timestamp:
        event_time = fn.unix_micros(event_time)
    created = fn.col(source.created) if source.created else event_time
    # `_metadata.file_path` is a URI: percent-decoded back to the path, a literal '+' kept
    # (url_decode would read it as a space, and the file would match no write order).
    uri = fn.regexp_replace(fn.col("_metadata.file_path"), "^file:(//)?", "")
    path = fn.url_decode(fn.regexp_replace(uri, "\\+", "%2B"))
    history = (
        history.select(
            *[fn.col(k) for k in keys],
            *[fn.col(w) for w in wanted],
            event_time.cast("long").alias("__event_time"),
            created.cast("long").alias("__created"),
            path.alias("__path"),
            fn.col("_metadata.row_index").alias("__line"),
        )
        .where(functools.reduce(operator.and_, [fn.col(k).isNotNull() for k in keys]))
        .join(fn.broadcast(order), "__path")
        .withColumn("__known", fn.greatest("__created", "__event_time"))
    )
    by_entity = Window.partitionBy(*keys)
    ranked = history.withColumn(
        "__rank",
        fn.row_number().over(by_entity.orderBy("__event_time", "__created", "__file", "__line")),
    )
    best_so_far = fn.max("__rank").over(
        by_entity.orderBy("__known").rangeBetween(Window.unboundedPreceding, Window.currentRow)
    )
    effective = ranked.withColumn("__best", best_so_far).where("__rank = __best")
    payload = fn.struct(fn.col("__event_time"), *[fn.col(w) for w in wanted])
    found = effective.select(
        *keys,
        fn.col("__known").alias("__t"),
        fn.lit(0).alias("__kind"),
        fn.lit(None).cast("long").alias("__row"),
        payload.alias("__hit"),
    )
    asked = labels.select(
        *keys,
        fn.col("__ts").alias("__t"),
        fn.lit(1).alias("__kind"),
        fn.col("__row"),
        fn.lit(None).cast(found.schema["__hit"].dataType).alias("__hit"),
    )
    # A history row before a label at the same instant: a row known at exactly T counts. Labels
    # with a null key meet no row: history rows with null keys were dropped above, as DuckDB's
    # equality never matches them either.
    running = by_entity.orderBy("__t", "__kind").rowsBetween(
        Window.unboundedPreceding, Window.currentRow
    )
    return (
        found.unionByName(asked)
        .withColumn("__last", fn.last("__hit", ignorenulls=True).over(running))
        .where("__kind = 1")
        .select("__row", "__last")
    )
