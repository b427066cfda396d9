"""Where the gate's processes run: the serving side on one core, the load generator and the
probes on another, so the generator's CPU never queues the server's work (nor the reverse).

On CI's two cores: `featurewell demo` (the server, its Redis nodes, the stream process: all
children of the demo, and a child inherits its parent's affinity) on core 0; Locust and the
probes on core 1. With more cores the same two are used, so a bigger machine measures the same
layout. With one core nothing is pinned, and the report says so.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass


@dataclass(frozen=True)
class Placement:
    serving: frozenset[int] | None  # None: not pinned
    client: frozenset[int] | None
    note: str

    @property
    def client_cpus(self) -> str:
        """For probe.py's --cpus ("" when not pinned)."""
        return ",".join(map(str, sorted(self.client))) if self.client else ""


def plan(pin: bool, serving_cpu: int | None = None) -> Placement:
    """The serving side on `serving_cpu` (default: the first this process may use), the client
    side on the next one."""
    if not hasattr(os, "sched_setaffinity"):
        return Placement(None, None, "no pinning: this OS has no sched_setaffinity")
    cpus = sorted(os.sched_getaffinity(0))
    if not pin:
        return Placement(None, None, f"no pinning (--no-pin); {len(cpus)} cpus shared")
    if len(cpus) < 2:
        return Placement(
            None, None, "no pinning: 1 core, so server, Redis, Locust and probes share it"
        )
    serving = cpus[0] if serving_cpu is None else serving_cpu
    if serving not in cpus:
        raise SystemExit(f"--serving-cpu {serving}: this process may use cpus {cpus} only")
    client = next(cpu for cpu in cpus if cpu != serving)
    return Placement(
        frozenset({serving}),
        frozenset({client}),
        f"pinned: server + Redis on cpu {serving}, Locust + probes on cpu {client}",
    )


def move_to(cpus: frozenset[int] | None) -> None:
    """Pin this process (and the children it starts from now on)."""
    if cpus is not None:
        os.sched_setaffinity(0, cpus)


def can_use_fifo() -> bool:
    """Whether this process may give a child real-time priority (root, or CAP_SYS_NICE)."""
    try:
        return os.sched_get_priority_max(os.SCHED_FIFO) > 0 and (
            os.geteuid() == 0 or _has_sys_nice()
        )
    except (AttributeError, OSError):
        return False


def _has_sys_nice() -> bool:
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("CapEff:"):
                    return bool(int(line.split()[1], 16) & (1 << 23))  # CAP_SYS_NICE
    except OSError:
        pass
    return False


def move_helpers(root: int, cpus: frozenset[int] | None) -> list[str]:
    """Move the demo's processes that serve no call (the stream engine, the skew check: in a
    deployment they run elsewhere) off the serving core, every thread; the server (`root`)
    and the Redis nodes stay. Returns the names moved."""
    if cpus is None:
        return []
    moved = []
    for pid in _descendants(root):
        name = _name(pid)
        if name == "redis-server":
            continue
        for tid in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError):  # a thread gone meanwhile
                os.sched_setaffinity(int(tid), cpus)
        moved.append(name)
    return sorted(set(moved))


def prioritise_redis(root: int, how: str) -> str:
    """Give `root`'s Redis nodes the serving core before the server's Python: `fifo`
    (SCHED_FIFO `REDIS_FIFO_PRIORITY`, every thread) or `nice` (niceness -10); `none` leaves
    them. Says what it did, for the report."""
    if how == "none":
        return "Redis at normal priority"
    nodes = [pid for pid in _descendants(root) if _name(pid) == "redis-server"]
    for pid in nodes:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError):  # a thread gone meanwhile
                if how == "fifo":
                    os.sched_setscheduler(
                        int(tid), os.SCHED_FIFO, os.sched_param(REDIS_FIFO_PRIORITY)
                    )
                else:
                    os.setpriority(os.PRIO_PROCESS, int(tid), REDIS_NICE)
    shown = f"SCHED_FIFO {REDIS_FIFO_PRIORITY}" if how == "fifo" else f"nice {REDIS_NICE}"
    return f"{len(nodes)} Redis nodes at {shown}"


