"""gRPC core's server options and threads: what one connection may take, how many calls core
holds before this process takes them up, and the priority of core's own threads (settings;
docs/resilience.md "Overload", docs/security/requests-and-stored-data.md)."""

from __future__ import annotations

import os
from pathlib import Path

from featurewell.settings import ServingSettings


def connection_limits(serving: ServingSettings) -> list[tuple[str, int]]:
    """gRPC core options bounding what one client connection may take: request size, open
    calls, lifetime and idleness, and keepalive pings (each a setting, documented in
    docs/security/requests-and-stored-data.md)."""
    options = [
        # max_message_mb bounds both ways; max_request_mb bounds requests further.
        (
            "grpc.max_receive_message_length",
            min(serving.max_request_mb * 1024 * 1024, serving.max_message_bytes),
        ),
        ("grpc.max_concurrent_streams", serving.max_concurrent_streams),
        ("grpc.max_connection_idle_ms", int(serving.max_connection_idle_s * 1000)),
        (
            "grpc.http2.min_ping_interval_without_data_ms",
            int(serving.keepalive_min_interval_s * 1000),
        ),
        ("grpc.keepalive_permit_without_calls", int(serving.keepalive_permit_without_calls)),
        ("grpc.http2.max_ping_strikes", 2),  # bad pings tolerated before GOAWAY
    ]
    if serving.max_connection_age_s > 0:
        options += [
            ("grpc.max_connection_age_ms", int(serving.max_connection_age_s * 1000)),
            ("grpc.max_connection_age_grace_ms", int(serving.max_connection_age_grace_s * 1000)),
        ]
    return options


def pending_limits(serving: ServingSettings) -> list[tuple[str, int]]:
    """gRPC core's bound on calls it holds before this process takes them up: past it, core
    answers RESOURCE_EXHAUSTED "Too many pending requests for this server" without Python. A
    CPU-bound server's queue lives there, where neither maximum_concurrent_rpcs nor any handler
    sees it (serving/overload.py)."""
    if not serving.max_pending_calls:
        return []
    return [
        ("grpc.server.max_pending_requests", serving.max_pending_calls),
        ("grpc.server.max_pending_requests_hard_limit", serving.max_pending_calls),
    ]


# gRPC core's threads, by their Linux names: its event engine's workers, the lifeguard that adds
# workers (threads inherit their creator's niceness, so its new ones are demoted too), its timer.
GRPC_THREADS = frozenset({"event_engine", "lifeguard", "grpc_global_tim"})


def demote_grpc_threads(nice: int) -> int:
    """Add `nice` to the niceness of gRPC core's threads in this process (setting
    grpc_threads_nice; Linux only, elsewhere nothing). Past capacity they spend the event loop's
    core refusing calls; demoted, they run in fewer, larger turns and the loop keeps more of it
    (docs/resilience.md, "Overload"). Returns how many threads were demoted."""
    tasks = Path("/proc/self/task")
    if nice <= 0 or not tasks.is_dir():
        return 0
    target = min(os.getpriority(os.PRIO_PROCESS, os.getpid()) + nice, 19)
    demoted = 0
    for task in tasks.iterdir():
        try:
            if (task / "comm").read_text().strip() not in GRPC_THREADS:
                continue
            tid = int(task.name)
            if os.getpriority(os.PRIO_PROCESS, tid) < target:
                os.setpriority(os.PRIO_PROCESS, tid, target)
                demoted += 1
        except (OSError, ValueError):  # the thread ended meanwhile
            continue
    return demoted
