"""The Redis key layout (store/keys.py): every family apart from every other. A key of one family
never equals, nor parses as, a key of another, and each lands in the slot it should (Redis's own
CLUSTER KEYSLOT is the judge), for names, groups and entity keys chosen to look like other
families' parts."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from featurewell.definitions import Entity, EventSource, Feature, FeatureView, Int64, String
from featurewell.devcluster import LocalCluster, call
from featurewell.errors import DefinitionError
from featurewell.store import keys
from featurewell.store.keys import (
    FAMILIES,
    entity_tags,
    families_of,
    key_slot,
    slot_of,
    slots_of,
)

# Names that pass check_name and read like other families' parts or like versions.
NAMES = [
    "events",
    "defaults",
    "consumers",
    "seen",
    "log",
    "watermarks",
    "meta",
    "agg",
    "stream",
    "v1",
    "v2",
    "v10",
    "x",
    "a_b",
    "events_0",
    "fw",
    "v1_1",
    "deadletters",
]
# Names that would break the layout: check_name keeps them out of every key.
BAD_NAMES = [
    "",
    ":",
    "a:b",
    "{",
    "}",
    "{_meta}",
    "_meta",
    "_agg",
    "_stream",
    "_deadletters",
    "a{b}",
    "1",
    "v1:{x}",
    "events:0",
    "Events",
    "a b",
    "a\n",
    "x" * 64,
]
GROUPS = [
    "featurewell",
    "",
    ":",
    "{",
    "}",
    "{_meta}",
    "_meta",
    "{_stream}",
    "watermarks",
    "a:watermarks",
    ":watermarks:",
    "x:v1:{y}",
    "events",
    "_agg",
    "0",
    "v1",
    "\n",
    "ü",
]
VERSIONS = [1, 2, 10, 123]
PARTITIONS = [1, 2, 11]
STRING_KEYS = [
    "",
    "a",
    "{",
    "}",
    "|",
    "%",
    "%7B",
    "%25",
    "a|b",
    "{_meta}",
    "_agg",
    "v1",
    "1",
    "events:0",
    "x}y{z",
    "}{",
    ":{",
    "ü",
    "\x00",
    "%00",
]
INT_KEYS = [0, 1, -1, 2**63 - 1, -(2**63)]
COMPOSITE_KEYS: list[tuple[Any, ...]] = [("", 0), ("a|b", 1), ("a", 1), ("{", -5), ("|", 0)]


def _tags() -> list[tuple[bytes, tuple[Any, ...]]]:
    """(tag, entity key) for adversarial entity keys of each kind of entity."""
    out: list[tuple[bytes, tuple[Any, ...]]] = [
        (keys.entity_tags([[s]], 1)[0], (s,)) for s in STRING_KEYS
    ]
    out += [(keys.entity_tags([[i]], 1)[0], (i,)) for i in INT_KEYS]
    out += [(keys.entity_tags([[s], [i]], 1)[0], (s, i)) for s, i in COMPOSITE_KEYS]
    return out


def _view(name: str, version: int) -> FeatureView:
    user = Entity("user", join_keys={"user_id": String})
    return FeatureView(name, entity=user, version=version, features=[Feature("f", Int64)])


def _source(name: str, partitions: int, stream: str = "") -> EventSource:
    return EventSource(name, keys={"user_id": String}, partitions=partitions, stream=stream)


@dataclass(frozen=True)
class Case:
    family: str
    key: bytes
    parts: dict[str, bytes]
    slot: int | None  # the slot the client routes it by (None: no hash tag, the whole key)


def _rows(prefix: Callable[[FeatureView], bytes], family: str) -> Iterator[Case]:
    for name in NAMES:
        for version in VERSIONS:
            for tag, _ in _tags():
                key = keys.view_keys(prefix(_view(name, version)), [tag])[0]
                parts = {"view": name.encode(), "version": b"%d" % version, "tag": tag}
                yield Case(family, key, parts, slots_of([tag])[0])


def _markers() -> Iterator[Case]:
    for name in NAMES:
        for version in VERSIONS:
            key = keys.freshness_key(_view(name, version))
            parts = {"view": name.encode(), "version": b"%d" % version}
            yield Case("marker", key, parts, keys.META_SLOT)


def _fixed(family: str, key: bytes) -> Callable[[], Iterator[Case]]:
    return lambda: iter([Case(family, key, {}, keys.META_SLOT)])


def _watermarks() -> Iterator[Case]:
    for name in NAMES:
        for group in GROUPS:
            key = keys.watermarks_key(_source(name, 1), group)
            parts = {"source": name.encode(), "group": group.encode()}
            yield Case("watermarks", key, parts, slot_of(b"_stream"))


def _events() -> Iterator[Case]:
    for name in NAMES:
        for partitions in PARTITIONS:
            for partition, key in enumerate(keys.stream_keys(_source(name, partitions))):
                parts = {"source": name.encode()}
                if partitions > 1:
                    parts["partition"] = b"%d" % partition
                yield Case("events", key.encode(), parts, None)


def _dead_letters() -> Iterator[Case]:
    for name in NAMES:
        key = keys.dead_letters_key(_source(name, 2))
        yield Case("dead_letters", key.encode(), {"source": name.encode()}, None)


BUILDERS: dict[str, Callable[[], Iterator[Case]]] = {
    "row": lambda: _rows(keys.key_prefix, "row"),
    "state": lambda: _rows(keys.state_prefix, "state"),
    "marker": _markers,
    "defaults": _fixed("defaults", keys.DEFAULTS_KEY),
    "defaults_log": _fixed("defaults_log", keys.DEFAULTS_LOG_KEY),
    "consumer_calls": _fixed("consumer_calls", keys.CONSUMER_CALLS_KEY),
    "consumer_seen": _fixed("consumer_seen", keys.CONSUMER_SEEN_KEY),
    "consumer_days": lambda: iter(
        [
            Case("consumer_days", keys.consumer_day_key(day), {"day": day.encode()}, keys.META_SLOT)
            for day in ("20261204", "19700101", "99991231")
        ]
    ),
    "watermarks": _watermarks,
    "events": _events,
    "dead_letters": _dead_letters,
}


@pytest.fixture(scope="module")
def cases() -> list[Case]:
    return [case for build in BUILDERS.values() for case in build()]


def test_every_family_is_tested() -> None:
    assert [f.name for f in FAMILIES] == list(BUILDERS)


def test_names_that_could_break_the_layout_are_refused() -> None:
    for name in BAD_NAMES:
        with pytest.raises(DefinitionError):
            _view(name, 1)
        with pytest.raises(DefinitionError):
            _source(name, 1)


def test_each_key_parses_as_its_own_family_only(cases: list[Case]) -> None:
    for case in cases:
        found = [(family.name, parts) for family, parts in families_of(case.key)]
        assert found == [(case.family, case.parts)], case.key


def test_no_two_keys_are_equal(cases: list[Case]) -> None:
    owner: dict[bytes, tuple[str, dict[str, bytes]]] = {}
    for case in cases:
        assert owner.setdefault(case.key, (case.family, case.parts)) == (
            case.family,
            case.parts,
        ), case.key


def test_keys_land_in_the_slot_they_are_routed_by(cases: list[Case], cluster: LocalCluster) -> None:
    """Redis hashes a key by its first non-empty {...}: for each key, the slot Redis computes is
    the one the client sends it to; keys without a tag hash whole."""
    port = cluster.masters[0]
    for case in cases:
        expected = slot_of(case.key) if case.slot is None else case.slot
        if case.slot is None:
            assert b"{" not in case.key
        assert key_slot(case.key) == expected, case.key
        assert call(port, "CLUSTER", "KEYSLOT", case.key) == expected, case.key


def test_fixed_hash_tags_are_the_ones_declared(cases: list[Case]) -> None:
    tags = {family.name: family.tag for family in FAMILIES}
    for case in cases:
        declared = tags[case.family]
        if declared is not None:
            assert case.slot == slot_of(declared), case.key
            assert b"{" + declared + b"}" in case.key, case.key


def test_an_entitys_rows_and_state_share_one_slot() -> None:
    """Every view of one entity (and its streaming state) in one slot: one MGET per entity."""
    for tag, _ in _tags():
        slots = {
            key_slot(keys.view_keys(prefix(_view(name, 1)), [tag])[0])
            for name in ("a", "events", "defaults")
            for prefix in (keys.key_prefix, keys.state_prefix)
        }
        assert slots == {slots_of([tag])[0]}, tag


def test_tags_read_back_as_their_entity_keys() -> None:
    for tag, entity in _tags():
        integer = [isinstance(value, int) for value in entity]
        assert keys.entity_of_tag(tag, integer) == entity, tag


@pytest.mark.parametrize(
    ("stream", "partitions"),
    [
        ("fw:events:other", 1),
        ("fw:events:other", 2),
        ("fw:events:other:0", 1),
        ("fw:{_meta}:defaults", 1),
        ("fw:{_meta}:defaults:log", 1),
        ("fw:{_meta}:consumers:seen", 1),
        ("fw:profile:v1:{u1}", 1),
        ("fw:_agg:profile:v2:{x}", 1),
        ("fw:{_meta}:profile:v1", 1),
        ("fw:{_stream}:watches:featurewell:watermarks", 1),
        ("fw:_deadletters:watches", 1),
        ("fw:_deadletters:other", 1),
    ],
)
def test_a_stream_override_on_another_familys_key_is_refused(stream: str, partitions: int) -> None:
    with pytest.raises(DefinitionError, match="featurewell's"):
        keys.stream_keys(_source("watches", partitions, stream))


def test_stream_overrides_outside_the_families_are_the_users() -> None:
    assert keys.stream_keys(_source("watches", 1, "events")) == ["events"]
    assert keys.stream_keys(_source("watches", 2, "fw:mine")) == ["fw:mine:0", "fw:mine:1"]
    assert keys.stream_keys(_source("watches", 2, "fw:events:watches")) == [
        "fw:events:watches:0",
        "fw:events:watches:1",
    ]  # its own default, spelled out


def test_string_keys_holding_a_nul_keep_their_own_tags() -> None:
    # Tags are encoded in one pass joined by NUL; a value holding one must not shift the others.
    values = ["a\0b", "c", "\0", "", "d{e}", "plain"]
    tags = entity_tags([values], len(values))
    assert tags == [entity_tags([[v]], 1)[0] for v in values]
    assert tags[:3] == [b"a\0b", b"c", b"\0"]
    assert tags[4] == b"d%7Be%7D"
