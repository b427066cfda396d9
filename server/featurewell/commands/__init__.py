"""The `featurewell` verbs, one module per area: each verb declares its own arguments and the
settings groups it reads beside its handler (see `_command.Command`)."""

from featurewell.commands import data, lifecycle, local, repair, serving, training
from featurewell.commands._command import Command

COMMANDS: tuple[Command, ...] = (
    *serving.COMMANDS,
    *data.COMMANDS,
    *training.COMMANDS,
    *lifecycle.COMMANDS,
    *local.COMMANDS,
    *repair.COMMANDS,
)

__all__ = ["COMMANDS", "Command"]
