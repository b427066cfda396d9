"""Every command's own float flags refuse what no one means (`nan`, infinities, negatives, and 0
where a rate or an interval is asked for) by name, before anything runs; settings flags are
checked where settings are parsed (tests/test_settings.py)."""

from __future__ import annotations

import argparse

import pytest

from featurewell import cli
from featurewell.commands._command import number


def _float_flags() -> list[tuple[str, str, argparse.Action]]:
    """(command, flag, action) for every flag of every command that takes a number."""
    verbs = next(a for a in cli._parser()._actions if isinstance(a, argparse._SubParsersAction))
    found = []
    for name, parser in verbs.choices.items():
        for action in parser._actions:
            kind = action.type
            if kind is float or getattr(kind, "__name__", "") in ("number", "positive number"):
                found.append((name, action.option_strings[-1], action))
    return found


def test_no_command_takes_a_bare_float() -> None:
    flags = _float_flags()
    assert len(flags) >= 20  # the commands' own: timeouts, paces, intervals, thresholds
    bare = [f"{name} {flag}" for name, flag, action in flags if action.type is float]
    assert bare == [], "use commands._command.number(): a bare float takes nan"


@pytest.mark.parametrize(("command", "flag"), [(c, f) for c, f, _ in _float_flags()])
def test_every_float_flag_refuses_nan_infinities_and_negatives(
    command: str, flag: str, capsys: pytest.CaptureFixture[str]
) -> None:
    for raw in ("nan", "inf", "-inf", "-1", "x"):
        with pytest.raises(SystemExit) as exited:
            cli._parser().parse_args([command, f"{flag}={raw}"])
        assert exited.value.code == 2
        assert f"argument {flag}:" in capsys.readouterr().err


def test_number_bounds() -> None:
    assert number()("0") == 0.0
    assert number(positive=True)("0.5") == 0.5
    with pytest.raises(argparse.ArgumentTypeError, match="above 0"):
        number(positive=True)("0")
    with pytest.raises(argparse.ArgumentTypeError, match="0 or more"):
        number()("-0.001")
