"""Redis key layout: every key featurewell reads or writes is built here, and only here.

  family          key                                        type    hash tag (slot)
  row             fw:<view>:v<n>:{<entity tag>}              string  the entity tag
  state           fw:_agg:<view>:v<n>:{<entity tag>}         string  the entity tag
  marker          fw:{_meta}:<view>:v<n>                     hash    _meta
  defaults        fw:{_meta}:defaults                        hash    _meta
  defaults_log    fw:{_meta}:defaults:log                    list    _meta
  consumer_calls  fw:{_meta}:consumers                       hash    _meta
  consumer_seen   fw:{_meta}:consumers:seen                  hash    _meta
  consumer_days   fw:{_meta}:consumers:day:<YYYYMMDD>        hash    _meta
  watermarks      fw:{_stream}:<source>:<group>:watermarks   string  _stream
  events          fw:events:<source>[:<partition>]           stream  none: the whole key
  dead_letters    fw:_deadletters:<source>                   stream  none: the whole key

- row (store/online.py): a view version's feature row for one entity. Every view of one entity
  shares the tag, hence the slot and the node: one round trip per node.
- state (store/state.py): the streaming engine's tiles of one entity, beside its rows.
- marker (store/online.py): a view version's newest event time and last write time. All
  `{_meta}` keys share one slot, so one node answers for all of them at once.
- defaults, defaults_log (store/versions.py): view name -> promoted default version; every
  promote and rollback, newest first, JSON.
- consumer_calls, consumer_seen (store/consumers.py): "<caller>|<view>@v<n>" -> calls; last
  call, Unix seconds.
- consumer_days (store/consumers.py): the same calls counted per UTC day, one hash a day that
  expires after `CONSUMER_DAYS_KEPT` days (`featurewell impact`, `featurewell unused`).
- watermarks (store/state.py): JSON {partition: newest event time read, µs}, per source and
  consumer group.
- events (store/streams.py): one stream per partition (":<partition>" only when the source has
  several), each in a slot of its own so partitions spread over the nodes. `EventSource(stream=
  ...)` replaces `fw:events:<source>` with the user's name (refused if another family's key).
- dead_letters (store/streams.py, compute/deadletters.py): the events of a source the stream
  refused (malformed, or refused by a view), with the reason and the payload, until replayed or
  dropped. One stream per source, whatever its partitions (each letter names its partition).
  '_deadletters', like '_agg', is never a view name: no row key, nor a glob of rows (Redis ACL
  key patterns are globs of these families), starts like a dead-letter key.

Why no two families can collide (tests/test_keys.py checks it): view and source names are
`[a-z][a-z0-9_]*` (definitions' check_name), so a name is never '{_meta}', '{_stream}',
'_agg' or '_deadletters' and holds no ':', '{' or '}'. A row ends in ':{<tag>}'; an events key
holds no '{'. Markers end in ':v<n>', the other `{_meta}` keys do not. A group is free text,
but it sits between '<source>:' and the fixed ':watermarks' inside the '{_stream}' family.

The entity tag is the entity's key values, composite keys joined by '|'. '%', '{', '}' and '|'
inside a string key are percent-escaped so a key value can neither end the hash tag early nor
collide with another composite key. A lone empty string is '%00' (escaping never makes it:
'%' is '%25'): Redis hashes a key ending in an empty '{}' by the whole key, which would part an
entity's views, so their MGET, across slots (and send every row to a node that answers MOVED).
"""

from __future__ import annotations

import re
from binascii import crc_hqx
from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

from featurewell.definitions import EventSource, FeatureView
from featurewell.errors import DefinitionError

SLOTS = 16384
_SPECIAL = (b"%", b"{", b"}", b"|")
_ESCAPES = {b"%": b"%25", b"{": b"%7B", b"}": b"%7D", b"|": b"%7C"}
_EMPTY = b"%00"  # the tag of a lone empty string key
KeyColumn = Sequence[int] | Sequence[str]

DEFAULTS_KEY = b"fw:{_meta}:defaults"
DEFAULTS_LOG_KEY = b"fw:{_meta}:defaults:log"
CONSUMER_CALLS_KEY = b"fw:{_meta}:consumers"
CONSUMER_SEEN_KEY = b"fw:{_meta}:consumers:seen"
CONSUMER_DAYS_KEPT = 92  # days of per-day consumer counts (`featurewell impact --days`)


def consumer_day_key(day: str) -> bytes:
    """The per-day consumer counts of `day`, "YYYYMMDD" (UTC)."""
    if len(day) != 8 or not day.isdigit():
        raise ValueError(f"a consumer day is YYYYMMDD, got {day!r}")
    return f"fw:{{_meta}}:consumers:day:{day}".encode()


