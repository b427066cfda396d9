"""Which master owns which of the 16384 hash slots, and grouping a batch's commands by node."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from featurewell.store.connection import Address
from featurewell.store.keys import SLOTS


class SlotMap:
    """The owner of every slot as one numpy array of node positions, so grouping 500 commands by
    node is a few vector operations rather than 500 dict lookups.

    The array and the node list are one attribute, replaced whole by `apply`: metrics read the
    map from another thread (a scrape), and an array of the new map beside the old map's node
    list named positions the list did not have (an IndexError seen in a failover test). `move`
    appends a node before any slot names it, so a reader's snapshot stays consistent."""

    def __init__(self) -> None:
        self._map: tuple[npt.NDArray[np.int64], list[Address]] = (
            np.full(SLOTS, -1, dtype=np.int64),
            [],
        )
        # `masters` of the map it was found in (a unique over 16384 slots, asked every
        # second by telemetry: ~1.5% of a busy server's loop in a py-spy profile).
        self._masters: tuple[object, list[Address]] | None = None

    @property
    def nodes(self) -> list[Address]:
        return list(self._map[1])

    @property
    def masters(self) -> list[Address]:
        """Addresses of the nodes that own at least one slot."""
        found = self._map
        known = self._masters
        if known is None or known[0] is not found:
            owner, nodes = found
            known = found, sorted({nodes[i] for i in np.unique(owner).tolist() if i >= 0})
            self._masters = known
        return list(known[1])

    def node_of(self, slot: int) -> Address | None:
        owner, nodes = self._map
        index = int(owner[slot])
        return nodes[index] if index >= 0 else None

    def owned_by(self, slots: Sequence[int], addresses: set[Address]) -> list[bool]:
        """For each slot, whether one of `addresses` owns it (one vector lookup, not a
        `node_of` per slot)."""
        owner, nodes = self._map
        positions = [i for i, address in enumerate(nodes) if address in addresses]
        owned: list[bool] = np.isin(owner[np.asarray(slots, dtype=np.int64)], positions).tolist()
        return owned

    def apply(self, reply: list[Any], asked: Address) -> None:
        """Replace the map with a CLUSTER SLOTS reply (from node `asked`)."""
        owner = np.full(SLOTS, -1, dtype=np.int64)
        nodes: list[Address] = []
        index: dict[Address, int] = {}
        for start, end, master, *_replicas in reply:
            host = master[0].decode() or asked[0]
            address = (host, int(master[1]))
            position = index.setdefault(address, len(nodes))
            if position == len(nodes):
                nodes.append(address)
            owner[start : end + 1] = position
        self._map = (owner, nodes)

    def move(self, slot: int, address: Address) -> None:
        """A MOVED redirect: `slot` now lives on `address`."""
        owner, nodes = self._map
        if address not in nodes:
            nodes.append(address)
        owner[slot] = nodes.index(address)
        # A new tuple of the same two: `masters` found in the old one is not taken for it (the
        # slot's old owner may have had no other), even if a scrape thread was finding it.
        self._map = (owner, nodes)

    def group(
        self, slots: npt.NDArray[np.int64], todo: Sequence[int], asking: dict[int, Address]
    ) -> tuple[dict[Address, list[int]], list[int]]:
        """Command indexes per target node (in bulk: no per-key Python), and the indexes whose
        slot has no known owner."""
        owner, nodes = self._map
        if len(todo) <= 16 and not asking:  # a model server's lookup: numpy costs more here
            groups: dict[Address, list[int]] = {}
            unowned: list[int] = []
            for i in todo:
                position = int(owner[slots[i]])
                if position < 0:
                    unowned.append(i)
                else:
                    groups.setdefault(nodes[position], []).append(i)
            return groups, unowned
        indexes = np.asarray(todo, dtype=np.int64)
        owners = owner[slots[indexes]]
        groups = {}
        for position in np.unique(owners).tolist():
            members = indexes[owners == position].tolist()
            if position >= 0:
                groups[nodes[position]] = members
        unowned = indexes[owners < 0].tolist()
        for i, target in asking.items():  # ASK redirects override the slot owner, rarely
            for members in groups.values():
                if i in members:
                    members.remove(i)
            groups.setdefault(target, []).append(i)
        return {address: members for address, members in groups.items() if members}, unowned
