"""The /metrics endpoint, on its own port: one process's registry, or, with several worker
processes, the parent aggregating every worker's metric files (prometheus_client's
multiprocess mode).

Multiprocess mode is chosen per process by `PROMETHEUS_MULTIPROC_DIR` at the moment
prometheus_client is imported, so the parent sets it before it spawns the workers: each worker
imports prometheus_client fresh and writes its values to files there.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

_ENV = "PROMETHEUS_MULTIPROC_DIR"


def serve(registry: CollectorRegistry, host: str, port: int) -> int:
    """Serve `registry` at http://host:port/metrics; returns the bound port."""
    server, _thread = start_http_server(port, addr=host, registry=registry)
    return int(server.server_port)


class WorkerMetrics:
    """The parent's side of multi-process metrics: a fresh directory for the workers' files,
    and a registry that aggregates them."""

    def __init__(self) -> None:
        self.path = Path(tempfile.mkdtemp(prefix="featurewell-metrics-"))
        os.environ[_ENV] = str(self.path)  # inherited by the spawned workers
        self.registry = CollectorRegistry()
        MultiProcessCollector(self.registry, path=str(self.path))  # type: ignore[no-untyped-call]

    def worker_exited(self, pid: int) -> None:
        """Drop a dead worker's live gauges (cache size, open circuits, drift)."""
        mark_process_dead(pid, str(self.path))  # type: ignore[no-untyped-call]

    def close(self) -> None:
        os.environ.pop(_ENV, None)
        shutil.rmtree(self.path, ignore_errors=True)
