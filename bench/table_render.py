"""The one table, as markdown, from bench/table.py's results; and the README block it rewrites.

Pure functions of the results dict (what `--json` writes), so a saved run renders again the same
way (`--from-json`), and the README's table can be checked against the run it came from.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import Any

BEGIN = (
    "<!-- bench-table:begin: written by `python bench/table.py --readme`; edits here are lost -->"
)
END = "<!-- bench-table:end -->"
HEADER = "| part | measure | calls/s | p50 ms | p99 ms | vs floor | notes |\n" + "|---" * 7 + "|"

LATENCY_ROWS = {  # scenario -> (part, measure)
    "grpc_floor": ("floor", "bare gRPC round trip (health check, same server)"),
    "raw_redis_single": ("floor", "raw Redis, single (the commands GetFeatures sends)"),
    "single": ("latency", "**GetFeatures, single entity** (cache off)"),
    "raw_redis_ranking": ("floor", "raw Redis, ranking (1 user + 500 items)"),
    "ranking_cache_off": ("latency", "**ranking, 1 user + 500 items, cache off**"),
    "ranking_cache_on": ("latency", "**ranking, 1 user + 500 items, hot-key cache on**"),
}
Row = tuple[str, str, str, str, str, str, str]


class MarkersError(ValueError):
    """README.md lacks exactly one begin marker followed by one end marker."""


def ms(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.3f}" if value < 0.1 else f"{value:.2f}"


def rate(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:,.0f}" if value >= 10 or value == 0 else f"{value:.1f}"


def ratio(value: float | None, over: float | None) -> str:
    return f"{value / over:.2f}x" if value is not None and over else "-"


def share(value: float | None) -> str:
    return "-" if value is None else f"{value:.0%}"


def versus(f: dict[str, Any], floors: list[dict[str, Any] | None], label: str) -> str:
    """ "p50 ratio / p99 ratio label": `f` over the sum of `floors` at each percentile."""
    if any(floor is None for floor in floors):
        return "-"
    p50 = sum(floor["p50"] for floor in floors if floor)
    p99 = sum(floor["p99"] for floor in floors if floor)
    return f"{ratio(f['p50'], p50)} / {ratio(f['p99'], p99)} {label}"


def _missing(part: str, found: Any) -> Row | None:
    """A row saying why a part has no figures, or None when it has some."""
    if found is None:
        return (part, "not run (see --parts)", "", "", "", "", "")
    if "error" in found:
        return (part, f"failed: {found['error']}", "", "", "", "", "")
    return None


def latency_rows(found: dict[str, Any]) -> Iterator[Row]:
    scenarios = found["scenarios"]
    floor = scenarios["grpc_floor"]
    raw = scenarios["raw_redis_ranking"]
    for name, (part, measure) in LATENCY_ROWS.items():
        f = scenarios[name]
        notes = []
        if name == "single":
            against = versus(f, [floor], "gRPC")
        elif name.startswith("ranking"):
            against = versus(f, [floor, raw], "gRPC + Redis")
        else:
            against = "floor"
        if "hit_ratio" in f:
            notes.append(f"rows from the cache: {share(f['hit_ratio'])}")
        if f.get("failed"):
            kinds = ", ".join(f"{kind} {count}" for kind, count in f["failed"].items())
            notes.append(f"**failed**: {kinds}")
        if f.get("late_share", 0) >= 0.005:
            notes.append(f"sent late: {share(f['late_share'])}")
        yield (
            part,
            measure,
            rate(f["rate_per_s"]),
            ms(f["p50"]),
            ms(f["p99"]),
            against,
            "; ".join(notes),
        )


def zipf_rows(found: dict[str, Any], grpc: dict[str, Any] | None) -> Iterator[Row]:
    """bench/zipf.py's rows: each configuration against cache off in the same run (its own
    ratios), raw Redis as that phase's floor."""
    del grpc  # zipf.py measures its own floor (raw Redis) beside the calls
    setup = found.get("setup", {})
    for row in found.get("rows", []):
        phase = row["phase"]
        if phase in ("zipf", "steady"):
            label = f"Zipf s={setup.get('s', '?')} over {setup.get('items', 0):,} items"
            if phase == "steady":  # ranking calls only, evenly spaced: servers kept warm
                label += f", {setup.get('steady_rate', 0):.0f} calls/s steady"
        else:
            label = f"{phase} items"
        config = str(row["config"]).replace("_", " ")
        if row["config"] == "raw_redis":
            measure, against = f"ranking, {label}: raw Redis (its commands)", "floor"
        else:
            measure = f"{row['kind']}, {label}: {config}"
            against = f"{row['p50_vs_off']:.2f}x / {row['p99_vs_off']:.2f}x cache off"
        hit = row.get("hit_ratio")
        notes = f"rows from the cache: {share(hit)}" if isinstance(hit, float) else ""
        yield ("zipf", measure, "", ms(row["p50_ms"]), ms(row["p99_ms"]), against, notes)


def capacity_rows(found: dict[str, Any]) -> Iterator[Row]:
    budget = found["budget_ms"]
    health = found["health"]["rate_per_s"] if "health" in found else None
    for kind, measure in (
        ("single", f"**single-entity calls per server core**, client p99 <= {budget:g} ms"),
        ("health", f"health checks per server core (the gRPC floor), p99 <= {budget:g} ms"),
    ):
        if kind not in found:
            continue
        f = found[kind]
        versus = "floor" if kind == "health" else f"{ratio(f['rate_per_s'], health)} health"
        notes = f"{found['pinning']}; {len(f['probes'])} probes of {found['seconds']:g} s"
        if f["probes"] and not f["rate_per_s"]:
            lowest = min(f["probes"], key=lambda p: p["rate"])
            notes += (
                f"; none passed, down to {rate(lowest['rate'])}/s (p99 {ms(lowest['p99_ms'])} ms)"
            )
        yield (
            "capacity",
            measure,
            rate(f["rate_per_s"]),
            ms(f["p50_ms"]),
            ms(f["p99_ms"]),
            versus,
            notes,
        )


