"""Name rules shared by every definition."""

from __future__ import annotations

import re

from featurewell.errors import DefinitionError

_NAME = re.compile(r"[a-z][a-z0-9_]{0,62}")


def check_name(name: object, what: str) -> str:
    """Names go into Redis keys and feature references, so they are kept plain and short."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise DefinitionError(
            f"{what} name {name!r} is invalid: use lowercase letters, digits and '_', "
            "starting with a letter, at most 63 characters"
        )
    return name
