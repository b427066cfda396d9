"""`featurewell redis-acl`: the Redis ACL rules of a role, to create its user on every node."""

from __future__ import annotations

import argparse
from pathlib import Path

from featurewell.commands._command import Command, registry_of
from featurewell.errors import ConfigError
from featurewell.settings import Settings
from featurewell.store import acl
from featurewell.store.keys import stream_keys


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--role",
        action="append",
        required=True,
        choices=sorted(acl.ROLES),
        help="a role to grant (repeat to combine: a serving fleet that takes writes needs "
        "server and writer)",
    )
    parser.add_argument("--user", required=True, help="the Redis ACL user name")
    parser.add_argument(
        "--password-file",
        type=Path,
        help="file holding the user's password: its SHA-256 goes into the rules (default: "
        "no password; the user cannot log in until `ACL SETUSER <user> >password`)",
    )
    parser.add_argument(
        "--format",
        choices=("setuser", "aclfile"),
        default="setuser",
        help="`ACL SETUSER` commands (pipe into redis-cli on every node) or an aclfile line",
    )


def _redis_acl(settings: Settings, args: argparse.Namespace) -> None:
    password = None
    if args.password_file is not None:
        try:
            password = args.password_file.read_text(encoding="utf-8").rstrip("\r\n")
        except OSError as exc:
            raise ConfigError(f"cannot read --password-file: {exc}") from exc
    # Event sources renamed with stream= live outside fw:events:*; the repo says which.
    streams: list[str] = []
    if settings.repo:
        for view in registry_of(settings).views.values():
            if view.events is not None and view.events.stream:
                stream_keys(view.events)  # refuses a stream= on one of featurewell's own keys
                streams.append(view.events.stream)  # `<stream>*` covers its partitions
    roles = [acl.ROLES[name] for name in dict.fromkeys(args.role)]
    line = acl.aclfile_line if args.format == "aclfile" else acl.setuser
    print(line(args.user, roles, password, sorted(set(streams))))


COMMANDS = (
    Command(
        "redis-acl",
        "print the Redis ACL rules of a role (server, writer, admin) for a user",
        _redis_acl,
        arguments=_arguments,
        repo_optional=True,
    ),
)
