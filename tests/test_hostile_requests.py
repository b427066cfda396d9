"""Hostile requests over real gRPC: bytes that are not a valid message (sent on a raw channel with
no serialisers), invalid UTF-8, huge echoed input. Each gets INVALID_ARGUMENT with a message that
says what is wrong, never UNKNOWN, and the server keeps serving."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest

from featurewell.client import FeatureClient, FeatureClientError
from featurewell.v1 import feature_service_pb2 as pb
from tests import defs
from tests.tools import Ids, ServerThread

SERVICE = "/featurewell.v1.FeatureService/"


@pytest.fixture
def channel(server: ServerThread) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(server.address) as opened:
        yield opened


def raw(channel: grpc.Channel, method: str) -> grpc.UnaryUnaryMultiCallable[bytes, bytes]:
    """`method` with no serialisers: bytes in, bytes out."""
    return channel.unary_unary(SERVICE + method)


def raw_call(channel: grpc.Channel, method: str, payload: bytes) -> grpc.Call:
    """Send `payload` as the request bytes of `method` and return the error it got."""
    with pytest.raises(grpc.RpcError) as error:
        raw(channel, method)(payload, timeout=5)
    assert isinstance(error.value, grpc.Call)
    return error.value


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field (strings, messages) with a one-byte length."""
    assert len(payload) < 128
    return bytes([number << 3 | 2, len(payload)]) + payload


CORRUPT = {
    "truncated-length": b"\x0a\x7fabc",  # field 1 claims 127 bytes, 3 follow
    "bad-wire-type": b"\x0f\x00",  # wire type 7 does not exist
    "bad-varint": b"\x10" + b"\xff" * 11,  # a varint longer than 10 bytes
    "group-end-without-start": b"\x0c",
}
INVALID_UTF8 = {
    # GetFeaturesRequest.features (1: repeated string)
    "GetFeatures": _field(1, b"profile:\xff\xfe"),
    # WriteFeaturesRequest.view (1: string)
    "WriteFeatures": _field(1, b"prof\xc3\x28ile"),
}


@pytest.mark.parametrize("method", ["GetFeatures", "WriteFeatures", "ListFeatures"])
@pytest.mark.parametrize("case", sorted(CORRUPT))
def test_corrupt_wire_format_is_invalid_argument(
    channel: grpc.Channel, method: str, case: str
) -> None:
    error = raw_call(channel, method, CORRUPT[case])
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    request = "ListFeaturesRequest" if method == "ListFeatures" else f"{method}Request"
    assert f"the {request} ({len(CORRUPT[case])} bytes) is not valid protobuf" in str(
        error.details()
    )


@pytest.mark.parametrize("method", sorted(INVALID_UTF8))
def test_invalid_utf8_in_a_string_field_is_invalid_argument(
    channel: grpc.Channel, method: str
) -> None:
    error = raw_call(channel, method, INVALID_UTF8[method])
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    assert "not valid UTF-8" in str(error.details())


def test_valid_bytes_on_a_raw_channel_are_served(channel: grpc.Channel, ids: Ids) -> None:
    """The bytes-in registration serves a well-formed request exactly like the stubs do."""
    request = pb.GetFeaturesRequest(
        features=["profile:age"],
        entities={"user_id": pb.Values(strings=pb.StringList(values=[ids("raw")]))},
    )
    reply = raw(channel, "GetFeatures")(request.SerializeToString(), timeout=5)
    answer = pb.GetFeaturesResponse.FromString(reply)
    assert answer.row_count == 1
    assert [c.name for c in answer.columns] == ["profile:age"]


def test_huge_echoed_input_is_cut_in_the_message(client: FeatureClient) -> None:
    key = "k" * 3_000_000  # a 3 MB entity key name
    with pytest.raises(FeatureClientError) as error:
        client.get_features(["profile:age"], entities={key: ["u"]})
    assert error.value.code == grpc.StatusCode.INVALID_ARGUMENT
    message = str(error.value)
    assert "unknown entity key" in message
    assert len(message) < 1500
    assert "(3000000 chars)" in message


def test_the_server_still_serves_after_hostile_requests(
    channel: grpc.Channel, client: FeatureClient, ids: Ids
) -> None:
    for payload in CORRUPT.values():
        raw_call(channel, "GetFeatures", payload)
    user = ids("after-hostile")
    defs.write_profiles(client, [user], ages=[33])
    assert client.get_features(["profile:age"], entities={"user_id": [user]})[
        "profile:age"
    ].values.tolist() == [33]
