"""Reads per (caller, view version), summed over every server: the `consumer_calls` and
`consumer_seen` hashes (store/keys.py), one field "<caller>|<view>@v<n>" per pair. Callers are
free text, view references hold no '|': a field splits back at its last '|'.

The hashes hold at most `MAX_PAIRS` fields: once full, reads of a new pair are added to
"(too many callers)|<view>" instead (a client inventing caller names cannot grow Redis).
"""

from __future__ import annotations

from collections.abc import Mapping

from featurewell.errors import StoreUnavailable
from featurewell.store.cluster import ClusterClient
from featurewell.store.connection import encode_command
from featurewell.store.keys import CONSUMER_CALLS_KEY, CONSUMER_SEEN_KEY, META_SLOT

Pair = tuple[str, str]  # (caller, view reference "name@vN")
MAX_PAIRS = 20_000
OVERFLOW = "(too many callers)"

# Atomic on the {_meta} node, so servers flushing at once cannot overshoot the bound together.
# KEYS[1] calls hash, KEYS[2] last-seen hash. ARGV[1] the most fields, ARGV[2] the overflow
# caller; then per pair: caller, view, count, last seen.
_ADD = b"""
local calls, seen, most, overflow = KEYS[1], KEYS[2], tonumber(ARGV[1]), ARGV[2]
for i = 3, #ARGV, 4 do
  local field = ARGV[i] .. '|' .. ARGV[i + 1]
  if redis.call('HEXISTS', calls, field) == 0 and redis.call('HLEN', calls) >= most then
    field = overflow .. '|' .. ARGV[i + 1]
  end
  redis.call('HINCRBY', calls, field, ARGV[i + 2])
  redis.call('HSET', seen, field, ARGV[i + 3])
end
return 1
"""


async def add(
    cluster: ClusterClient,
    calls: Mapping[Pair, int],
    seen: Mapping[Pair, int],
    timeout: float,
    max_pairs: int = MAX_PAIRS,
) -> None:
    """Add `calls` to each pair's count and set its last call (Unix seconds) from `seen`; new
    pairs beyond `max_pairs` stored are counted under OVERFLOW."""
    args: list[bytes | str | int] = [b"EVAL", _ADD, 2, CONSUMER_CALLS_KEY, CONSUMER_SEEN_KEY]
    args += [max_pairs, OVERFLOW]
    for (caller, view), count in calls.items():
        args += [caller, view, count, seen[(caller, view)]]
    replies = await cluster.execute([encode_command(*args)], [META_SLOT], timeout)
    replies.checked("cannot record consumers")


async def read(cluster: ClusterClient, timeout: float) -> dict[Pair, tuple[int, int]]:
    """Every pair's (calls, last call in Unix seconds: 0 if not recorded)."""
    replies, _, failures, _ = await cluster.execute(
        [
            encode_command(b"HGETALL", CONSUMER_CALLS_KEY),
            encode_command(b"HGETALL", CONSUMER_SEEN_KEY),
        ],
        [META_SLOT, META_SLOT],
        timeout,
    )
    if failures:
        raise StoreUnavailable(f"cannot read consumers: {failures[0].detail}")
    calls, seen = (_fields(reply) for reply in replies)
    out = {}
    for field, count in calls.items():
        caller, _, view = field.rpartition("|")
        out[(caller, view)] = (int(count), int(seen.get(field, 0)))
    return out


def _fields(reply: list[bytes] | None) -> dict[str, bytes]:
    items = iter(reply or [])
    return {key.decode(): value for key, value in zip(items, items, strict=True)}
