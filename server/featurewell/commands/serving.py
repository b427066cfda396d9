"""`featurewell serve`."""

from __future__ import annotations

import argparse

from featurewell.app import serve
from featurewell.commands._command import Command
from featurewell.settings import (
    AuthSettings,
    CacheSettings,
    ListenSettings,
    OfflineSettings,
    RedisSettings,
    ServingSettings,
    Settings,
    TelemetrySettings,
)

SERVER_GROUPS = (
    RedisSettings,
    ListenSettings,
    ServingSettings,
    CacheSettings,
    TelemetrySettings,
    AuthSettings,
    OfflineSettings,  # the served-feature log and pushed rows' history (docs/skew.md)
)


def _serve(settings: Settings, _args: argparse.Namespace) -> None:
    serve(settings)


COMMANDS = (Command("serve", "serve a feature repo over gRPC", _serve, SERVER_GROUPS),)
