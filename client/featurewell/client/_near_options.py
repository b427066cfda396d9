"""The near cache's options (ClientOptions(near_cache=NearCache(...))) and its counters."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class NearCache:
    """ClientOptions(near_cache=NearCache(...)): keep hot single-entity answers in this process.

    max_entries / max_bytes: bounds of what it holds (the oldest answers leave first).
    max_ttl_s: the longest an answer is reused after its call was sent; the server's per-view
        TTL (`near_cache_ttl_s`, 1 s by default) may be shorter. This is the staleness bound.
    resubscribe_s / max_resubscribe_s: first and longest pause before subscribing again after
        the invalidation stream broke (doubling, jittered)."""

    max_entries: int = 10_000
    max_bytes: int = 64 * 1024 * 1024
    max_ttl_s: float = 1.0
    resubscribe_s: float = 0.05
    max_resubscribe_s: float = 2.0

    def __post_init__(self) -> None:
        if self.max_entries < 1 or self.max_bytes < 1:
            raise ValueError("near cache max_entries and max_bytes must be positive")
        if not 0 < self.max_ttl_s <= 60:
            raise ValueError(f"near cache max_ttl_s must be in (0, 60], got {self.max_ttl_s}")
        if not 0 < self.resubscribe_s <= self.max_resubscribe_s:
            raise ValueError("near cache resubscribe_s must be positive, <= max_resubscribe_s")


@dataclass
class NearCacheStats:
    hits: int = 0
    misses: int = 0
    admitted: int = 0
    invalidated: int = 0  # answers dropped because the server announced a write
    evicted: int = 0  # answers dropped for the entry or byte bound
    subscriptions: int = 0  # streams that went live (each flushed what was held)
    resets: int = 0  # streams that ended (reset, error or a new view to follow)
