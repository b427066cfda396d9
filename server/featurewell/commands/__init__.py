"""The `featurewell` verbs, one module per area: each verb declares its own arguments and the
settings groups it reads beside its handler (see `_command.Command`)."""

from featurewell.commands import (
    acl,
    catalog,
    data,
    deadletters,
    lifecycle,
    local,
    probe,
    repair,
    serving,
    skew,
    training,
    ui,
)
from featurewell.commands._command import Command

COMMANDS: tuple[Command, ...] = (
    *serving.COMMANDS,
    *data.COMMANDS,
    *deadletters.COMMANDS,
    *repair.COMMANDS,
    *training.COMMANDS,
    *lifecycle.COMMANDS,
    *local.COMMANDS,
    *acl.COMMANDS,
    *probe.COMMANDS,
    *catalog.COMMANDS,
    *ui.COMMANDS,
    *skew.COMMANDS,
)

__all__ = ["COMMANDS", "Command"]
