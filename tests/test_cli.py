"""The `featurewell` command as users run it: materialize, serve (SIGTERM drain, several workers),
and demo, the README's first command."""

from __future__ import annotations

import io
import os
import pty
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from featurewell.client import FeatureClient, FeatureClientError, Status, Unavailable
from featurewell.commands.progress import Progress
from featurewell.devcluster import LocalCluster, _is_free, call, free_ports
from featurewell.store.keys import key_slot
from tests.tools import wait_until

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "streaming_media"


def featurewell(*args: str, **kw: Any) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "featurewell.cli", *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        **kw,
    )


def _append(seeds: str, event: str) -> subprocess.Popen[str]:
    """`featurewell append` of one event to the example's watches."""
    return featurewell(
        "append", "--repo", str(EXAMPLE), "--redis", seeds, "--source", "watches", "--event", event
    )


def wait_serving(address: str, timeout: float = 30) -> None:
    def ready() -> bool:
        with grpc.insecure_channel(address) as channel:
            grpc.channel_ready_future(channel).result(timeout=0.5)
        return True

    wait_until(ready, timeout, f"a server on {address}", retry_on=(grpc.FutureTimeoutError,))


class Output:
    """A process's output, read on a thread of its own as it comes (so a test can wait for a
    line while the process runs); `text()` once the process has ended."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        assert process.stdout is not None
        self._stdout = process.stdout
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        with self._stdout:  # closed at the end, as communicate() would
            for line in self._stdout:
                self.lines.append(line)

    def count(self, text: str) -> int:
        return sum(text in line for line in list(self.lines))

    def text(self, timeout: float = 10) -> str:
        self._reader.join(timeout)
        return "".join(self.lines)


@pytest.fixture(scope="module")
def example_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the example repo with small generated data (the working tree stays clean)."""
    folder = tmp_path_factory.mktemp("streaming_media")
    shutil.copy(EXAMPLE / "repo.py", folder / "repo.py")
    done = subprocess.run(
        [
            sys.executable,
            str(EXAMPLE / "generate.py"),
            "--users",
            "300",
            "--items",
            "200",
            "--out",
            str(folder / "data"),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "watches: " in done.stdout
    assert "item_genre: 200 rows" in done.stdout
    return folder


@pytest.fixture(scope="module")
def seeds(cluster: LocalCluster) -> str:
    return ",".join(f"{h}:{p}" for h, p in cluster.seeds)


@pytest.fixture(scope="module")
def served(example_repo: Path, seeds: str) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    loaded = featurewell("materialize", "--repo", str(example_repo), "--redis", seeds)
    out, _ = loaded.communicate(timeout=120)
    assert loaded.returncode == 0, out
    assert "item_genre@v1: 200 rows" in out
    assert "rows/s" in out
    assert "user_activity@v1: 300 rows computed from watches" in out
    (port,) = free_ports(1)
    process = featurewell(
        "serve", "--repo", str(example_repo), "--redis", seeds, "--port", str(port)
    )
    address = f"127.0.0.1:{port}"
    wait_serving(address)
    yield address, process
    if process.poll() is None:
        process.kill()
        process.wait()


def test_materialized_values_are_served(served: tuple[str, Any], example_repo: Path) -> None:
    """Catalog rows as in their Parquet file; computed rows as the event log says, counted here
    independently of both engines (as of the time each row was computed)."""
    address, _ = served
    catalog = pq.read_table(example_repo / "data" / "item_genre.parquet").slice(0, 3).to_pylist()
    log = pq.read_table(example_repo / "data" / "watches.parquet").to_pylist()
    users = sorted({e["user_id"] for e in log})[:5]
    with FeatureClient(address) as client:
        result = client.get_features(
            ["user_activity:watch_count_7d", "user_activity:last_watch_ts"],
            entities={"user_id": users},
            include_event_timestamps=True,
        )
        items = client.get_features(
            ["item_genre:primary_genre"], entities={"item_id": [r["item_id"] for r in catalog]}
        )
    assert items["item_genre:primary_genre"].values.tolist() == [
        r["primary_genre"] for r in catalog
    ]
    counts = result["user_activity:watch_count_7d"]
    assert counts.event_time_us is not None
    hour = 3_600_000_000
    for n, user in enumerate(users):
        as_of = int(counts.event_time_us[n])
        mine = {e["event_id"]: e["event_time"] for e in log if e["user_id"] == user}
        in_window = [t for t in mine.values() if as_of // hour - 168 < t // hour and t <= as_of]
        assert counts.values[n] == len(in_window), user
        assert result["user_activity:last_watch_ts"].values[n] == max(mine.values()) // 1_000_000


def test_sigterm_drains_in_flight_calls(served: tuple[str, subprocess.Popen[str]]) -> None:
    address, process = served
    outcomes: list[str] = []
    stop = threading.Event()

    def caller() -> None:
        with FeatureClient(address, timeout=5) as client:
            items = [f"i{n:06d}" for n in range(200)]
            while not stop.is_set():
                try:
                    client.get_features(
                        ["user_activity:*", "item_stats:*", "user_item_affinity:genre_affinity"],
                        entities={"user_id": ["u000001"], "item_id": items},
                    )
                    outcomes.append("ok")
                except Unavailable:
                    outcomes.append("refused")  # after the server stopped accepting
                    return
                except FeatureClientError as exc:
                    # Arrived in the instant of stopping, before any handler took it (gRPC core
                    # cancels those); the server's own count below proves no handler was cut.
                    if exc.code == grpc.StatusCode.CANCELLED:
                        outcomes.append("refused")
                        return
                    raise
                except Exception as exc:
                    outcomes.append(f"failed: {exc}")
                    return

    threads = [threading.Thread(target=caller) for _ in range(4)]
    for thread in threads:
        thread.start()
    wait_until(lambda: outcomes.count("ok") > 10, 30, "the callers to be answered")
    process.send_signal(signal.SIGTERM)
    out, _ = process.communicate(timeout=20)
    stop.set()
    for thread in threads:
        thread.join(timeout=10)

    assert process.returncode == 0, out
    assert "draining in-flight calls" in out
    assert " 0 cut off by the grace period" in out, out
    assert outcomes.count("ok") > 10
    assert [o for o in outcomes if o not in ("ok", "refused")] == []


def test_several_workers_share_one_port(
    example_repo: Path, seeds: str, served: tuple[str, Any]
) -> None:  # `served` has materialized the data these workers read
    (port,) = free_ports(1)
    process = featurewell(
        "serve",
        "--repo",
        str(example_repo),
        "--redis",
        seeds,
        "--port",
        str(port),
        "--workers",
        "2",
    )
    output = Output(process)
    try:
        address = f"127.0.0.1:{port}"
        # Each worker logs this once it listens (and before it handles SIGTERM).
        wait_until(lambda: output.count("featurewell serving") == 2, 60, "both workers serving")
        children = _children(process.pid)
        workers = [pid for pid in children if "spawn_main" in _cmdline(pid)]
        assert len(workers) == 2, children
        for _ in range(20):  # fresh connections spread over the workers by the kernel
            with FeatureClient(address) as client:
                result = client.get_features(["item_genre:*"], entities={"item_id": ["i000001"]})
                assert result.count(Status.PRESENT) == 2
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=20)
    out = output.text()
    assert process.returncode == 0, out
    assert out.count("draining in-flight calls") == 2


def _children(parent: int) -> list[str]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == parent:
            found.append(stat.parent.name)
    return found


def _cmdline(pid: str) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def test_invalid_repo_and_unreachable_redis_exit_with_a_message(example_repo: Path) -> None:
    bad = featurewell("serve", "--repo", str(example_repo / "nope.py"), "--port", "0")
    out, _ = bad.communicate(timeout=30)
    assert bad.returncode == 2
    assert "does not exist" in out
    # (By default it starts NOT_SERVING and waits instead: tests/test_startup.py.)
    down = featurewell(
        "serve",
        "--repo",
        str(example_repo),
        "--redis",
        "127.0.0.1:1",
        "--port",
        "0",
        "--redis-wait-at-start",
        "false",
    )
    out, _ = down.communicate(timeout=30)
    assert down.returncode == 2
    assert "Redis Cluster unreachable: none of its 1 known nodes answered" in out
    assert "127.0.0.1:1" in out


@pytest.mark.redis  # the demo starts its own cluster
def test_demo_serves_the_example_streams_events_and_cleans_up() -> None:
    port = free_ports(1)[0]
    env = {**os.environ, "FEATUREWELL_PORT": str(port), "FEATUREWELL_METRICS_PORT": "0"}
    process = featurewell("demo", "--users", "200", "--items", "100", env=env)
    lines: list[str] = []
    try:
        assert process.stdout is not None
        for line in process.stdout:
            lines.append(line)
            if "Ctrl-C stops it all" in line:
                break
        address = f"127.0.0.1:{port}"
        with FeatureClient(address) as client:
            result = client.get_features(
                ["user_activity:*", "item_stats:popularity_score", "user_item_affinity:*"],
                entities={"user_id": ["u000042"], "item_id": [f"i{n:06d}" for n in range(100)]},
            )
            matrix, names = result.to_numpy()
            assert matrix.shape == (100, len(names))
            assert result.rows == 100
            # The README's `featurewell append`, against the demo's cluster: the demo's stream
            # process computes the new count.
            seeds = next(ln for ln in lines if ln.startswith("Redis Cluster up:")).split()[3]
            count = "user_activity:watch_count_7d"
            before = client.get_features([count], entities={"user_id": ["u000007"]})
            event = (
                '{"user_id": "u000007", "item_id": "i000003", "minutes": 12.5, '
                '"title_min": 45, "genre": 1}'
            )
            appended = _append(seeds, event)
            out, _ = appended.communicate(timeout=30)
            assert appended.returncode == 0, out

            was = int(before[count].values[0])
            seen: list[int] = []

            def moved() -> bool:
                after = client.get_features([count], entities={"user_id": ["u000007"]})
                seen.append(int(after[count].values[0]))
                return seen[-1] != was

            wait_until(moved, 10, "the demo's stream process to count the appended event")
            assert seen[-1] == was + 1
    finally:
        process.send_signal(signal.SIGINT)
        out, _ = process.communicate(timeout=30)
    text = "".join(lines) + out
    assert process.returncode == 0, text
    assert "materialized" in text
    assert "rows of 5 views from their event logs" in text
    live = next(ln for ln in text.splitlines() if ln.startswith("live: appended"))
    assert "user_activity:watch_count_7d went" in live
    went = live.split(" went ")[1].split(",")[0].split(" -> ")
    assert int(went[1]) == int(went[0]) + 1, live
    assert "stopping" in text
    cluster_line = next(line for line in text.splitlines() if line.startswith("Redis Cluster up:"))
    redis_ports = [int(a.rsplit(":", 1)[1]) for a in cluster_line.split()[3].split(",")]
    assert len(redis_ports) == 3
    assert all(_is_free(p) for p in [port, *redis_ports])  # server and every Redis node stopped
    stream_pid = int(
        next(ln for ln in text.splitlines() if "featurewell stream (pid" in ln)
        .split("(pid ")[1]
        .split(")")[0]
    )
    assert not Path(f"/proc/{stream_pid}").exists()  # the stream process stopped too


def test_append_refuses_bad_events_and_writes_nothing(cluster: LocalCluster, seeds: str) -> None:
    bad = [
        ('{"user_id": "u1", "item_id": "i1", "minutes": 3, "title_min": 9}', "missing columns"),
        (
            '{"user_id": 7, "item_id": "i1", "minutes": 3, "title_min": 9, "genre": 1}',
            "'user_id' must be string",
        ),
        (
            '{"user_id": "u1", "item_id": "i1", "minutes": 3, "title_min": 9, "genre": 1, '
            '"colour": "red"}',
            "unknown columns ['colour']",
        ),
        ("not json", "is not JSON"),
    ]
    for event, message in bad:
        process = _append(seeds, event)
        out, _ = process.communicate(timeout=30)
        assert process.returncode == 2, out
        assert message in out, out
    unknown = featurewell(
        "append", "--repo", str(EXAMPLE), "--redis", seeds, "--source", "clicks", "--event", "{}"
    )
    out, _ = unknown.communicate(timeout=30)
    assert unknown.returncode != 0
    assert "no event source 'clicks'; known: ['watches']" in out
    streams = [f"fw:events:watches:{p}" for p in range(4)]
    lengths = [call(cluster.owner(key_slot(k.encode())), "XLEN", k) for k in streams]
    assert lengths == [0, 0, 0, 0]


def test_progress_lines_when_not_a_terminal() -> None:
    stream = io.StringIO()
    with Progress("materialize", stream=stream, terminal=False, every_s=0.0) as progress:
        progress.update("item_genre@v1", 250, 1000)
        time.sleep(0.05)
        progress.update("item_genre@v1", 500, 1000)
        progress.update("unknown_total", 7)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 3, lines
    assert re.fullmatch(
        r"materialize item_genre@v1: 500 of 1,000 rows \(50%\), [\d,]+ rows/s, ETA \d+:\d\d",
        lines[1],
    ), lines[1]
    assert re.fullmatch(r"materialize unknown_total: 7 rows, [\d,]+ rows/s", lines[2]), lines[2]
    quiet = io.StringIO()  # every few seconds only: a fast job prints none
    with Progress("backfill", stream=quiet, terminal=False) as progress:
        for rows in range(0, 10_000, 100):
            progress.update("v@v1", rows, 10_000)
    assert quiet.getvalue() == ""


def on_terminal(*args: str, env: dict[str, str] | None = None) -> tuple[str, str, int]:
    """Run `featurewell ARGS` with stderr on a pseudo-terminal (stdout piped): what the terminal
    showed (colour codes removed), stdout, the exit code."""
    controller, terminal = pty.openpty()
    process = subprocess.Popen(
        [sys.executable, "-m", "featurewell.cli", *args],
        cwd=ROOT,
        env={**os.environ, "COLUMNS": "160", **(env or {})},
        stdout=subprocess.PIPE,
        stderr=terminal,
        text=True,
    )
    os.close(terminal)
    drawn = b""
    while True:
        try:
            chunk = os.read(controller, 65536)
        except OSError:  # the process closed the terminal
            break
        if not chunk:
            break
        drawn += chunk
    os.close(controller)
    out, _ = process.communicate(timeout=120)
    colourless = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", drawn.decode(errors="replace"))
    return colourless, out, process.returncode


def test_materialize_shows_a_progress_bar_on_a_terminal(example_repo: Path, seeds: str) -> None:
    screen, out, code = on_terminal(
        "materialize", "--repo", str(example_repo), env={"FEATUREWELL_REDIS": seeds}
    )
    assert code == 0, screen
    assert "materialize item_genre@v1" in screen
    assert "200/200" in screen  # the view's rows, done of total
    assert "rows/s" in screen
    assert "ETA" in screen
    assert "item_genre@v1: 200 rows" in out  # the summary stays on stdout, undecorated
    assert "\x1b[" not in out


def test_backfill_and_training_set_show_progress_on_a_terminal(
    example_repo: Path, seeds: str, tmp_path: Path
) -> None:
    history = tmp_path / "history"
    screen, out, code = on_terminal(
        *("backfill", "--repo", str(example_repo), "--redis", seeds, "--source", "watches"),
        *("--history-out", str(history), "--group", ""),
    )
    assert code == 0, screen
    assert "backfill user_activity@v1" in screen
    assert "300/300" in screen  # every user's row written
    assert "ETA" in screen
    assert "user_activity@v1: 300 entities online" in out
    labels = tmp_path / "labels.parquet"
    users = [f"u{n:06d}" for n in range(50)]
    pq.write_table(
        pa.table({"user_id": users, "event_timestamp": [time.time_ns() // 1000] * 50}), labels
    )
    screen, out, code = on_terminal(
        *("training-set", "--repo", str(example_repo), "--offline-dir", str(history)),
        *("--labels", str(labels), "--features", "user_activity:*", "--out", str(tmp_path / "t")),
    )
    assert code == 0, screen
    assert "training-set 50 labels" in screen
    assert "50/50 joined rows" in screen  # 50 label rows x 1 view
    assert "50 rows x" in out
