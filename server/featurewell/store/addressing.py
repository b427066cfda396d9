"""From what the engine asks for (views and entity key columns) to what Redis is sent (keys,
hash tags, slots, GET/MGET commands). Callers above the store never see a tag or a slot."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import repeat

import numpy as np
import numpy.typing as npt

from featurewell.definitions import FeatureView
from featurewell.store.keys import KeyColumn, entity_tags, key_prefix, slots_of, view_keys


@dataclass(frozen=True, slots=True)
class EntityRows:
    """One entity's rows in one or more of its views, as the engine asks for them. `keys` are
    the entity's key columns in `Entity.key_names` order, each of length 1 (broadcast) or
    `rows`. `cache_ttl` says how long a row may answer from the hot-key cache (0: never)."""

    views: Sequence[FeatureView]
    keys: Sequence[KeyColumn]
    rows: int
    cache_ttl: float = 0.0


@dataclass(frozen=True, slots=True)
class EntityRead:
    """`EntityRows` addressed: the key of row r in view v is `prefixes[v] + tags[r] + b"}"`.
    A row's keys share its hash tag, hence one slot, so each row is one GET (one view) or one
    MGET (several), and is cached as one entry. `slots` (each row's) may be given; the store
    otherwise computes them for the rows it sends (`slots_of`): a ranking's cached rows never
    need theirs (500 CRCs, 4-7% of a cached ranking's CPU: docs/performance.md)."""

    prefixes: list[bytes]
    tags: list[bytes]
    slots: list[int] | None = None
    cache_ttl: float = 0.0

    def row_slots(self, tags: Sequence[bytes] | None = None) -> list[int]:
        """The slots of `tags` (default: every row's)."""
        if tags is None:
            return self.slots if self.slots is not None else slots_of(self.tags)
        return slots_of(tags)

    def commands(self, tags: Sequence[bytes] | None = None) -> list[bytes]:
        """One GET/MGET per row (of `tags`, default all the read's rows). A row's command is
        `tag.join(template)`, the template depending only on the tag's length: one C call per
        row, no per-key objects."""
        tags = self.tags if tags is None else tags
        lengths = set(map(len, tags))
        if len(lengths) == 1:  # ids of one width (the usual case): every row in one C loop
            return list(map(bytes.join, tags, repeat(_row_template(self.prefixes, lengths.pop()))))
        templates: dict[int, list[bytes]] = {}
        out: list[bytes] = []
        for tag in tags:
            template = templates.get(len(tag))
            if template is None:
                template = templates[len(tag)] = _row_template(self.prefixes, len(tag))
            out.append(tag.join(template))
        return out


@dataclass(frozen=True, slots=True)
class AddressedWrite:
    """One view's rows as keys and slots, with their absolute expiry (Unix ms) if the view
    has a retention."""

    keys: list[bytes]
    slots: list[int]
    expire_at_ms: list[int] | None


class Addresses:
    """Key prefixes by view version, built once (a call names the same few views every time)."""

    def __init__(self) -> None:
        self._prefixes: dict[FeatureView, bytes] = {}

    def prefix(self, view: FeatureView) -> bytes:
        prefix = self._prefixes.get(view)
        if prefix is None:
            if len(self._prefixes) >= 4096:  # views of many reloads: keep memory bounded
                self._prefixes.clear()
            prefix = self._prefixes[view] = key_prefix(view)
        return prefix

    def read(self, rows: EntityRows) -> EntityRead:
        tags = entity_tags(rows.keys, rows.rows)
        prefixes = [self.prefix(view) for view in rows.views]
        return EntityRead(prefixes, tags, None, rows.cache_ttl)

    def write(
        self,
        view: FeatureView,
        keys: Sequence[KeyColumn],
        event_time_us: npt.NDArray[np.int64],
    ) -> AddressedWrite:
        tags = entity_tags(keys, len(event_time_us))
        expire = None
        if view.retention is not None:
            retention_ms = int(view.retention.total_seconds() * 1000)
            expire = (event_time_us // 1000 + retention_ms).tolist()
        return AddressedWrite(view_keys(self.prefix(view), tags), slots_of(tags), expire)


def _row_template(prefixes: list[bytes], tag_length: int) -> list[bytes]:
    """Pieces that, joined by a tag of `tag_length` bytes, form the row's GET or MGET."""
    verb = (
        b"*2\r\n$3\r\nGET\r\n"
        if len(prefixes) == 1
        else b"*%d\r\n$4\r\nMGET\r\n" % (len(prefixes) + 1)
    )
    pieces = [verb]
    for prefix in prefixes:
        pieces[-1] += b"$%d\r\n%s" % (len(prefix) + tag_length + 1, prefix)
        pieces.append(b"}\r\n")
    return pieces
