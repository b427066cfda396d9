"""Deprecation and impact: a view version marked deprecated in its definition is still served,
flagged to the caller (trailing metadata `x-featurewell-deprecated`, `result.deprecations`, a
warning) and counted (featurewell_deprecated_reads_total); `featurewell impact` says who read it
in the last N days and how much, `featurewell unused` which versions nobody read. Real server,
real cluster, the per-day consumer counts in Redis."""

from __future__ import annotations

import asyncio
import json
import uuid
import warnings
from collections.abc import Iterator
from datetime import UTC, date, datetime

import grpc
import pytest

from featurewell import cli
from featurewell.app import connected
from featurewell.client import (
    AsyncFeatureClient,
    ClientOptions,
    DeprecatedFeatureWarning,
    FeatureClient,
    FeatureResult,
)
from featurewell.definitions import Deprecated, Feature, FeatureView, Int64, Registry
from featurewell.devcluster import LocalCluster
from featurewell.errors import DefinitionError
from featurewell.store import consumers as stored
from featurewell.store.connection import encode_command
from featurewell.store.keys import META_SLOT, consumer_day_key
from featurewell.v1 import feature_service_pb2 as pb
from featurewell.v1 import feature_service_pb2_grpc as pb_grpc
from tests import defs, defs_catalog
from tests.tools import ServerThread, make_settings, wait_until

NOTICE = "cat_ranking@v1 -> cat_ranking@v2 on 2027-01-31"
OLD, NEW = "cat_ranking@v1:clicks", "cat_ranking:clicks"


@pytest.fixture(scope="module")
def dep_server(cluster: LocalCluster) -> Iterator[ServerThread]:
    settings = make_settings(cluster, consumers_flush_s=0.1)
    running = ServerThread(settings, defs_catalog.registry())
    yield running
    running.stop()


def _client(server: ServerThread, caller: str = "") -> FeatureClient:
    return FeatureClient(server.address, options=ClientOptions(caller=caller, timeout=5.0))


