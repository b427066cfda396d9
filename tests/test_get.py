"""Readable answers: `featurewell get` (a table with statuses and ages, or JSON) and the
`typed_values` request option that answers typed lists instead of packed bytes, for grpcurl and
languages without the client. Against a real server on the shared cluster."""

from __future__ import annotations

import json

import grpc
import numpy as np
import pytest
from google.protobuf import json_format

from featurewell import cli
from featurewell.client import Column, FeatureClient, FeatureResult, Status
from featurewell.lifecycle.lineage import describe, render
from featurewell.v1 import feature_service_pb2 as pb
from featurewell.v1 import feature_service_pb2_grpc as pb_grpc
from tests import defs
from tests.tools import Ids, ServerThread

PROFILE = "profile:age,profile:score,profile:country,profile:taste,profile:recent"


def _get(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    cli.main(["get", *args])
    return capsys.readouterr().out


def test_get_prints_values_statuses_and_ages(
    server: ServerThread, client: FeatureClient, ids: Ids, capsys: pytest.CaptureFixture[str]
) -> None:
    known, unknown = ids("u"), ids("nobody")
    defs.write_profiles(client, [known], ages=[42], at_us=defs.now_us() - 90_000_000)
    out = _get(
        capsys,
        "--server", server.address, "--features", PROFILE,
        "--entity", f"user_id={known},{unknown}",
    )  # fmt: skip
    lines = out.splitlines()
    assert lines[0].split() == ["entity", "feature", "value", "status", "age"]
    rows = {(ln.split()[0], ln.split()[1]): ln for ln in lines[1:]}
    age_row = rows[(f"user_id={known}", "profile:age")]
    assert age_row.split()[2:4] == ["42", "PRESENT"]
    assert age_row.endswith("min")  # written 90 s ago: "1.5 min"
    assert 1.4 <= float(age_row.split()[-2]) <= 1.7
    assert rows[(f"user_id={known}", "profile:score")].split()[2] == "0.42"
    assert rows[(f"user_id={known}", "profile:country")].split()[2] == "c42"
    # Defaults of a missing entity, flagged, with no age; vectors as numbers, not reprs.
    missing = rows[(f"user_id={unknown}", "profile:taste")]
    assert "[0.0, 0.0, 0.0, 1.0]" in missing
    assert "NOT_FOUND" in missing
    assert missing.split()[-1] == "-"
    assert "np." not in out
    assert "array(" not in out


def test_get_json_for_scripts(
    server: ServerThread, client: FeatureClient, ids: Ids, capsys: pytest.CaptureFixture[str]
) -> None:
    user = ids("u")
    defs.write_profiles(client, [user], ages=[7])
    defs.write_items(client, [11, 12])
    out = _get(
        capsys,
        "--server", server.address, "--json",
        "--features", "profile:age,item_stats:popularity,affinity:*",
        "--entity", f"user_id={user}", "--entity", "item_id=11,12,999999",
    )  # fmt: skip
    answer = json.loads(out)
    rows = answer["rows"]
    assert [r["entity"] for r in rows] == [
        {"user_id": user, "item_id": 11},  # item ids typed as the catalog says (Int64)
        {"user_id": user, "item_id": 12},
        {"user_id": user, "item_id": 999999},
    ]
    assert rows[0]["features"]["profile:age"]["value"] == 7
    assert rows[0]["features"]["profile:age"]["status"] == "PRESENT"
    assert 0 <= rows[0]["features"]["profile:age"]["age_s"] < 60
    assert rows[1]["features"]["item_stats:popularity"]["value"] == 0.12  # float32, shortest
    assert rows[2]["features"]["item_stats:popularity"]["status"] == "NOT_FOUND"
    assert rows[2]["features"]["item_stats:popularity"]["age_s"] is None
    assert "affinity:affinity" in rows[0]["features"]
    assert answer["deprecations"] == []
    assert answer["fallbacks"] == []


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--features", "nope:x", "--entity", "user_id=u"], "no feature view 'nope'"),
        (["--features", "item_stats:vec", "--entity", "item_id=abc"], "is an integer"),
        (["--features", "profile:age", "--entity", "user_id"], "KEY=VALUE"),
    ],
)
def test_get_errors_exit_2_with_the_reason(
    server: ServerThread, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    with pytest.raises(SystemExit) as raised:
        cli.main(["get", "--server", server.address, *args])
    assert raised.value.code == 2
    assert message in capsys.readouterr().err


def _typed_call(server: ServerThread, request: pb.GetFeaturesRequest) -> pb.GetFeaturesResponse:
    with grpc.insecure_channel(server.address) as channel:
        response: pb.GetFeaturesResponse = pb_grpc.FeatureServiceStub(channel).GetFeatures(
            request, timeout=5
        )
    return response


def test_typed_values_answer_lists_a_stub_reads_directly(
    server: ServerThread, client: FeatureClient, ids: Ids
) -> None:
    user = ids("u")
    defs.write_profiles(client, [user], ages=[30])
    request = pb.GetFeaturesRequest(
        features=["profile:*"],
        entities={"user_id": pb.Values(strings=pb.StringList(values=[user, ids("nobody")]))},
        include_event_timestamps=True,
        typed_values=True,
    )
    response = _typed_call(server, request)
    columns = {c.name: c for c in response.columns}
    age = columns["profile:age"]
    assert not age.data
    assert not age.statuses
    assert not age.event_timestamps
    assert list(age.typed.int64s.values) == [30, -1]
    assert [int(s) for s in age.typed_statuses] == [Status.PRESENT, Status.NOT_FOUND]
    assert age.typed_event_timestamps[0] > 0
    assert age.typed_event_timestamps[1] == 0
    assert list(columns["profile:score"].typed.doubles.values) == [0.3, 0.5]
    assert list(columns["profile:premium"].typed.bools.values) == [True, False]
    assert list(columns["profile:country"].typed.strings.values) == ["c30", "zz"]
    taste = columns["profile:taste"]
    assert taste.dim == 4
    assert list(taste.typed.doubles.values) == [1, 0, 0, 0, 0, 0, 0, 1]
    recent = columns["profile:recent"]
    assert list(recent.typed.int64s.values) == [0, 1]
    assert list(recent.typed_row_lengths) == [2, 0]
    # grpcurl prints the proto JSON mapping: numbers and names, no base64.
    shown = json.loads(json_format.MessageToJson(response))
    shown_age = next(c for c in shown["columns"] if c["name"] == "profile:age")
    assert shown_age["typed"] == {"int64s": {"values": ["30", "-1"]}}
    assert shown_age["typedStatuses"] == ["FEATURE_STATUS_PRESENT", "FEATURE_STATUS_NOT_FOUND"]
    assert "data" not in shown_age


def test_typed_and_packed_answers_decode_to_the_same_values(
    server: ServerThread, client: FeatureClient, ids: Ids
) -> None:
    user = ids("u")
    defs.write_profiles(client, [user], ages=[51])
    defs.write_items(client, [3, 4])
    request = pb.GetFeaturesRequest(
        features=["profile:*", "item_stats:*", "affinity:*", "pair:progress"],
        entities={
            "user_id": pb.Values(strings=pb.StringList(values=[user])),
            "item_id": pb.Values(int64s=pb.Int64List(values=[3, 4, 5])),
        },
        include_event_timestamps=True,
    )
    packed = FeatureResult(_typed_call(server, request))
    request.typed_values = True
    typed = FeatureResult(_typed_call(server, request))
    assert list(typed) == list(packed)
    for name in packed:
        a, b = packed[name], typed[name]
        assert (a.type, a.length, a.entity, a.version) == (b.type, b.length, b.entity, b.version)
        assert np.array_equal(a.statuses, b.statuses), name
        if a.event_time_us is None:  # on-demand outputs have no event time
            assert b.event_time_us is None, name
        else:
            assert b.event_time_us is not None, name
            assert np.array_equal(a.event_time_us, b.event_time_us), name
        _same_values(a, b)


def _same_values(a: Column, b: Column) -> None:
    if isinstance(a.values, list):
        assert len(a.values) == len(b.values)
        for x, y in zip(a.values, b.values, strict=True):
            assert np.array_equal(x, y), a.name
            assert x.dtype == y.dtype, a.name
    else:
        assert a.values.dtype == b.values.dtype, a.name
        assert np.array_equal(a.values, b.values), a.name


def test_lineage_prints_defaults_as_values_not_numpy_reprs() -> None:
    text = render(describe(defs.registry(), {}, []))
    assert "- score: float32 (default 0.0)" in text
    assert "- taste: embedding[4] (default [0.0, 0.0, 0.0, 1.0])" in text
    assert "- country: string (default 'zz')" in text
    assert "np." not in text
    assert "array(" not in text
