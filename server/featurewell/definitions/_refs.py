"""Feature references: `view:feature`, `view:*`, `view@v2:feature`, `transform:output`."""

from __future__ import annotations

import re
from dataclasses import dataclass

from featurewell.errors import InvalidRequest

_REF = re.compile(
    r"(?P<table>[a-z][a-z0-9_]*)(?:@v(?P<version>[1-9][0-9]*))?:(?P<field>\*|[a-z][a-z0-9_]*)"
)


@dataclass(frozen=True, slots=True)
class FeatureRef:
    """A parsed reference. `table` is a view or transform name; `version` None means the view's
    default version; `field` is a feature name or '*'."""

    table: str
    version: int | None
    field: str

    @classmethod
    def parse(cls, text: str) -> FeatureRef:
        match = _REF.fullmatch(text)
        if match is None:
            raise InvalidRequest(
                f"feature reference {text!r} is malformed: use 'view:feature', 'view:*' "
                "or 'view@v2:feature'"
            )
        version = match["version"]
        return cls(match["table"], int(version) if version else None, match["field"])

    def __str__(self) -> str:
        version = f"@v{self.version}" if self.version is not None else ""
        return f"{self.table}{version}:{self.field}"


_VIEW_REF = re.compile(r"(?P<table>[a-z][a-z0-9_]*)(?:@v(?P<version>[1-9][0-9]*))?")


def parse_view_ref(text: str) -> tuple[str, int | None]:
    """`view` (its default version: None) or `view@vN`."""
    match = _VIEW_REF.fullmatch(text)
    if match is None:
        raise InvalidRequest(f"view reference {text!r} is malformed: use 'view' or 'view@v2'")
    version = match["version"]
    return match["table"], int(version) if version else None