def _quietly(client: FeatureClient, features: list[str], users: list[str]) -> FeatureResult:
    """A read whose deprecation warning the test expects and does not check."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecatedFeatureWarning)
        return client.get_features(features, entities={"user_id": users})


def _seeds(cluster: LocalCluster) -> str:
    return ",".join(f"{host}:{port}" for host, port in cluster.seeds)


# -- definitions -----------------------------------------------------------------------------


def _views(deprecated: object) -> list[FeatureView]:
    return [
        FeatureView(
            "old",
            entity=defs.user,
            features=[Feature("a", Int64)],
            deprecated=deprecated,  # type: ignore[arg-type]
        ),
        FeatureView("new", entity=defs.user, features=[Feature("a", Int64)]),
    ]


@pytest.mark.parametrize(
    ("deprecated", "message"),
    [
        (Deprecated(replacement="gone@v2"), "'gone@v2', which is not a view"),
        (Deprecated(replacement="new@v3"), "has no version 3"),
        (Deprecated(replacement="Bad Ref"), "malformed"),
        (Deprecated(replacement="old"), "deprecated for itself"),
        (Deprecated(removal_date="2027-01-31"), "datetime.date"),  # type: ignore[arg-type]
        (Deprecated(removal_date=datetime(2027, 1, 31)), "datetime.date"),
        (Deprecated(reason="a\nb"), "one line"),
        ("yes", "takes Deprecated"),
    ],
)
def test_bad_deprecations_fail_at_load(deprecated: object, message: str) -> None:
    with pytest.raises(DefinitionError, match=message):
        Registry.build(_views(deprecated))


def test_a_deprecation_reads_as_its_notice() -> None:
    assert Deprecated("new", date(2027, 1, 31)).notice("old@v1") == "old@v1 -> new on 2027-01-31"
    assert Deprecated().notice("old@v1") == "old@v1"
    registry = Registry.build(_views(Deprecated(replacement="new")))
    assert registry.view("old").deprecated == Deprecated(replacement="new")


# -- serving -----------------------------------------------------------------------------------


def test_reading_a_deprecated_version_is_flagged_and_warned(dep_server: ServerThread) -> None:
    with _client(dep_server) as client:
        with pytest.warns(DeprecatedFeatureWarning, match=NOTICE):
            result = client.get_features([OLD, "profile:age"], entities={"user_id": ["u1"]})
        assert result.deprecations == [NOTICE]
        assert result.rows == 1  # still served
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no warning for the replacement
            current = client.get_features([NEW, "profile:age"], entities={"user_id": ["u1"]})
        assert current.deprecations == []
        # One notice per version, however many of its features or rows the call reads.
        many = _quietly(client, ["cat_ranking@v1:*"], ["a", "b", "c"])
        assert many.deprecations == [NOTICE]


def test_the_notice_is_trailing_metadata_any_stub_sees(dep_server: ServerThread) -> None:
    request = pb.GetFeaturesRequest(
        features=[OLD], entities={"user_id": pb.Values(strings=pb.StringList(values=["u1"]))}
    )
    with grpc.insecure_channel(dep_server.address) as channel:
        stub = pb_grpc.FeatureServiceStub(channel)
        _, call = stub.GetFeatures.with_call(request, timeout=5)
        trailing = [
            (k, v) for k, v in call.trailing_metadata() or () if k.startswith("x-featurewell")
        ]
        request.features[:] = [NEW]
        _, current = stub.GetFeatures.with_call(request, timeout=5)
    assert trailing == [("x-featurewell-deprecated", NOTICE)]
    assert not [k for k, _ in current.trailing_metadata() or () if k.startswith("x-featurewell")]


def test_the_async_client_sees_deprecations(dep_server: ServerThread) -> None:
    async def read() -> list[str]:
        async with AsyncFeatureClient(dep_server.address, timeout=5.0) as client:
            with pytest.warns(DeprecatedFeatureWarning):
                result = await client.get_features([OLD], entities={"user_id": ["u1"]})
            return result.deprecations

    assert asyncio.run(read()) == [NOTICE]


def test_deprecated_reads_are_counted_per_version_from_zero(cluster: LocalCluster) -> None:
    server = ServerThread(make_settings(cluster), defs_catalog.registry())
    metrics = server.server.telemetry.metrics.registry
    name = "featurewell_deprecated_reads_total"
    try:
        with _client(server) as client:
            client.get_features([NEW], entities={"user_id": ["u1"]})
            assert metrics.get_sample_value(name, {"view": "cat_ranking@v1"}) == 0
            assert metrics.get_sample_value(name, {"view": "cat_ranking@v2"}) is None
            for _ in range(3):
                _quietly(client, ["cat_ranking@v1:*"], ["u1", "u2"])
        assert metrics.get_sample_value(name, {"view": "cat_ranking@v1"}) == 3  # calls, not rows
    finally:
        server.stop()


# -- impact and unused -------------------------------------------------------------------------


def test_impact_lists_who_read_a_version_and_how_much(
    dep_server: ServerThread, cluster: LocalCluster, capsys: pytest.CaptureFixture[str]
) -> None:
    run = uuid.uuid4().hex[:8]
    ranker, batch = f"ranker-{run}/3.2", f"batch-{run}/1"
    with _client(dep_server, ranker) as client:
        for _ in range(3):
            _quietly(client, [OLD], ["u1"])
    with _client(dep_server, batch) as client:
        _quietly(client, [OLD], ["u1"])
        _quietly(client, [NEW], ["u1"])
        _quietly(client, [NEW], ["u1"])
    repo = ["--repo", "tests.defs_catalog", "--redis", _seeds(cluster)]

    def readers(target: str) -> dict[tuple[str, str], int]:
        cli.main(["impact", target, "--days", "7", "--json", *repo])
        report = json.loads(capsys.readouterr().out)
        return {
            (r["caller"], r["view"]): r["calls"]
            for r in report["readers"]
            if r["caller"] in (ranker, batch)
        }

    expected = {(ranker, "cat_ranking@v1"): 3, (batch, "cat_ranking@v1"): 1}
    wait_until(lambda: readers("cat_ranking@v1") == expected, 10, "the consumers flush")
    assert readers("cat_ranking") == {**expected, (batch, "cat_ranking@v2"): 2}  # every version

    cli.main(["impact", "cat_ranking@v1", "--days", "7", *repo])
    out = capsys.readouterr().out
    assert out.splitlines()[0].startswith(f"cat_ranking@v1 (deprecated: {NOTICE}): ")
    line = next(ln for ln in out.splitlines() if ln.strip().startswith(ranker))
    assert line.split()[1:3] == ["3", "calls"]
    last = datetime.fromisoformat(line.split("last ")[1])
    assert abs((datetime.now(UTC) - last).total_seconds()) < 60


def test_unused_lists_the_versions_nobody_read(
    dep_server: ServerThread, cluster: LocalCluster, capsys: pytest.CaptureFixture[str]
) -> None:
    with _client(dep_server, "unused-check/1") as client:
        client.get_features(["cat_items:stock"], entities={"item_id": [1]})
    repo = ["--repo", "tests.defs_catalog", "--redis", _seeds(cluster)]

    def listed() -> list[str]:
        cli.main(["unused", "--days", "3", *repo])
        return [ln.split()[0] for ln in capsys.readouterr().out.splitlines()[1:]]

    wait_until(lambda: "cat_items@v1" not in listed(), 10, "the consumers flush")
    assert "cat_forgotten@v1" in listed()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["impact", "cat_ranking", "--days", "0"], "--days must be 1-92"),
        (["impact", "cat_ranking", "--days", "93"], "--days must be 1-92"),
        (["impact", "nope@v1"], "no feature view 'nope'"),
        (["impact", "cat_ranking@v9"], "has no version 9"),
        (["impact", "Cat Ranking"], "malformed"),
        (["unused", "--days", "-1"], "--days must be 1-92"),
    ],
)
def test_bad_impact_arguments_exit_2(
    cluster: LocalCluster, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    with pytest.raises(SystemExit) as raised:
        cli.main([*args, "--repo", "tests.defs_catalog", "--redis", _seeds(cluster)])
    assert raised.value.code == 2
    assert message in capsys.readouterr().err


def test_per_day_counts_are_bounded_and_expire(cluster: LocalCluster) -> None:
    day = "19991231"
    view = f"bound_{uuid.uuid4().hex[:6]}@v1"
    calls = {(f"c{i}", view): 1 for i in range(3)}
    seen = dict.fromkeys(calls, 946_684_000)

    async def go() -> tuple[dict[tuple[str, str], int], int]:
        async with connected(make_settings(cluster).redis) as store:
            await stored.add(store.cluster, calls, seen, 5.0, max_pairs=2, day=day)
            counted = await stored.read_days(store.cluster, [day, "19991230"], 5.0)
            replies = await store.cluster.execute(
                [encode_command(b"TTL", consumer_day_key(day))], [META_SLOT], 5.0
            )
            return counted, int(replies[0][0])

    counted, ttl = asyncio.run(go())
    mine = {pair: n for pair, n in counted.items() if pair[1] == view}
    assert mine == {("c0", view): 1, ("c1", view): 1, (stored.OVERFLOW, view): 1}
    assert 91 * 86_400 < ttl <= 92 * 86_400
    assert stored.last_days(3, now=86_400 * 2.5) == ["19700103", "19700102", "19700101"]