def key_prefix(view: FeatureView) -> bytes:
    """A row key without its tag and closing '}': `key_prefix(view) + tag + b"}"`."""
    return f"fw:{view.name}:v{view.version}:{{".encode()


def view_keys(prefix: bytes, tags: Sequence[bytes]) -> list[bytes]:
    return [prefix + tag + b"}" for tag in tags]


def state_prefix(view: FeatureView) -> bytes:
    """A state key without its tag and closing '}' (`view_keys` completes it)."""
    return f"fw:_agg:{view.name}:v{view.version}:{{".encode()


def freshness_key(view: FeatureView) -> bytes:
    """The view's write marker (newest event time written, time of the last write)."""
    return f"fw:{{_meta}}:{view.name}:v{view.version}".encode()


def watermarks_key(source: EventSource, group: str) -> bytes:
    """A consumer group's checkpointed watermarks of one event source."""
    return f"fw:{{_stream}}:{source.name}:{group}:watermarks".encode()


def stream_progress_key(source: EventSource, group: str) -> bytes:
    """A consumer group's stream progress (a hash, store/state.py): per partition, the position
    its offline history covers, and per consumer, its last history batch. In the watermarks
    family (the group "<group>:progress"), so the roles that keep stream state may use it."""
    return watermarks_key(source, f"{group}:progress")


def stream_lease_key(source: EventSource, group: str, partition: int) -> bytes:
    """Which consumer of the group owns a partition (store/streams.py `lease`), while its lease
    lasts. In the watermarks family (the group "<group>:lease:<partition>")."""
    return watermarks_key(source, f"{group}:lease:{partition}")


def stream_members_key(source: EventSource, group: str) -> bytes:
    """The group's consumers sharing partitions, each with its last heartbeat (ms; a hash). In
    the watermarks family (the group "<group>:members")."""
    return watermarks_key(source, f"{group}:members")


def dead_letters_key(source: EventSource) -> str:
    """The stream of the events `featurewell stream` refused from `source`."""
    return f"fw:_deadletters:{source.name}"


def stream_name(source: EventSource) -> str:
    """The source's stream name: the user's `stream=`, or featurewell's. With several
    partitions, each partition's key is the name and ':<partition>'."""
    return source.stream or f"fw:events:{source.name}"


def stream_keys(source: EventSource) -> list[str]:
    """The source's Redis Stream keys, by partition. Raises DefinitionError when a `stream=`
    override lands on a key featurewell uses for something else (another source's events, rows,
    the `{_meta}` keys...): its commands would fail with WRONGTYPE, or mix two sources."""
    base = stream_name(source)
    keys = [base] if source.partitions == 1 else [f"{base}:{p}" for p in range(source.partitions)]
    if source.stream:
        for key in keys:
            for family, parts in families_of(key):
                if family.name != "events" or parts["source"] != source.name.encode():
                    raise DefinitionError(
                        f"event source {source.name!r}: stream {key!r} is featurewell's "
                        f"{family.name} key; pick a stream name outside 'fw:'"
                    )
    return keys


@dataclass(frozen=True)
class Family:
    """One kind of key: its name in the table above, the pattern its keys match whole (named
    groups are the key's parts) and its fixed hash tag (None: the key's own, or none)."""

    name: str
    pattern: re.Pattern[bytes]
    tag: bytes | None = None


# Names as definitions' check_name allows them; versions and partitions as written above.
_NAME = rb"[a-z][a-z0-9_]*"
_VERSION = rb"v(?P<version>[0-9]+)"
_TAG = rb"\{(?P<tag>[^{}]*)\}"
# A group is any text (':watermarks' included): the source before it has no ':' and the suffix
# is fixed, so a key splits one way only.
_WATERMARKS = rb"fw:\{_stream\}:(?P<source>" + _NAME + rb"):(?P<group>.*):watermarks"


def _family(name: str, pattern: bytes, tag: bytes | None = None) -> Family:
    return Family(name, re.compile(pattern, re.DOTALL), tag)


