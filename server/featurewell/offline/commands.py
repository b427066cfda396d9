"""`featurewell training-set` (argument parsing is the CLI's)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import pyarrow.parquet as pq

from featurewell.definitions import load_repo
from featurewell.errors import ConfigError, InvalidRequest
from featurewell.offline.store import OfflineStore
from featurewell.offline.training import STATUS_SUFFIX, get_historical_features
from featurewell.settings import Settings
from featurewell.values import Status


def training_set(settings: Settings, args: argparse.Namespace) -> None:
    repo = settings.required_repo()
    if not settings.offline_dir:
        raise ConfigError("training-set reads the offline store: pass --offline-dir DIR")
    registry = load_repo(repo)
    labels_path = Path(args.labels)
    if not labels_path.exists():
        raise InvalidRequest(f"label file {labels_path} does not exist")
    features = [f.strip() for f in args.features.split(",") if f.strip()]
    started = time.perf_counter()
    labels = pq.read_table(labels_path)
    table = get_historical_features(
        registry, labels, features, OfflineStore(settings.offline_dir, settings.offline_format),
        timestamp_column=args.timestamp_column,
    )  # fmt: skip
    pq.write_table(table, args.out)
    seconds = time.perf_counter() - started
    values = [n for n in table.column_names if ":" in n and not n.endswith(STATUS_SUFFIX)]
    print(
        f"{table.num_rows:,} rows x {len(values)} features -> {args.out} in {seconds:.1f} s "
        f"({table.num_rows / max(seconds, 1e-9):,.0f} rows/s)"
    )
    for name in (n for n in table.column_names if n.endswith(STATUS_SUFFIX)):
        counts = table.column(name).value_counts().to_pylist()
        shown = ", ".join(f"{Status(c['values']).name.lower()} {c['counts']:,}" for c in counts)
        print(f"  {name.removesuffix(STATUS_SUFFIX)}: {shown}")
