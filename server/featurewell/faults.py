"""Fault injection for GetFeatures, off unless `fault_delay` is set: a fixed delay added to
single-entity calls, to batch calls (more than one row: rankers), or to both, the way Envoy's
fault filter delays a share of requests.

It exists so that what watches latency can be shown to see it: the load-test gate
(loadtest/gate.py) must go red when either kind of call is slowed, and alerts can be checked
against a server that is slow on purpose. The delay is an `asyncio.sleep` inside the handler,
after the request is parsed (its row count says which kind it is), so it counts in the server's
own latency histogram as well as in what clients see, and it holds no CPU.

    fault_delay = ""                       off (the default; keep it so in production)
    fault_delay = "single:8ms"             every one-row GetFeatures waits 8 ms
    fault_delay = "batch:8ms"              every GetFeatures of more than one row waits 8 ms
    fault_delay = "single:2ms,batch:0.5s"  both
"""

from __future__ import annotations

import asyncio
import logging
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from featurewell.errors import ConfigError

if TYPE_CHECKING:  # (settings import this module: it stays free of the engine's imports)
    from featurewell.engine.calls import FeatureRequest

KINDS = ("single", "batch")
_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0}
_ITEM = re.compile(r"^(?P<kind>[a-z]+):(?P<amount>\d+(?:\.\d+)?)(?P<unit>us|ms|s)$")
log = logging.getLogger(__name__)
# A fault delay is for tests and drills, far below any call deadline a client would set.
MAX_DELAY_S = 60.0


@dataclass(frozen=True, slots=True)
class FaultDelay:
    """Seconds added to each kind of GetFeatures call (0: none)."""

    single_s: float = 0.0
    batch_s: float = 0.0

    def __bool__(self) -> bool:
        return bool(self.single_s or self.batch_s)

    def seconds(self, asked: FeatureRequest) -> float:
        """The delay for one call: single when every entity column holds one value (the
        server's histogram counts such a call as `shape="single"`), batch otherwise."""
        rows = max((len(column.values) for column in asked.entities.values()), default=0)
        return self.single_s if rows <= 1 else self.batch_s

    async def wait(self, asked: FeatureRequest) -> None:
        seconds = self.seconds(asked)
        if seconds:
            await asyncio.sleep(seconds)


def parse(text: str, name: str = "fault_delay") -> FaultDelay:
    """`kind:amount[us|ms|s]` items, comma-separated, kind `single` or `batch`, each at most
    once; "" is off. ConfigError naming the setting and the item otherwise."""
    delays: dict[str, float] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        found = _ITEM.match(item.lower())
        if found is None or found["kind"] not in KINDS:
            raise ConfigError(
                f"setting {name}: {item!r} is not kind:delay with kind single or batch and a "
                "delay in us, ms or s (e.g. single:8ms,batch:8ms)"
            )
        kind = found["kind"]
        if kind in delays:
            raise ConfigError(f"setting {name}: {kind} is given twice in {text!r}")
        seconds = float(found["amount"]) * _UNITS[found["unit"]]
        if seconds > MAX_DELAY_S:
            raise ConfigError(
                f"setting {name}: {item!r} is longer than {MAX_DELAY_S:g} s, the most it takes"
            )
        delays[kind] = seconds
    return FaultDelay(single_s=delays.get("single", 0.0), batch_s=delays.get("batch", 0.0))


def applied(text: str) -> FaultDelay:
    """`parse` for the server that applies it: a delay that is on is logged as a warning, so a
    slowed server says why in its log."""
    delay = parse(text)
    if delay:
        log.warning(
            "fault injection on (fault_delay=%s): GetFeatures delayed %.1f ms single, %.1f ms "
            "batch",
            text,
            delay.single_s * 1000,
            delay.batch_s * 1000,
        )
    return delay
