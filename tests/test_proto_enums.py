"""Enums that mirror the proto's by number, checked against the descriptor: every member's name
and number match a proto value, and every proto value has a member, except the ones listed here
as unspecified (zero). A renumbered, renamed, added or dropped value on either side fails."""

from __future__ import annotations

import enum
from collections.abc import Mapping

import pytest

from featurewell import client, values
from featurewell.definitions import Kind
from featurewell.store.batch import FailureReason
from featurewell.v1 import feature_service_pb2 as pb


def _members(cls: type[enum.IntEnum]) -> dict[str, int]:
    """Every name, aliases included (iterating an enum hides them)."""
    return {name: int(member) for name, member in cls.__members__.items()}


MIRRORS: dict[str, tuple[Mapping[str, int], str, str, Mapping[str, str]]] = {
    # what: (name -> number, proto enum, the proto names' prefix, our name -> proto name)
    "client Status": (_members(client.Status), "FeatureStatus", "FEATURE_STATUS_", {}),
    "client FallbackReason": (
        _members(client.FallbackReason),
        "FallbackReason",
        "FALLBACK_REASON_",
        {},
    ),
    "client ValueType": (_members(client.ValueType), "ValueType", "VALUE_TYPE_", {}),
    "server Status": (_members(values.Status), "FeatureStatus", "FEATURE_STATUS_", {}),
    # The plain-int copies the hot paths use (values.PRESENT, ...), one per Status name.
    "server status constants": (
        {name: getattr(values, name) for name in values.Status.__members__},
        "FeatureStatus",
        "FEATURE_STATUS_",
        {},
    ),
    "server FailureReason": (
        _members(FailureReason),
        "FallbackReason",
        "FALLBACK_REASON_",
        {"TIMEOUT": "STORE_TIMEOUT", "UNAVAILABLE": "STORE_UNAVAILABLE"},
    ),
    "definitions Kind": (_members(Kind), "ValueType", "VALUE_TYPE_", {}),
    "client ViewStatus": (_members(client.ViewStatus), "ViewStatus", "VIEW_STATUS_", {}),
}

# Proto values with no counterpart on purpose: the zero "not set" value of each enum.
UNSPECIFIED = {
    "FeatureStatus": {"FEATURE_STATUS_UNSPECIFIED"},
    "FallbackReason": {"FALLBACK_REASON_UNSPECIFIED"},
    "ValueType": {"VALUE_TYPE_UNSPECIFIED"},
    "ViewStatus": {"VIEW_STATUS_UNSPECIFIED"},
}


def proto_enum(name: str) -> dict[str, int]:
    return {v.name: v.number for v in pb.DESCRIPTOR.enum_types_by_name[name].values}


@pytest.mark.parametrize("what", sorted(MIRRORS))
def test_enum_mirrors_the_proto(what: str) -> None:
    members, enum_name, prefix, renamed = MIRRORS[what]
    ours = {prefix + renamed.get(name, name): number for name, number in members.items()}
    assert len(set(ours.values())) == len(ours), f"{what}: two names share a number"
    left_out = UNSPECIFIED[enum_name]
    expected = {name: n for name, n in proto_enum(enum_name).items() if name not in left_out}
    assert ours == expected, f"{what} does not match the proto's {enum_name}"


def test_every_proto_enum_is_mirrored_and_only_its_zero_value_left_out() -> None:
    assert sorted(pb.DESCRIPTOR.enum_types_by_name) == sorted(UNSPECIFIED)
    assert {entry[1] for entry in MIRRORS.values()} == set(UNSPECIFIED)
    for enum_name, left_out in UNSPECIFIED.items():
        proto = proto_enum(enum_name)
        assert {name: proto.get(name) for name in left_out} == dict.fromkeys(left_out, 0)
