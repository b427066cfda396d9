"""Progress of long commands (materialize, backfill, training-set, validate): rows done, rate and
time left.

On a terminal, a rich progress bar per task, on stderr; otherwise (a pipe, a log file, a CI job) a
plain line per task every `every_s` seconds, so logs stay readable. The domain code only calls
back (`update(task, done, total)`); drawing stays here, in the command layer.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from types import TracebackType
from typing import TextIO

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    ProgressColumn,
    Task,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
)
from rich.progress import Progress as Bars
from rich.text import Text

PLAIN_EVERY_S = 5.0  # a plain progress line per task at most this often


class _Rate(ProgressColumn):
    """Units per second, as rich measures it (over its recent samples)."""

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        unit = task.fields.get("unit", "rows")
        return Text("" if speed is None else f"{speed:,.0f} {unit}/s", style="progress.data.speed")


@dataclass
class _Plain:
    started: float
    logged: float
    unit: str
    done: int = 0
    total: int | None = None


class Progress:
    """`with Progress("materialize") as progress: ... progress.update(view, rows, total)`.
    `terminal` None: whether `stream` is a terminal."""

    def __init__(
        self,
        verb: str,
        *,
        stream: TextIO | None = None,
        terminal: bool | None = None,
        every_s: float = PLAIN_EVERY_S,
    ) -> None:
        self.verb = verb
        self.stream = stream if stream is not None else sys.stderr
        self.terminal = self.stream.isatty() if terminal is None else terminal
        self.every_s = every_s
        self._bars: Bars | None = None
        self._tasks: dict[str, TaskID] = {}
        self._plain: dict[str, _Plain] = {}

    def __enter__(self) -> Progress:
        if self.terminal:
            self._bars = Bars(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[unit]}"),
                _Rate(),
                TextColumn("ETA"),
                TimeRemainingColumn(),
                console=Console(file=self.stream, force_terminal=True),
                # Print()s to a terminal go above the bars; to a pipe they stay there, as is.
                redirect_stdout=sys.stdout.isatty(),
                redirect_stderr=False,
            )
            self._bars.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        if self._bars is not None:
            self._bars.stop()

    def update(self, task: str, done: int, total: int | None = None, unit: str = "rows") -> None:
        """`done` of `total` units of `task` (total None: not known)."""
        if self._bars is not None:
            if task not in self._tasks:
                self._tasks[task] = self._bars.add_task(
                    f"{self.verb} {task}", total=total, unit=unit
                )
            self._bars.update(self._tasks[task], completed=done, total=total)
            return
        now = time.monotonic()
        state = self._plain.setdefault(task, _Plain(now, now, unit))
        state.done, state.total = done, total
        if now - state.logged >= self.every_s:
            state.logged = now
            print(self.line(task), file=self.stream, flush=True)

    def line(self, task: str) -> str:
        """The plain progress line of `task`: done, total, rate, time left."""
        state = self._plain[task]
        unit = state.unit
        seconds = max(time.monotonic() - state.started, 1e-9)
        rate = state.done / seconds
        text = f"{self.verb} {task}: {state.done:,}"
        if state.total:
            text += f" of {state.total:,} {unit} ({100 * state.done / state.total:.0f}%)"
        else:
            text += f" {unit}"
        text += f", {rate:,.0f} {unit}/s"
        if state.total and rate > 0:
            text += f", ETA {_duration((state.total - state.done) / rate)}"
        return text


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(seconds + 0.5), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"
