"""Settings: one frozen object, read once at start-up and passed down in groups.

Each setting has one public name, flat and unique across groups: the `--flag` (`--cache-entries`)
and the `FEATUREWELL_<NAME>` environment variable (`FEATUREWELL_CACHE_ENTRIES`); flags win.
Inside the program it lives in a group (`settings.cache.entries`), and each command takes only
the groups it uses, so `featurewell <command> --help` lists only what that command reads. This
module is the only place that reads the environment.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any

from featurewell.errors import ConfigError
from featurewell.settings_groups import (
    AuthSettings,
    CacheSettings,
    Group,
    ListenSettings,
    OfflineSettings,
    RedisSettings,
    ServingSettings,
    TelemetrySettings,
    setting,
)
from featurewell.store.connection import Address

ENV_PREFIX = "FEATUREWELL_"


@dataclass(frozen=True)
class Settings:
    repo: str = setting(
        "repo", "Feature repo: a .py file, a folder with repo.py, or a module path.", ""
    )
    log_level: str = setting("log_level", "Python log level.", "INFO")
    redis: RedisSettings = field(default_factory=RedisSettings)
    listen: ListenSettings = field(default_factory=ListenSettings)
    serving: ServingSettings = field(default_factory=ServingSettings)
    cache: CacheSettings = field(default_factory=CacheSettings)
    telemetry: TelemetrySettings = field(default_factory=TelemetrySettings)
    offline: OfflineSettings = field(default_factory=OfflineSettings)
    auth: AuthSettings = field(default_factory=AuthSettings)
    # The public names the environment or the caller set (`load`), defaults or not: what a
    # command may only fill in where the user said nothing (the demo's sampling paces).
    given: frozenset[str] = field(default=frozenset(), compare=False, repr=False)

    @classmethod
    def load(
        cls, overrides: Mapping[str, Any] | None = None, environ: Mapping[str, str] | None = None
    ) -> Settings:
        """Defaults, then `FEATUREWELL_*` variables, then `overrides` by public name (None
        values ignored; strings parsed like the environment's). Raises ConfigError."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {"traces_exporter": _otel_exporter(env)}
        for spec in specs():
            raw = env.get(ENV_PREFIX + spec.name.upper())
            if raw is not None and raw != "":
                values[spec.name] = spec.parse(raw)
        values.update(
            {name: value for name, value in (overrides or {}).items() if value is not None}
        )
        given = frozenset(values) - {"traces_exporter"} | frozenset(
            spec.name for spec in specs() if env.get(ENV_PREFIX + spec.name.upper())
        )
        return replace(cls().with_changes(**values), given=given)

    def with_changes(self, **changes: Any) -> Settings:
        """A copy with settings changed by public name (`cache_entries=0`), checked again."""
        by_name = {spec.name: spec for spec in specs()}
        unknown = sorted(set(changes) - set(by_name))
        if unknown:
            raise ConfigError(f"unknown settings {unknown}")
        top: dict[str, Any] = {}
        grouped: dict[str, dict[str, Any]] = {}
        for name, value in changes.items():
            spec = by_name[name]
            parsed = spec.parse(value) if isinstance(value, str) and spec.kind != "str" else value
            if spec.group is None:
                top[spec.attribute] = parsed
            else:
                grouped.setdefault(spec.group, {})[spec.attribute] = parsed
        for group, values in grouped.items():
            top[group] = replace(getattr(self, group), **values)
        if "log_level" in top:  # `info` works as well as `INFO`
            top["log_level"] = str(top["log_level"]).upper()
        settings = replace(self, **top)
        settings.check()
        return settings

    def check(self) -> None:
        if not isinstance(logging.getLevelName(self.log_level), int):
            raise ConfigError(
                f"setting log_level must be DEBUG, INFO, WARNING, ERROR or CRITICAL, got "
                f"{self.log_level!r}"
            )
        for spec in fields(self):
            value = getattr(self, spec.name)
            if isinstance(value, Group):
                value.check()

    def public(self, name: str) -> Any:
        """A setting's value by public name (`settings.public("cache_entries")`)."""
        for spec in specs():
            if spec.name == name:
                holder = self if spec.group is None else getattr(self, spec.group)
                return getattr(holder, spec.attribute)
        raise ConfigError(f"unknown setting {name!r}")


@dataclass(frozen=True)
class Spec:
    """One setting as users see it: public name, type, default, help; and where it lives."""

    name: str
    group: str | None  # attribute of Settings holding its group; None: Settings itself
    attribute: str
    kind: str  # "str", "int", "float", "bool", "addresses"
    default: Any
    doc: str

    def parse(self, raw: str) -> Any:
        try:
            if self.kind == "addresses":
                return parse_addresses(raw)
            if self.kind == "int":
                return int(raw)
            if self.kind == "float":
                value = float(raw)
                if not math.isfinite(value):  # nan passes every bound check: refuse it here
                    raise ValueError("not a finite number")
                return value
            if self.kind == "bool":
                return _bool(raw)
        except ValueError as exc:
            raise ConfigError(f"setting {self.name}: cannot parse {raw!r} ({exc})") from None
        return raw


GROUPS: dict[str, type[Group]] = {
    "redis": RedisSettings,
    "listen": ListenSettings,
    "serving": ServingSettings,
    "cache": CacheSettings,
    "telemetry": TelemetrySettings,
    "offline": OfflineSettings,
    "auth": AuthSettings,
}


def specs(group: type[Group] | None = None) -> Iterator[Spec]:
    """Every setting (or one group's), in declaration order."""
    holders: list[tuple[str | None, type[Any]]] = [(None, Settings), *GROUPS.items()]
    for attribute, holder in holders:
        if group is not None and holder is not group:
            continue
        for spec in fields(holder):
            if "name" not in spec.metadata:
                continue
            kind = str(spec.type)
            yield Spec(
                name=spec.metadata["name"],
                group=attribute,
                attribute=spec.name,
                kind="addresses" if kind.startswith("tuple") else kind,
                default=spec.default,
                doc=spec.metadata["doc"],
            )


def _otel_exporter(env: Mapping[str, str]) -> str:
    """Tracing from the standard OpenTelemetry variables: on only when asked for, since a
    feature server that exports to a collector nobody runs wastes time on every call."""
    if env.get("OTEL_SDK_DISABLED", "").lower() == "true":
        return "none"
    named = env.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if named:
        return named
    if env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        return "otlp"
    return "none"


def _bool(raw: str) -> bool:
    lowered = raw.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError("expected true or false")


def parse_addresses(raw: str) -> tuple[Address, ...]:
    """'h1:7000,h2:7001' -> (('h1', 7000), ('h2', 7001))."""
    addresses = []
    for part in raw.split(","):
        host, sep, port = part.strip().rpartition(":")
        if not sep or not host or not port.isdigit():
            raise ValueError(f"{part.strip()!r} is not host:port")
        addresses.append((host, int(port)))
    return tuple(addresses)


__all__ = [
    "GROUPS",
    "AuthSettings",
    "CacheSettings",
    "Group",
    "ListenSettings",
    "OfflineSettings",
    "RedisSettings",
    "ServingSettings",
    "Settings",
    "Spec",
    "TelemetrySettings",
    "parse_addresses",
    "specs",
]