FAMILIES = (
    _family("row", rb"fw:(?P<view>" + _NAME + rb"):" + _VERSION + b":" + _TAG),
    _family("state", rb"fw:_agg:(?P<view>" + _NAME + rb"):" + _VERSION + b":" + _TAG),
    _family("marker", rb"fw:\{_meta\}:(?P<view>" + _NAME + rb"):" + _VERSION, b"_meta"),
    _family("defaults", re.escape(DEFAULTS_KEY), b"_meta"),
    _family("defaults_log", re.escape(DEFAULTS_LOG_KEY), b"_meta"),
    _family("consumer_calls", re.escape(CONSUMER_CALLS_KEY), b"_meta"),
    _family("consumer_seen", re.escape(CONSUMER_SEEN_KEY), b"_meta"),
    _family("consumer_days", rb"fw:\{_meta\}:consumers:day:(?P<day>[0-9]+)", b"_meta"),
    _family("watermarks", _WATERMARKS, b"_stream"),
    _family("events", rb"fw:events:(?P<source>" + _NAME + rb")(?::(?P<partition>[0-9]+))?"),
    _family("dead_letters", rb"fw:_deadletters:(?P<source>" + _NAME + rb")"),
)


def families_of(key: bytes | str) -> list[tuple[Family, dict[str, bytes]]]:
    """Every family whose pattern `key` matches, with its parts: one for a featurewell key,
    none for another (a user's stream)."""
    raw = key.encode() if isinstance(key, str) else key
    found = []
    for family in FAMILIES:
        match = family.pattern.fullmatch(raw)
        if match is not None:
            parts = {name: value for name, value in match.groupdict().items() if value is not None}
            found.append((family, parts))
    return found


META_SLOT = crc_hqx(b"_meta", 0) & (SLOTS - 1)  # the slot of every `{_meta}` key


def slot_of(tag: bytes) -> int:
    """Cluster slot of a key whose hash tag is `tag` (CRC16/XMODEM, as Redis computes it)."""
    return crc_hqx(tag, 0) & (SLOTS - 1)


def key_slot(key: bytes | str) -> int:
    """Cluster slot of a whole key, honouring its {hash tag} as Redis does."""
    raw = key.encode() if isinstance(key, str) else key
    start = raw.find(b"{")
    if start >= 0:
        end = raw.find(b"}", start + 1)
        if end > start + 1:
            raw = raw[start + 1 : end]
    return slot_of(raw)


def slots_of(tags: Sequence[bytes]) -> list[int]:
    """`slot_of` for many tags (inlined: a function call per tag costs as much as the CRC)."""
    mask = SLOTS - 1
    return [crc_hqx(tag, 0) & mask for tag in tags]


def entity_tags(columns: Sequence[KeyColumn], rows: int) -> list[bytes]:
    """Hash tags for one entity's key columns. Each column has length 1 or `rows`; when every
    column has length 1 the entity has one row (a user in a ranking call), else `rows`."""
    encoded = [_encode_column(column) for column in columns]
    if len(encoded) == 1:
        tags = encoded[0]
        # Composite tags hold a '|' and integers a digit: only a lone empty string is empty.
        return tags if all(tags) else [tag or _EMPTY for tag in tags]
    width = rows if any(len(c) > 1 for c in encoded) else 1
    stretched = [c * width if len(c) == 1 else c for c in encoded]
    return [b"|".join(parts) for parts in zip(*stretched, strict=True)]


def _encode_column(column: KeyColumn) -> list[bytes]:
    if not column or not isinstance(column[0], str):
        return [b"%d" % value for value in cast(Sequence[int], column)]
    # One encode of the values joined by NUL, split back: three C calls instead of one encode
    # per value (500 item ids). A value holding a NUL itself splits into more parts than there
    # are values, and is encoded one by one.
    joined = "\0".join(cast(Sequence[str], column)).encode()
    out = joined.split(b"\0")
    if len(out) != len(column):
        out = [value.encode() for value in cast(Sequence[str], column)]
    if any(special in joined for special in _SPECIAL):
        out = [_escape(value) for value in out]
    return out


def entity_of_tag(tag: bytes, integer_keys: Sequence[bool]) -> tuple[int | str, ...]:
    """The key values a hash tag encodes (`entity_tags` backwards), e.g. for sampling keys."""
    if tag == _EMPTY and len(integer_keys) == 1:
        return ("",)
    parts = tag.split(b"|")
    if len(parts) != len(integer_keys):
        raise ValueError(f"tag {tag!r} does not have {len(integer_keys)} key parts")
    return tuple(
        int(part) if integer else _unescape(part).decode()
        for part, integer in zip(parts, integer_keys, strict=True)
    )


def _unescape(value: bytes) -> bytes:
    if b"%" not in value:
        return value
    for raw in reversed(_SPECIAL):  # '%' last, so an escaped '%25' is not read twice
        value = value.replace(_ESCAPES[raw], raw)
    return value


def _escape(value: bytes) -> bytes:
    for raw in _SPECIAL:  # '%' first, so escapes are not escaped again
        if raw in value:
            value = value.replace(raw, _ESCAPES[raw])
    return value
