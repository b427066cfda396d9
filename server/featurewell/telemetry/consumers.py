"""Which callers read which views: the consumers half of lineage.

A caller names itself with the `x-featurewell-model` call metadata (`ClientOptions(caller=
"ranker/3.2")` in the client): a model name and version. Each server counts reads per (caller,
view version) in memory and adds them to Redis every `flush_s`, so `featurewell lineage` sees
every replica's callers (store/consumers.py keeps them).

Not a Prometheus label: caller names are unbounded. A process keeps at most `max_pairs` pairs
between flushes; beyond that, reads are counted under "(too many callers)", and Redis keeps at
most `stored.MAX_PAIRS` pairs (store/consumers.py). A caller name must be printable ASCII of at
most 200 characters (the client's own rule); any other is counted as "(invalid)" and the call
served as usual: the header names a model, it authenticates nothing, so a bad one is not worth
failing a read for.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass

from featurewell.engine.calls import FeatureResult
from featurewell.store import consumers as stored
from featurewell.store.cluster import ClusterClient
from featurewell.store.online import OnlineStore

CALLER_HEADER = "x-featurewell-model"
ANONYMOUS = "(unnamed)"
OVERFLOW = stored.OVERFLOW
INVALID = "(invalid)"
MAX_CALLER_CHARS = 200
MAX_VIEW_REFS = 10_000  # views whose reference is kept (then all are dropped and kept anew)


@dataclass(frozen=True)
class Consumer:
    caller: str
    view: str  # name@vN
    calls: int
    last_seen_s: int


class Consumers:
    def __init__(self, max_pairs: int = 10_000) -> None:
        self.max_pairs = max_pairs
        self._calls: dict[tuple[str, str], int] = {}
        self._seen: dict[tuple[str, str], int] = {}
        # View objects' references (`ref` formats a string per read): id -> (view, ref).
        self._refs: dict[int, tuple[object, str]] = {}

    def observe(
        self, metadata: Iterable[tuple[str, str | bytes]], result: FeatureResult, calls: int = 1
    ) -> None:
        """A read (or `calls` reads answered `result` alike) by the caller `metadata` names."""
        header = caller_header(metadata, None)
        caller = ANONYMOUS if header is None else caller_name(header)
        now = int(time.time())
        counts, refs = self._calls, self._refs
        for served in result.served:
            view = served.view
            known = refs.get(id(view))
            if known is not None and known[0] is view:
                ref = known[1]
            else:
                if len(refs) >= MAX_VIEW_REFS:  # views of registries long gone
                    refs.clear()
                ref = view.ref
                refs[id(view)] = (view, ref)
            pair = (caller, ref)
            count = counts.get(pair)
            if count is None:
                if len(counts) >= self.max_pairs:
                    pair = (OVERFLOW, ref)
                    count = counts.get(pair, 0)
                else:
                    count = 0
            counts[pair] = count + calls
            self._seen[pair] = now

    @property
    def pending(self) -> int:
        """(caller, view) pairs observed since the last flush."""
        return len(self._calls)

    async def flush(self, store: OnlineStore, timeout: float) -> None:
        """Add the counts since the last flush to Redis (kept for the next one if it fails)."""
        calls, self._calls = self._calls, {}
        seen, self._seen = self._seen, {}
        if not calls:
            return
        try:
            await stored.add(store.cluster, calls, seen, timeout)
        except BaseException:  # failed or cancelled (shutdown): keep them for the next flush
            for pair, count in calls.items():
                self._calls[pair] = self._calls.get(pair, 0) + count
                self._seen.setdefault(pair, seen[pair])
            raise


def caller_name(value: str | bytes) -> str:
    """The caller a header value names, or INVALID: printable ASCII, 1-200 characters, and no
    '|' (it separates caller from view in Redis) nor '(' first (the names above are ours)."""
    if isinstance(value, bytes):
        try:
            value = value.decode("ascii")
        except UnicodeDecodeError:
            return INVALID
    if (
        not value
        or len(value) > MAX_CALLER_CHARS
        or not (value.isascii() and value.isprintable())
        or "|" in value
        or value.startswith("(")
    ):
        return INVALID
    return value


async def read(cluster: ClusterClient, timeout: float = 5.0) -> list[Consumer]:
    out = [
        Consumer(caller, view, calls, last_seen_s)
        for (caller, view), (calls, last_seen_s) in (await stored.read(cluster, timeout)).items()
    ]
    return sorted(out, key=lambda c: (c.view, -c.calls))


# What a too long header value is kept as until it is counted: a value no caller name may hold
# ('|'), so it counts as INVALID as the long value itself would, alone or beside a principal.
TOO_LONG = "|(too long)"


def caller_header(
    metadata: Iterable[tuple[str, str | bytes]], principal: str | None
) -> str | bytes | None:
    """The `x-featurewell-model` value a read is counted under, picked as `as_principal` and
    `Consumers.observe` pick it (with a principal: the first non-empty one; without: the
    first), None when there is none; a value past MAX_CALLER_CHARS as TOO_LONG (invalid
    either way), so what waits to be counted stays small (telemetry/alike.py)."""
    for key, value in metadata:
        if key == CALLER_HEADER and (principal is None or value):
            return TOO_LONG if len(value) > MAX_CALLER_CHARS else value
    return None


def as_principal(
    metadata: Iterable[tuple[str, str | bytes]], principal: str | None
) -> Iterable[tuple[str, str | bytes]]:
    """The call's metadata with its caller named by the verified principal, the model its
    `x-featurewell-model` names only within it ("spiffe://prod/ranker (ranker/3.2)"), so
    lineage says who really read. Unchanged for an anonymous call (auth off): the header alone
    names the caller, as before."""
    if principal is None:
        return metadata
    others: list[tuple[str, str | bytes]] = []
    model: str | bytes = ""
    for key, value in metadata:
        if key == CALLER_HEADER:
            model = model or value
        else:
            others.append((key, value))
    if isinstance(model, bytes):
        model = model.decode("ascii", "replace")
    return [(CALLER_HEADER, f"{principal} ({model})" if model else principal), *others]
