"""Redis key layout: one key per (view, version, entity), the entity hash-tagged.

    fw:<view>:v<version>:{<entity tag>}
    fw:{_meta}:<view>:v<version>        a hash: the view's newest event time and last write

Every view of one entity shares the tag, hence the slot and the node: one round trip per node.
The tag is the entity's key values, composite keys joined by '|'. '%', '{', '}' and '|' inside a
string key are percent-escaped so a key value can neither end the hash tag early nor collide with
another composite key.
"""

from __future__ import annotations

from binascii import crc_hqx
from collections.abc import Sequence
from typing import cast

from featurewell.definitions import FeatureView

SLOTS = 16384
_SPECIAL = (b"%", b"{", b"}", b"|")
_ESCAPES = {b"%": b"%25", b"{": b"%7B", b"}": b"%7D", b"|": b"%7C"}

KeyColumn = Sequence[int] | Sequence[str]


def key_prefix(view: FeatureView) -> bytes:
    return f"fw:{view.name}:v{view.version}:{{".encode()


def freshness_key(view: FeatureView) -> bytes:
    """The view's write marker (newest event time written, time of the last write). Every
    view's marker shares the `{_meta}` tag, so one node answers for all of them at once."""
    return f"fw:{{_meta}}:{view.name}:v{view.version}".encode()


META_SLOT = crc_hqx(b"_meta", 0) & (SLOTS - 1)  # the slot of every view's write marker


def view_keys(prefix: bytes, tags: Sequence[bytes]) -> list[bytes]:
    return [prefix + tag + b"}" for tag in tags]


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
        return encoded[0]
    width = rows if any(len(c) > 1 for c in encoded) else 1
    stretched = [c * width if len(c) == 1 else c for c in encoded]
    return [b"|".join(parts) for parts in zip(*stretched, strict=True)]


def _encode_column(column: KeyColumn) -> list[bytes]:
    if not column or not isinstance(column[0], str):
        return [b"%d" % value for value in cast(Sequence[int], column)]
    out = [value.encode() for value in cast(Sequence[str], column)]
    joined = b"".join(out)
    if any(special in joined for special in _SPECIAL):
        out = [_escape(value) for value in out]
    return out


def entity_of_tag(tag: bytes, integer_keys: Sequence[bool]) -> tuple[int | str, ...]:
    """The key values a hash tag encodes (`entity_tags` backwards), e.g. for sampling keys."""
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