def overload_rows(found: dict[str, Any]) -> Iterator[Row]:
    capacity = found["capacity_per_s"]
    yield ("overload", "capacity (closed loop, bench/overload.py)", rate(capacity), "", "", "", "")
    for level, f in found["levels"].items():
        measure = (
            f"{level} capacity (offered {rate(f['offered_per_s'])}/s): goodput, answered p50/p99"
        )
        notes = (
            f"goodput {f['goodput_of_capacity']:.2f}x capacity; shed {f['shed']} "
            f"(p50 {ms(f['shed_p50_ms'])} / p99 {ms(f['shed_p99_ms'])} ms); "
            f"missed deadline {f['missed_deadline']}; errors {f['other_errors']}"
        )
        yield (
            "overload",
            measure,
            rate(f["goodput_per_s"]),
            ms(f["ok_p50_ms"]),
            ms(f["ok_p99_ms"]),
            "",
            notes,
        )


def percentile_dicts(
    value: dict[str, Any], path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], dict[str, Any], dict[str, Any]]]:
    """Every nested dict holding a p50 and a p99 (as `p50` or `p50_ms`): its key path, itself,
    and the dict holding it."""
    for key, inner in value.items():
        if not isinstance(inner, dict):
            continue
        if {"p50", "p50_ms"} & inner.keys() and {"p99", "p99_ms"} & inner.keys():
            yield (*path, str(key)), inner, value
        else:
            yield from percentile_dicts(inner, (*path, str(key)))


def hits(figures: dict[str, Any]) -> dict[str, float]:
    return {k: v for k, v in figures.items() if "hit" in k and isinstance(v, float)}


def near_cache_rows(found: dict[str, Any], grpc: dict[str, Any] | None) -> Iterator[Row]:
    """bench/near_cache.py's figures, read by shape: a row per p50/p99 pair it reports, against
    the gRPC floor it measured beside that pair (a `floor` sibling) or else the table's; hit
    ratios in the notes (its own `hit...` keys, and its parent's for a cache-on row `on`)."""
    for path, f, parent in percentile_dicts(found):
        key = path[-1]
        p50, p99 = f.get("p50", f.get("p50_ms")), f.get("p99", f.get("p99_ms"))
        sibling = parent.get("floor")
        floor = sibling if isinstance(sibling, dict) and "p50" in sibling else grpc
        against = "floor" if f is sibling else versus({"p50": p50, "p99": p99}, [floor], "gRPC")
        ratios = hits(f) | (hits(parent) if key == "on" or key.endswith("_on") else {})
        notes = "; ".join(f"{k.replace('_', ' ')} {share(v)}" for k, v in ratios.items())
        yield ("near cache", " / ".join(path), "", ms(p50), ms(p99), against, notes)


def rows(results: dict[str, Any]) -> Iterator[Row]:
    parts = results["parts"]
    latency = parts.get("latency")
    grpc = None
    if latency and "scenarios" in latency:
        grpc = latency["scenarios"]["grpc_floor"]
    makers: dict[str, Callable[[dict[str, Any]], Iterator[Row]]] = {
        "latency": latency_rows,
        "zipf": lambda f: zipf_rows(f, grpc),
        "near_cache": lambda f: near_cache_rows(f, grpc),
        "capacity": capacity_rows,
        "overload": overload_rows,
    }
    for part, make in makers.items():
        if part == "near_cache" and part not in parts:
            yield (
                "near cache",
                "not measured: no bench/near_cache.py in this tree",
                "",
                "",
                "",
                "",
                "",
            )
            continue
        found = parts.get(part)
        missing = _missing(part, found)
        if missing:
            yield missing
        else:
            yield from make(found)


def heading(results: dict[str, Any]) -> str:
    m = results["machine"]
    load = " / ".join(f"{x:.2f}" for x in m["load_before"])
    after = " / ".join(f"{x:.2f}" for x in m["load_after"])
    return (
        f"`{results['command']}` on {m['date']}, git {m['git']}: {m['cores']} cores "
        f"({m['cpu']}), load average {load} before, {after} after; "
        f"{results['seconds_total']:.0f} s. Client-observed, open loop (each call timed from its "
        "scheduled send). *vs floor*: p50 / p99 over the same percentile of the floors measured "
        "in this run (capacity: over the health check's rate)."
    )


def render(results: dict[str, Any]) -> str:
    lines = [heading(results), "", HEADER]
    # a cell quoting an error or a log may hold "|", which would split the row
    lines += ["| " + " | ".join(c.replace("|", "/") for c in row) + " |" for row in rows(results)]
    return "\n".join(lines) + "\n"


def _span(text: str) -> tuple[int, int]:
    begins = [m.end() for m in re.finditer(re.escape(BEGIN), text)]
    ends = [m.start() for m in re.finditer(re.escape(END), text)]
    if len(begins) != 1 or len(ends) != 1 or ends[0] < begins[0]:
        raise MarkersError(
            f"expected one {BEGIN!r} then one {END!r}; found {len(begins)} and {len(ends)}"
        )
    return begins[0], ends[0]


def readme_block(text: str) -> str:
    """What stands between the README's markers (without the newlines framing it)."""
    start, end = _span(text)
    return text[start:end].strip("\n") + "\n"


def with_block(text: str, block: str) -> str:
    """`text` with what stands between its markers replaced by `block`."""
    start, end = _span(text)
    return text[:start] + "\n" + block.strip("\n") + "\n" + text[end:]