def raise_serving(root: int, by: int) -> str:
    """Lower the niceness of every thread of `root` and of its Redis nodes (the serving side:
    the helpers moved off its core are left) by `by`, keeping their order among themselves.
    Says what it did, for the report."""
    if by <= 0:
        return "serving side at normal priority"
    for pid in [root, *_descendants(root)]:
        if pid != root and _name(pid) != "redis-server":
            continue
        for tid in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError):  # a thread gone meanwhile
                now = os.getpriority(os.PRIO_PROCESS, int(tid))
                os.setpriority(os.PRIO_PROCESS, int(tid), max(-20, now - by))
    return f"serving side {by} nice steps above other programs"


REDIS_FIFO_PRIORITY = 5  # below the probes' (on the other core anyway)
REDIS_NICE = -10


def _descendants(root: int) -> list[int]:
    found, pending = [], [root]
    while pending:
        pid = pending.pop()
        try:
            for tid in os.listdir(f"/proc/{pid}/task"):
                with open(f"/proc/{pid}/task/{tid}/children") as children:
                    kids = [int(child) for child in children.read().split()]
                found.extend(kids)
                pending.extend(kids)
        except (OSError, ValueError):
            continue
    return found


# What the window's figures owe to other programs on the machine: time runnable but waiting
# for a CPU. Read before and after the window; the report prints the difference.


def cpu_pressure_us() -> int | None:
    """Total time (us) some task waited for a CPU, machine-wide (Linux PSI; None without it)."""
    try:
        with open("/proc/pressure/cpu") as pressure:
            some = pressure.readline().split()
    except OSError:
        return None
    return int(some[-1].removeprefix("total="))


def core_times(cpus: frozenset[int] | None) -> tuple[float, float] | None:
    """(ms busy, ms stolen by the hypervisor) of `cpus` since boot (/proc/stat; None when not
    pinned or not known): a core's busy time less the serving side's is other programs'."""
    if cpus is None:
        return None
    busy = steal = 0
    try:
        with open("/proc/stat") as stat:
            for line in stat:
                name, *ticks = line.split()
                if name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in cpus:
                    values = [int(t) for t in ticks]
                    # user nice system idle iowait irq softirq steal ...
                    busy += sum(values[:3]) + sum(values[5:7])
                    steal += values[7]
    except (OSError, ValueError, IndexError):
        return None
    tick_ms = 1000 / os.sysconf("SC_CLK_TCK")
    return busy * tick_ms, steal * tick_ms


def tree_times(root: int | None) -> dict[str, tuple[float, float]]:
    """Per process of `root` and its descendants, by name: (ms on a CPU, ms waiting on a run
    queue), its threads summed (schedstat). Empty when not known."""
    out: dict[str, tuple[float, float]] = {}
    for pid in [] if root is None else [root, *_descendants(root)]:
        ran = waited = 0
        try:
            name = _name(pid)
            for tid in os.listdir(f"/proc/{pid}/task"):
                with open(f"/proc/{pid}/task/{tid}/schedstat") as stat:
                    on_cpu, on_queue = stat.read().split()[:2]
                ran, waited = ran + int(on_cpu), waited + int(on_queue)
        except (OSError, ValueError):
            continue  # gone meanwhile
        before = out.get(name, (0.0, 0.0))
        out[name] = (before[0] + ran / 1e6, before[1] + waited / 1e6)
    return out


def _name(pid: int) -> str:
    """`redis-server`, `featurewell demo` (the server), `featurewell stream`, ..."""
    with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
        words = [w.decode(errors="replace") for w in cmdline.read().split(b"\0") if w]
    if words and words[0].split()[0].endswith("redis-server"):  # (it rewrites its title)
        return "redis-server"
    if "featurewell.cli" in words:
        after = words[words.index("featurewell.cli") + 1 :]
        return f"featurewell {after[0]}" if after else "featurewell"
    return os.path.basename(words[0]) if words else str(pid)
