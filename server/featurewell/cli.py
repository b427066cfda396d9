"""The `featurewell` command: parse, load the settings once, run the verb, and turn expected
errors into a message and exit status 2 (the verbs live in `featurewell.commands`)."""

from __future__ import annotations

import argparse
import logging
import sys

from featurewell.commands import COMMANDS, Command
from featurewell.errors import ConfigError, FeaturewellError
from featurewell.settings import Settings


def main(argv: list[str] | None = None) -> None:
    parser = _parser()
    args = parser.parse_args(argv)
    command: Command = args.command
    try:
        settings = Settings.load(command.overrides(args))
        command.check(settings)
    except ConfigError as exc:
        parser.error(str(exc))
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(message)s")
    try:
        command.run(settings, args)
    except FeaturewellError as exc:
        print(f"featurewell: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        pass


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="featurewell", description="low-latency feature server")
    verbs = parser.add_subparsers(required=True, metavar="command")
    for command in COMMANDS:
        command.parser(verbs)
    return parser


if __name__ == "__main__":
    main()
