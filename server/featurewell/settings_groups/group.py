"""What a settings group is: a frozen dataclass whose fields carry their public name (flag and
environment variable) and help, and which checks its own values with the checks here, so every
error names the setting as the user spells it."""

from __future__ import annotations

from dataclasses import MISSING, dataclass, field, fields
from typing import Any, ClassVar

from featurewell.errors import ConfigError


def setting(name: str, doc: str, default: Any = MISSING, *, secret: bool = False) -> Any:
    # A secret stays out of repr(), so logging the settings never prints it.
    return field(default=default, metadata={"name": name, "doc": doc}, repr=not secret)


@dataclass(frozen=True)
class Group:
    """A group of settings. `title` heads its flags in `--help`."""

    title: ClassVar[str] = ""

    def check(self) -> None:
        """Raise ConfigError naming the setting and what it takes."""


def positive(group: Group, *names: str) -> None:
    for name in names:
        if getattr(group, name) <= 0:
            raise ConfigError(
                f"setting {_public(group, name)} must be positive, got {getattr(group, name)}"
            )


def not_negative(group: Group, *names: str) -> None:
    for name in names:
        if getattr(group, name) < 0:
            raise ConfigError(
                f"setting {_public(group, name)} must not be negative, got {getattr(group, name)}"
            )


def niceness(group: Group, *names: str) -> None:
    """Settings that add to a thread's niceness: Linux takes 0-19."""
    for name in names:
        if not 0 <= getattr(group, name) <= 19:
            raise ConfigError(
                f"setting {_public(group, name)} must be 0-19, got {getattr(group, name)}"
            )


def _public(group: Group, attribute: str) -> str:
    return str(next(f.metadata["name"] for f in fields(group) if f.name == attribute))
