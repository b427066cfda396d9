"""What a command is: its name, the settings groups it reads, its own arguments and its handler.

A command's `--help` lists its own arguments and the flags of its settings groups only. The
handler gets the loaded `Settings` and its parsed arguments, turns the arguments into the typed
options the domain code takes, and calls it: argparse stops here.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import uvloop

from featurewell.definitions import EventSource, Registry, load_repo
from featurewell.errors import ConfigError, UnknownFeature
from featurewell.settings import Group, Settings, Spec, specs

T = TypeVar("T")
Handler = Callable[[Settings, argparse.Namespace], None]


def number(*, positive: bool = False) -> Callable[[str], float]:
    """An argparse type for a command's own float flags (settings check theirs where they are
    parsed): a finite number, not negative, above 0 with `positive`. `nan` passes every
    comparison, so `--fail-above nan` never failed a check and `--checkpoint-s nan` scheduled
    timers for never: refused here, by name, before anything runs."""

    def parse(raw: str) -> float:
        try:
            value = float(raw)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {raw!r}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"must be a finite number, got {raw!r}")
        if value < 0 or (positive and value == 0):
            bound = "above 0" if positive else "0 or more"
            raise argparse.ArgumentTypeError(f"must be {bound}, got {raw!r}")
        return value

    parse.__name__ = "positive number" if positive else "number"  # argparse's error wording
    return parse


@dataclass(frozen=True)
class Command:
    name: str
    help: str
    run: Handler
    groups: tuple[type[Group], ...] = ()  # settings groups whose flags it takes
    arguments: Callable[[argparse.ArgumentParser], None] | None = None
    repo: bool = True  # takes --repo (and needs one unless `repo_optional`)
    repo_optional: bool = False

    def parser(self, commands: Any) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = commands.add_parser(
            self.name, help=self.help, description=self.help
        )
        if self.arguments is not None:
            self.arguments(parser)
        common = parser.add_argument_group("settings (also FEATUREWELL_<NAME> variables)")
        for spec in specs():
            if spec.group is None and (spec.name != "repo" or self.repo):
                _flag(common, spec)
        for group in self.groups:
            flags = parser.add_argument_group(f"{group.title} settings")
            for spec in specs(group):
                _flag(flags, spec)
        parser.set_defaults(command=self)
        return parser

    def overrides(self, args: argparse.Namespace) -> dict[str, Any]:
        """The settings given as flags, by public name."""
        names = [s.name for s in specs() if s.group is None]
        names += [s.name for group in self.groups for s in specs(group)]
        return {name: getattr(args, name, None) for name in names}

    def check(self, settings: Settings) -> None:
        if self.repo and not self.repo_optional and not settings.repo:
            raise ConfigError(f"featurewell {self.name}: --repo (or FEATUREWELL_REPO) is required")


_METAVARS = {"int": "N", "float": "X", "bool": "BOOL", "addresses": "HOST:PORT,..."}


def _flag(group: argparse._ArgumentGroup, spec: Spec) -> None:
    group.add_argument(
        f"--{spec.name.replace('_', '-')}",
        dest=spec.name,
        default=None,
        type=_parser_of(spec),
        metavar=_METAVARS.get(spec.kind, spec.name.upper()),
        help=f"{spec.doc} (default: {_show(spec.default)})",
    )


def _parser_of(spec: Spec) -> Callable[[str], Any]:
    """The setting's own parser, so a bad flag is refused by argparse with its name."""

    def parse(raw: str) -> Any:
        try:
            return spec.parse(raw)
        except ConfigError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return parse


def _show(value: Any) -> str:
    if isinstance(value, tuple):
        return ",".join(f"{h}:{p}" for h, p in value)
    return repr(value)


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run a command's async part on uvloop."""
    return uvloop.run(coroutine)


def registry_of(settings: Settings) -> Registry:
    return load_repo(settings.repo)


def event_source(registry: Registry, name: str) -> EventSource:
    sources = {v.events.name: v.events for v in registry.views.values() if v.events is not None}
    if name not in sources:
        raise UnknownFeature(f"no event source {name!r}; known: {sorted(sources)}")
    return sources[name]


def pairs(items: Sequence[str] | None, flag: str = "--data") -> dict[str, str] | None:
    """`VIEW=PATH` arguments as a mapping."""
    if not items:
        return None
    found = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise ConfigError(f"{flag} takes VIEW=PARQUET, got {item!r}")
        found[name] = path
    return found
