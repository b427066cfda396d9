"""The settings groups Settings (settings.py) holds, one module per family: serving (where the
server listens, the calls it takes, who may make them), stores (Redis, the hot-key cache, the
offline store) and telemetry; group.py says what a group is."""

from featurewell.settings_groups.group import Group, setting
from featurewell.settings_groups.serving import AuthSettings, ListenSettings, ServingSettings
from featurewell.settings_groups.stores import CacheSettings, OfflineSettings, RedisSettings
from featurewell.settings_groups.telemetry import TelemetrySettings, rate_list

# Callers name the package, not its modules, so which module declares a group can change
# without moving an import.
__all__ = [
    "AuthSettings",
    "CacheSettings",
    "Group",
    "ListenSettings",
    "OfflineSettings",
    "RedisSettings",
    "ServingSettings",
    "TelemetrySettings",
    "rate_list",
    "setting",
]
