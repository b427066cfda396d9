"""GetFeatures / WriteFeatures / ListFeatures end to end: real gRPC server, real Redis Cluster."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from featurewell.client import FeatureClient, NotFound, Status, ValueType
from tests import defs
from tests.tools import Ids, ServerThread


def test_single_entity_all_features(client: FeatureClient, ids: Ids) -> None:
    user = ids("u")
    written = defs.write_profiles(client, [user], ages=[42])
    assert (written.written, written.skipped_older) == (1, 0)

    result = client.get_features(["profile:*"], entities={"user_id": [user]})

    assert result.rows == 1
    assert list(result.columns) == [f"profile:{f.name}" for f in defs.profile.features]
    assert result["profile:age"].values.tolist() == [42]
    assert result["profile:score"].values.tolist() == [0.42]
    assert result["profile:premium"].values.tolist() == [True]
    assert result["profile:country"].values.tolist() == ["c42"]
    assert result["profile:taste"].values.tolist() == [[1.0, 0.0, 0.0, 0.0]]
    assert [r.tolist() for r in result["profile:recent"].values] == [[0, 1]]
    assert [r.tolist() for r in result["profile:weights"].values] == [[1.0]]
    assert result.count(Status.PRESENT) == len(defs.profile.features)
    assert result["profile:age"].version == 2
    assert result["profile:age"].entity == "user"


def test_missing_entity_gets_defaults_flagged_not_found(client: FeatureClient, ids: Ids) -> None:
    present, absent = ids("u1"), ids("nobody")
    defs.write_profiles(client, [present], ages=[30])

    result = client.get_features(
        ["profile:age", "profile:country", "profile:taste", "profile:weights"],
        entities={"user_id": [present, absent]},
    )

    assert result["profile:age"].values.tolist() == [30, -1]
    assert result["profile:country"].values.tolist() == ["c30", "zz"]
    assert result["profile:taste"].values[1].tolist() == [0.0, 0.0, 0.0, 1.0]
    assert result["profile:weights"].values[1].tolist() == [1.0]
    assert result.statuses("profile:age").tolist() == [Status.PRESENT, Status.NOT_FOUND]


def test_ranking_one_user_and_500_items_in_one_call(client: FeatureClient, ids: Ids) -> None:
    user = ids("ranker")
    items = list(range(10_000, 10_500))
    defs.write_profiles(client, [user], ages=[25])
    defs.write_items(client, items)

    result = client.get_features(
        ["profile:age", "item_stats:*", "affinity:affinity"],
        entities={"user_id": [user], "item_id": items},
    )

    assert result.rows == 500
    assert result["profile:age"].length == 1  # sent once, not 500 times
    assert result["item_stats:popularity"].length == 500
    matrix, names = result.to_numpy()
    vec = [f"item_stats:vec[{i}]" for i in range(4)]
    assert names == ["profile:age", "item_stats:popularity", *vec, "affinity:affinity"]
    assert matrix.shape == (500, 7)
    assert np.all(matrix[:, 0] == 25)  # broadcast user feature
    expected_popularity = (np.array(items) % 100).astype(np.float32) / 100
    np.testing.assert_array_equal(matrix[:, 1], expected_popularity)
    # affinity = taste . vec = 1 * (item_id % 7)
    np.testing.assert_array_equal(matrix[:, 6], (np.array(items) % 7).astype(np.float32))
    assert result.count(Status.PRESENT) == 500 * 4  # 1-row user column counts broadcast rows


def test_composite_entity_broadcasts_user_over_items(client: FeatureClient, ids: Ids) -> None:
    user = ids("pair")
    client.write_features(
        "pair",
        entities={"user_id": [user, user], "item_id": [1, 3]},
        event_timestamps_us=[defs.now_us()] * 2,
        features={"progress": np.array([0.25, 0.75], np.float32)},
    )

    result = client.get_features(
        ["pair:progress"], entities={"user_id": [user], "item_id": [1, 2, 3]}
    )

    assert result["pair:progress"].values.tolist() == [0.25, 0.0, 0.75]
    assert result.statuses("pair:progress").tolist() == [
        Status.PRESENT,
        Status.NOT_FOUND,
        Status.PRESENT,
    ]


def test_versions_are_served_side_by_side(client: FeatureClient, ids: Ids) -> None:
    user = ids("versioned")
    defs.write_profiles(client, [user], ages=[50])
    client.write_features(
        "profile@v1",
        entities={"user_id": [user]},
        event_timestamps_us=[defs.now_us()],
        features={"age": [49], "score": (ValueType.FLOAT32, [0.1])},  # the type stated
    )

    result = client.get_features(
        ["profile@v1:age", "profile@v1:score", "profile:age", "profile@v2:score"],
        entities={"user_id": [user]},
    )

    assert result["profile@v1:age"].values.tolist() == [49]
    assert result["profile@v1:age"].version == 1
    assert result["profile:age"].values.tolist() == [50]
    assert result["profile@v2:score"].values.tolist() == [0.5]
    assert result["profile@v1:score"].type == ValueType.FLOAT32


def test_stale_values_are_served_flagged(client: FeatureClient, ids: Ids) -> None:
    fresh, old = ids("fresh"), ids("old")
    defs.write_profiles(client, [fresh], ages=[20])
    two_hours_ago = defs.now_us() - 2 * 3600 * 1_000_000
    defs.write_profiles(client, [old], ages=[60], at_us=two_hours_ago)

    result = client.get_features(
        ["profile:age"], entities={"user_id": [fresh, old]}, include_event_timestamps=True
    )

    assert result["profile:age"].values.tolist() == [20, 60]  # the stale value, not the default
    assert result.statuses("profile:age").tolist() == [Status.PRESENT, Status.STALE]
    stamps = result["profile:age"].event_time_us
    assert stamps is not None
    assert int(stamps[1]) == two_hours_ago


def test_out_of_order_write_never_overwrites_newer(client: FeatureClient, ids: Ids) -> None:
    user = ids("ordered")
    t = defs.now_us()
    assert defs.write_profiles(client, [user], ages=[31], at_us=t).written == 1
    late = defs.write_profiles(client, [user], ages=[30], at_us=t - 1_000_000)
    assert (late.written, late.skipped_older) == (0, 1)
    newer = defs.write_profiles(client, [user], ages=[32], at_us=t + 1)
    assert newer.written == 1

    result = client.get_features(["profile:age"], entities={"user_id": [user]})
    assert result["profile:age"].values.tolist() == [32]


def test_on_demand_transform_matches_offline_run(client: FeatureClient, ids: Ids) -> None:
    users = [ids("a"), ids("b")]
    defs.write_profiles(client, users, ages=[17, 40])

    online = client.get_features(
        ["birth:*", "profile:age"], entities={"user_id": users}, context={"year": [2026]}
    )
    offline = defs.birth.apply_offline(
        {"profile:age": online.values("profile:age"), "year": [2026]}
    )

    assert online.values("birth:birth_year").tolist() == [2009, 1986]
    assert online.values("birth:adult").tolist() == [False, True]
    np.testing.assert_array_equal(online.values("birth:birth_year"), offline["birth_year"])
    np.testing.assert_array_equal(online.values("birth:adult"), offline["adult"])


def test_on_demand_output_inherits_worst_input_status(client: FeatureClient, ids: Ids) -> None:
    user = ids("partial")
    defs.write_profiles(client, [user], ages=[33])
    defs.write_items(client, [7])

    result = client.get_features(
        ["affinity:affinity"], entities={"user_id": [user], "item_id": [7, 999_999_999]}
    )

    assert result.statuses("affinity:affinity").tolist() == [Status.PRESENT, Status.NOT_FOUND]


def test_strict_mode_fails_instead_of_serving_defaults(client: FeatureClient, ids: Ids) -> None:
    user = ids("strict")
    defs.write_profiles(client, [user], ages=[21])
    assert client.get_features(["profile:age"], entities={"user_id": [user]}, strict=True).rows == 1

    with pytest.raises(NotFound, match=r"1 of 2 entities have no row in feature view 'profile@v2'"):
        client.get_features(["profile:age"], entities={"user_id": [user, ids("x")]}, strict=True)


def test_int_and_string_keys_with_special_characters(client: FeatureClient, ids: Ids) -> None:
    tricky = [ids("a{b}c"), ids("p|q%r"), ids("}{")]
    defs.write_profiles(client, tricky, ages=[1, 2, 3])

    result = client.get_features(["profile:age"], entities={"user_id": tricky})

    assert result["profile:age"].values.tolist() == [1, 2, 3]
    assert result.count(Status.NOT_FOUND) == 0


def test_list_features_describes_the_registry(client: FeatureClient) -> None:
    catalog = client.list_features()

    views = {(v.name, v.version): v for v in catalog.views}
    assert set(views) == {("profile", 1), ("profile", 2), ("item_stats", 1), ("pair", 1)}
    assert views[("profile", 2)].is_default
    assert not views[("profile", 1)].is_default
    assert views[("profile", 2)].max_age_seconds == 3600
    assert views[("pair", 1)].retention_seconds == 86400
    taste = next(f for f in views[("profile", 2)].features if f.name == "taste")
    assert (taste.dim, taste.default) == (4, "[0.0, 0.0, 0.0, 1.0]")
    entities = {e.name: list(e.join_keys) for e in catalog.entities}
    assert entities["user_item"] == ["user_id", "item_id"]
    assert {t.name for t in catalog.on_demand} == {"affinity", "birth"}


def test_health_and_reflection(server: ServerThread) -> None:
    with grpc.insecure_channel(server.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "featurewell.v1.FeatureService"):
            reply = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        (answer,) = list(stub.ServerReflectionInfo(iter([request]), timeout=5))
        names = {s.name for s in answer.list_services_response.service}
        assert "featurewell.v1.FeatureService" in names
        assert "grpc.health.v1.Health" in names
