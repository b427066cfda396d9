"""Entities that have rows of a view, found by SCAN on every master (for `featurewell validate`:
a sample of the entities the view really has). SCAN walks a node's keys a step at a time, so a
sample stops as soon as it has enough, without blocking the node."""

from __future__ import annotations

from featurewell.definitions import FeatureView
from featurewell.store.cluster import ClusterClient
from featurewell.store.keys import key_prefix


async def sample_tags(cluster: ClusterClient, view: FeatureView, per_node: int) -> list[bytes]:
    """Up to `per_node` entity tags of `view`'s rows (`keys.entity_of_tag` reads them) from
    each master."""
    prefix = key_prefix(view)
    found: list[bytes] = []
    for address in list(cluster.slot_map.nodes):
        cursor, taken = b"0", 0
        while taken < per_node:
            cursor, keys = await cluster.call(
                address, "SCAN", cursor, "MATCH", prefix + b"*", "COUNT", 1000
            )
            kept = keys[: per_node - taken]
            found += [key[len(prefix) : -1] for key in kept]  # the tag, without its closing "}"
            taken += len(kept)
            if cursor in (b"0", 0):
                break
    return found
