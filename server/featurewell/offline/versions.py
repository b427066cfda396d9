"""Which version `view:feature` means in a training set: the one the servers serve.

Servers read the promoted defaults from Redis (store/versions.py) and apply them to their repo
with `serve_defaults`; a training set applies the same function to the same promoted defaults,
read from the cluster or from a file `featurewell versions --export` wrote. Pinned references
(`view@v2:feature`) mean their version everywhere. Without promoted defaults a training set
reads each view's highest version, which is what servers serve only if nothing was promoted,
and says so.

What was used is recorded in the training set itself: the Parquet schema metadata
`featurewell.versions` holds, per output table (`view`, `view@v2`, or a transform), the version
read and why.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from featurewell.definitions import Registry
from featurewell.engine.plan import Plan
from featurewell.errors import ConfigError
from featurewell.store.versions import serve_defaults

METADATA_KEY = b"featurewell.versions"
FILE_FORMAT = "featurewell.defaults/1"


@dataclass(frozen=True)
class ServedDefaults:
    """The promoted defaults servers follow, and where they were read (for the record)."""

    promoted: Mapping[str, int] = field(default_factory=dict)
    origin: str = ""  # "the cluster at host:port", "defaults file x.json"


def export(path: str | Path, promoted: Mapping[str, int], origin: str) -> None:
    """Write promoted defaults for `load` (and `featurewell training-set --defaults`)."""
    document = {
        "format": FILE_FORMAT,
        "promoted": dict(sorted(promoted.items())),
        "exported_at_us": time.time_ns() // 1000,
        "origin": origin,
    }
    Path(path).write_text(json.dumps(document, indent=2) + "\n")


def load(path: str | Path) -> ServedDefaults:
    """Promoted defaults from a file `export` wrote; a missing or malformed one names the fix."""
    source = Path(path)
    try:
        document = json.loads(source.read_text())
    except FileNotFoundError:
        raise ConfigError(
            f"defaults file {source} does not exist: write it with "
            f"`featurewell versions --export {source}`"
        ) from None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read defaults file {source}: {exc}") from None
    promoted = document.get("promoted") if isinstance(document, dict) else None
    if (
        not isinstance(document, dict)
        or document.get("format") != FILE_FORMAT
        or not isinstance(promoted, dict)
        or not all(
            isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool)
            for k, v in promoted.items()
        )
    ):
        raise ConfigError(
            f"{source} is not a defaults file (format {FILE_FORMAT}: a 'promoted' object of "
            "view -> version): write it with `featurewell versions --export FILE`"
        )
    return ServedDefaults(promoted, f"defaults file {source}")


def as_served(registry: Registry, defaults: ServedDefaults | None) -> Registry:
    """`registry` with the default versions servers with this repo serve, by their own rule."""
    return registry if defaults is None else serve_defaults(registry, defaults.promoted)


def used(plan: Plan, defaults: ServedDefaults | None) -> dict[str, dict[str, Any]]:
    """Per output table, the version read and why; transforms list the versions they read."""
    out: dict[str, dict[str, Any]] = {}
    for output in plan.outputs:
        table = output.name.split(":", 1)[0]
        if output.read is not None and table not in out:
            view = output.read.view
            out[table] = {
                "version": view.version,
                "how": _how(table, view.name, view.version, defaults),
            }
    for step in plan.transforms:
        reads = {read.view.name: read.view.version for _, read, _ in step.inputs}
        out[step.transform.name] = {"reads": dict(sorted(reads.items()))}
    return out


def _how(table: str, view: str, version: int, defaults: ServedDefaults | None) -> str:
    if "@v" in table:
        return "pinned"
    if defaults is None:
        return "highest in the repo, no promoted defaults given"
    promoted = defaults.promoted.get(view)
    if promoted == version:
        return f"promoted, from {defaults.origin}"
    if promoted is not None:
        return f"highest in the repo: promoted v{promoted} is not in it, from {defaults.origin}"
    return f"highest in the repo, never promoted, from {defaults.origin}"


def metadata(versions: Mapping[str, Mapping[str, Any]]) -> dict[bytes, bytes]:
    return {METADATA_KEY: json.dumps(versions, sort_keys=True).encode()}


def recorded(schema_metadata: Mapping[bytes, bytes] | None) -> dict[str, dict[str, Any]]:
    """The versions a training set was built with, from its schema metadata ({} if none)."""
    raw = (schema_metadata or {}).get(METADATA_KEY)
    return {} if raw is None else dict(json.loads(raw))
