"""Reads per (caller, view version), summed over every server: the `consumer_calls` and
`consumer_seen` hashes (store/keys.py), one field "<caller>|<view>@v<n>" per pair, and the same
counts per UTC day in `consumer_days` hashes (for `featurewell impact --days N`). Callers are
free text, view references hold no '|': a field splits back at its last '|'.

Every hash holds at most `MAX_PAIRS` fields: once full, reads of a new pair are added to
"(too many callers)|<view>" instead (a client inventing caller names cannot grow Redis). A day's
hash expires `CONSUMER_DAYS_KEPT` days after its last write, so at most that many exist.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence

from featurewell.errors import StoreUnavailable
from featurewell.store.cluster import ClusterClient
from featurewell.store.connection import encode_command
from featurewell.store.keys import (
    CONSUMER_CALLS_KEY,
    CONSUMER_DAYS_KEPT,
    CONSUMER_SEEN_KEY,
    META_SLOT,
    consumer_day_key,
)

Pair = tuple[str, str]  # (caller, view reference "name@vN")
MAX_PAIRS = 20_000
OVERFLOW = "(too many callers)"

# Atomic on the {_meta} node, so servers flushing at once cannot overshoot the bound together.
# KEYS[1] calls hash, KEYS[2] last-seen hash, KEYS[3] the day's calls hash. ARGV[1] the most
# fields, ARGV[2] the overflow caller, ARGV[3] the day hash's time to live (s); then per pair:
# caller, view, count, last seen.
_ADD = b"""
local calls, seen, day, most, overflow = KEYS[1], KEYS[2], KEYS[3], tonumber(ARGV[1]), ARGV[2]
local function bounded(hash, field, view)
  if redis.call('HEXISTS', hash, field) == 0 and redis.call('HLEN', hash) >= most then
    return overflow .. '|' .. view
  end
  return field
end
for i = 4, #ARGV, 4 do
  local field = ARGV[i] .. '|' .. ARGV[i + 1]
  local total = bounded(calls, field, ARGV[i + 1])
  redis.call('HINCRBY', calls, total, ARGV[i + 2])
  redis.call('HSET', seen, total, ARGV[i + 3])
  redis.call('HINCRBY', day, bounded(day, field, ARGV[i + 1]), ARGV[i + 2])
end
redis.call('EXPIRE', day, ARGV[3])
return 1
"""


async def add(
    cluster: ClusterClient,
    calls: Mapping[Pair, int],
    seen: Mapping[Pair, int],
    timeout: float,
    max_pairs: int = MAX_PAIRS,
    day: str | None = None,
) -> None:
    """Add `calls` to each pair's count, in total and in `day`'s counts (YYYYMMDD, default
    today in UTC), and set its last call (Unix seconds) from `seen`; new pairs beyond
    `max_pairs` stored are counted under OVERFLOW."""
    day_key = consumer_day_key(day or today())
    args: list[bytes | str | int] = [b"EVAL", _ADD, 3, CONSUMER_CALLS_KEY, CONSUMER_SEEN_KEY]
    args += [day_key, max_pairs, OVERFLOW, CONSUMER_DAYS_KEPT * 86_400]
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


async def read_days(cluster: ClusterClient, days: Sequence[str], timeout: float) -> dict[Pair, int]:
    """Every pair's calls summed over `days` (YYYYMMDD each; days without counts add 0)."""
    if not days:
        return {}
    replies, _, failures, _ = await cluster.execute(
        [encode_command(b"HGETALL", consumer_day_key(day)) for day in days],
        [META_SLOT] * len(days),
        timeout,
    )
    if failures:
        raise StoreUnavailable(f"cannot read per-day consumers: {failures[0].detail}")
    out: dict[Pair, int] = {}
    for reply in replies:
        for field, count in _fields(reply).items():
            caller, _, view = field.rpartition("|")
            out[(caller, view)] = out.get((caller, view), 0) + int(count)
    return out


def today(now: float | None = None) -> str:
    """The UTC day of `now` (default: now) as YYYYMMDD."""
    return time.strftime("%Y%m%d", time.gmtime(now))


def last_days(count: int, now: float | None = None) -> list[str]:
    """The `count` UTC days up to today, newest first (at most CONSUMER_DAYS_KEPT)."""
    if not 1 <= count <= CONSUMER_DAYS_KEPT:
        raise ValueError(f"days must be 1-{CONSUMER_DAYS_KEPT} (the counts kept), got {count}")
    start = time.time() if now is None else now
    return [today(start - 86_400 * back) for back in range(count)]


def _fields(reply: list[bytes] | None) -> dict[str, bytes]:
    items = iter(reply or [])
    return {key.decode(): value for key, value in zip(items, items, strict=True)}
