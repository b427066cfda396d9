"""Micro-benchmarks of the per-call bulk work (pytest-benchmark; `make bench` enables timing).

In the normal test run each benchmarked function runs once and its result is checked, so these
are tests too.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from pytest_benchmark.fixture import BenchmarkFixture

from featurewell.client import FeatureResult
from featurewell.definitions import Feature, Float32, Kind
from featurewell.engine.calls import FeatureResult as ServerResult
from featurewell.engine.calls import ResultColumn
from featurewell.serving import wire
from featurewell.store.addressing import EntityRead
from featurewell.store.codec import RowCodec
from featurewell.store.keys import entity_tags, slots_of
from featurewell.v1 import feature_service_pb2 as pb
from tests import defs

pytestmark = pytest.mark.bench

ROWS = 501


def _item_rows() -> tuple[RowCodec, list[bytes | None]]:
    codec = RowCodec(defs.item_stats)
    vectors = np.random.default_rng(1).normal(size=(ROWS, 4)).astype(np.float32)
    rows = codec.encode(
        np.arange(ROWS, dtype=np.int64), {"popularity": np.ones(ROWS, np.float32), "vec": vectors}
    )
    return codec, [*rows[:-1], None]


def test_decode_501_fixed_width_rows(benchmark: BenchmarkFixture) -> None:
    codec, rows = _item_rows()
    decoded = benchmark(codec.decode, rows)
    assert decoded.present.sum() == ROWS - 1
    assert decoded.values["popularity"][:-1].tolist() == [1.0] * (ROWS - 1)


def test_build_501_get_and_mget_commands(benchmark: BenchmarkFixture) -> None:
    tags = entity_tags([[f"i{n:06d}" for n in range(ROWS)]], ROWS)
    read = EntityRead([b"fw:item_stats:v1:{", b"fw:item_genre:v1:{"], tags, slots_of(tags))
    commands = benchmark(read.commands)
    assert commands[0] == (
        b"*3\r\n$4\r\nMGET\r\n$26\r\nfw:item_stats:v1:{i000000}\r\n"
        b"$26\r\nfw:item_genre:v1:{i000000}\r\n"
    )


def _ranking_result() -> ServerResult:
    rng = np.random.default_rng(2)
    present = np.full(ROWS, 1, np.uint8)
    columns = [
        ResultColumn(
            f"item_stats:f{i}",
            Feature(f"f{i}", Float32).dtype,
            rng.random(ROWS).astype(np.float32),
            present,
            None,
            "item",
            1,
        )
        for i in range(9)
    ]
    columns.append(
        ResultColumn(
            "item_stats:vec",
            defs.item_stats.features[1].dtype,
            rng.random((ROWS, 4)).astype(np.float32),
            present,
            None,
            "item",
            1,
        )
    )
    return ServerResult(ROWS, columns)


def test_build_response_501_rows_by_10_features(benchmark: BenchmarkFixture) -> None:
    result = _ranking_result()
    response = benchmark(wire.feature_response, result)
    assert len(response.columns) == 10
    assert not any(c.statuses for c in response.columns)  # all present: no status bytes sent


def test_client_response_to_numpy(benchmark: BenchmarkFixture) -> None:
    raw = wire.feature_response(_ranking_result()).SerializeToString()

    def decode() -> Any:
        return FeatureResult(pb.GetFeaturesResponse.FromString(raw)).to_numpy()

    matrix, names = benchmark(decode)
    assert matrix.shape == (ROWS, 13)
    assert names[-1] == "item_stats:vec[3]"
    assert int(pb.VALUE_TYPE_EMBEDDING) == Kind.EMBEDDING
