"""Discovery: ListFeatures' filters (owner, tag, entity, name prefix, status) and fields (status,
freshness SLA, description, versions, deprecation), and `featurewell list`, against a real
server on the shared cluster."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from datetime import timedelta

import grpc
import pytest

from featurewell import cli
from featurewell.client import AsyncFeatureClient, FeatureClient, InvalidArgument, ViewStatus
from featurewell.devcluster import LocalCluster
from featurewell.serving import wire
from featurewell.v1 import feature_service_pb2 as pb
from tests import defs_catalog
from tests.tools import ServerThread, make_settings


@pytest.fixture(scope="module")
def catalog_server(cluster: LocalCluster) -> Iterator[ServerThread]:
    running = ServerThread(make_settings(cluster), defs_catalog.registry())
    yield running
    running.stop()


@pytest.fixture(scope="module")
def catalog_client(catalog_server: ServerThread) -> Iterator[FeatureClient]:
    with FeatureClient(catalog_server.address, timeout=5.0) as client:
        yield client


def _refs(response: pb.ListFeaturesResponse) -> list[str]:
    return [f"{v.name}@v{v.version}" for v in response.views]


def test_unfiltered_lists_every_view_with_status_sla_and_versions(
    catalog_client: FeatureClient,
) -> None:
    response = catalog_client.list_features()
    views = {f"{v.name}@v{v.version}": v for v in response.views}
    assert {"cat_ranking@v1", "cat_ranking@v2", "profile@v1", "profile@v2"} <= set(views)
    old, new = views["cat_ranking@v1"], views["cat_ranking@v2"]
    assert ViewStatus(old.status) == ViewStatus.DEPRECATED
    assert old.deprecation.replacement == "cat_ranking@v2"
    assert old.deprecation.removal_date == "2027-01-31"
    assert old.deprecation.reason == "recount"
    assert ViewStatus(new.status) == ViewStatus.ACTIVE
    assert not new.HasField("deprecation")
    assert list(new.versions) == [1, 2] == list(old.versions)
    assert new.freshness_sla_seconds == 600
    assert new.description == "clicks, recounted"
    # No freshness_sla: the SLA in force is max_age; neither: 0.
    assert views["cat_items@v1"].freshness_sla_seconds == timedelta(days=1).total_seconds()
    assert views["cat_forgotten@v1"].freshness_sla_seconds == 0
    assert (
        ViewStatus(views["profile@v1"].status) == ViewStatus.INACTIVE
    )  # below the default, not marked
    assert {t.name for t in response.on_demand} == {"affinity", "birth"}


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        ({"owner": "team-rank"}, ["cat_forgotten@v1", "cat_ranking@v1", "cat_ranking@v2"]),
        ({"owner": "team-ran"}, []),  # exact, not a prefix
        ({"tag": "tier=gold"}, ["cat_ranking@v1", "cat_ranking@v2"]),
        ({"tag": "pii"}, ["cat_ranking@v2"]),  # any value
        ({"tag": "tier=bronze"}, []),
        ({"entity": "item"}, ["cat_items@v1", "item_stats@v1"]),
        ({"name_prefix": "cat_r"}, ["cat_ranking@v1", "cat_ranking@v2"]),
        ({"status": ViewStatus.DEPRECATED}, ["cat_ranking@v1"]),
        (
            {"owner": "team-rank", "status": ViewStatus.ACTIVE},
            ["cat_forgotten@v1", "cat_ranking@v2"],
        ),
    ],
)
def test_filters_narrow_the_views(
    catalog_client: FeatureClient, filters: dict[str, object], expected: list[str]
) -> None:
    response = catalog_client.list_features(**filters)  # type: ignore[arg-type]
    assert _refs(response) == expected
    assert not response.on_demand  # transforms have no owner, tags or status to match
    # Entities listed are those of the views listed.
    assert {e.name for e in response.entities} == {v.entity for v in response.views}


def test_entity_filter_lists_that_entity_only(catalog_client: FeatureClient) -> None:
    response = catalog_client.list_features(entity="user_item")
    assert [e.name for e in response.entities] == ["user_item"]
    assert _refs(response) == ["pair@v1"]


def test_an_unknown_status_number_is_refused(catalog_server: ServerThread) -> None:
    with grpc.insecure_channel(catalog_server.address) as channel:
        call: grpc.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(
            "/featurewell.v1.FeatureService/ListFeatures"
        )
        # status = 9: a number the enum does not have (field 5, varint)
        with pytest.raises(grpc.RpcError) as raised:
            call(b"\x28\x09", timeout=5)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "ViewStatus" in (raised.value.details() or "")


def test_status_staging_above_a_promoted_default() -> None:
    registry = defs_catalog.registry().with_defaults({"cat_ranking": 1})
    response = wire.catalog(registry, wanted=wire.CatalogFilter())
    status = {f"{v.name}@v{v.version}": ViewStatus(v.status) for v in response.views}
    assert status["cat_ranking@v2"] == ViewStatus.STAGING
    assert status["cat_ranking@v1"] == ViewStatus.DEPRECATED  # marked wins over default


def test_featurewell_list_table_and_json(
    catalog_server: ServerThread, capsys: pytest.CaptureFixture[str]
) -> None:
    cli.main(["list", "--server", catalog_server.address, "--owner", "team-rank"])
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].split()[:4] == ["view", "status", "entity", "owner"]
    row = next(line for line in lines if line.startswith("cat_ranking@v1 "))
    assert "DEPRECATED -> cat_ranking@v2 on 2027-01-31" in row
    row = next(line for line in lines if line.startswith("cat_ranking@v2 "))
    assert "ACTIVE" in row
    assert "10min" in row
    assert "pii=no,tier=gold" in row
    assert not any(line.startswith("profile") for line in lines)

    cli.main(["list", "--server", catalog_server.address, "--status", "deprecated", "--json"])
    listed = json.loads(capsys.readouterr().out)
    assert [(v["name"], v["version"]) for v in listed["views"]] == [("cat_ranking", 1)]
    assert listed["views"][0]["status"] == "VIEW_STATUS_DEPRECATED"


def test_featurewell_list_without_a_server_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as raised:
        cli.main(["list", "--server", "127.0.0.1:1", "--timeout", "0.5"])
    assert raised.value.code == 2
    assert "127.0.0.1:1" in capsys.readouterr().err


def test_client_side_errors_stay_typed(catalog_client: FeatureClient) -> None:
    with pytest.raises(InvalidArgument, match="ViewStatus"):
        catalog_client.list_features(status=9)


def test_the_async_client_filters_too(catalog_server: ServerThread) -> None:
    async def listed() -> list[str]:
        async with AsyncFeatureClient(catalog_server.address, timeout=5.0) as client:
            return _refs(await client.list_features(tag="tier=silver", status=ViewStatus.ACTIVE))

    assert asyncio.run(listed()) == ["cat_items@v1"]
