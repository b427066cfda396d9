"""The client library against a real server: sync and async, the numpy matrix, statuses and
counts, typed errors, the default deadline, read-only retries, DNS round robin and TLS."""

from __future__ import annotations

import socket
import subprocess
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import pytest

from featurewell.client import (
    AsyncFeatureClient,
    ClientOptions,
    DeadlineExceeded,
    FeatureClient,
    FeatureClientError,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    Status,
    WriteResult,
)
from featurewell.definitions import Registry
from featurewell.devcluster import LocalCluster
from featurewell.store.keys import entity_tags, slot_of
from tests import defs
from tests.tools import Ids, ServerThread, make_settings, sleep_node, wait_until

RANKING = ["profile:age", "profile:taste", "item_stats:popularity", "item_stats:vec"]


def test_ranking_matrix_broadcasts_the_user_and_counts_statuses(
    client: FeatureClient, ids: Ids
) -> None:
    user = ids("ranker")
    items = [910_001, 910_002, 910_003]
    defs.write_profiles(client, [user], ages=[33])
    defs.write_items(client, items[:2])

    result = client.get_features(RANKING, entities={"user_id": [user], "item_id": items})

    matrix, names = result.to_numpy()
    assert matrix.shape == (3, 1 + 4 + 1 + 4)
    assert matrix.dtype == np.float32
    assert names[:2] == ["profile:age", "profile:taste[0]"]
    assert matrix[:, 0].tolist() == [33, 33, 33]  # the user's value on every item row
    assert result["profile:age"].length == 1  # sent once, broadcast by the client
    assert result.statuses("item_stats:popularity").tolist() == [
        Status.PRESENT,
        Status.PRESENT,
        Status.NOT_FOUND,
    ]
    assert result.count(Status.NOT_FOUND) == 2  # popularity and vec of the unknown item
    assert (result.stale_count, result.fallback_count, result.degraded) == (0, 0, False)

    two_hours_ago = defs.now_us() - 2 * 3600 * 1_000_000  # profile's max age is 1 hour
    old = ids("old-user")
    defs.write_profiles(client, [old], ages=[70], at_us=two_hours_ago)
    stale = client.get_features(["profile:age", "profile:score"], entities={"user_id": [old]})
    assert stale.values("profile:age").tolist() == [70]  # served as stored, but flagged
    assert stale.statuses("profile:age").tolist() == [Status.STALE]
    assert stale.stale_count == 2


def test_string_ids_reach_the_server_as_given(client: FeatureClient, ids: Ids) -> None:
    user = ids("nul")
    # Through numpy (a unicode array) a trailing NUL was dropped: two users became one.
    users = [user, user + "\x00"]
    defs.write_profiles(client, users, ages=[30, 40])
    read = client.get_features(["profile:age"], entities={"user_id": users})
    assert read.values("profile:age").tolist() == [30, 40]
    # The same as a tuple, and beside a value that is not a string (a string column still:
    # the number becomes its digits).
    number = int(ids("n").rsplit("-", 1)[1], 16)  # unique to this run, as `ids` are
    defs.write_profiles(client, [str(number)], ages=[50])
    as_tuple = client.get_features(["profile:age"], entities={"user_id": tuple(users)})
    assert as_tuple.values("profile:age").tolist() == [30, 40]
    mixed = client.get_features(["profile:age"], entities={"user_id": [number, users[1]]})
    assert mixed.values("profile:age").tolist() == [50, 40]


def test_to_numpy_dtypes_never_narrow_silently(client: FeatureClient, ids: Ids) -> None:
    user = ids("wide")
    big = 1_796_141_823  # a Unix time in seconds: float32 keeps 24 bits of it
    defs.write_profiles(client, [user], ages=[big])
    result = client.get_features(["profile:*"], entities={"user_id": [user]})
    assert result.non_numeric == ["profile:country", "profile:recent", "profile:weights"]

    narrow, names = result.to_numpy()  # the documented default: float32, rounded
    assert names[:2] == ["profile:age", "profile:score"]
    assert narrow.dtype == np.float32
    assert int(narrow[0, 0]) != big  # float32 is off by up to 64 s at this size
    assert abs(int(narrow[0, 0]) - big) <= 64

    wide, _ = result.to_numpy(dtype=np.float64)
    assert int(wide[0, 0]) == big  # exact up to 2**53
    assert wide[0, 1] == big / 100  # FLOAT64 score, not rounded through float32

    exact, _ = result.to_numpy(["profile:age"], dtype=np.int64)
    assert exact.tolist() == [[big]]
    with pytest.raises(TypeError, match="would narrow it"):
        result.to_numpy(["profile:age"], dtype=np.int32)
    with pytest.raises(TypeError, match="holds floats"):
        result.to_numpy(["profile:score"], dtype=np.int64)
    with pytest.raises(TypeError, match="pass dtype=object"):
        result.to_numpy(["profile:country"])

    everything, names = result.to_numpy(dtype=object)
    row = dict(zip(names, everything[0], strict=True))
    assert row["profile:country"] == f"c{big}"
    assert row["profile:recent"].tolist() == [0, 1]
    assert row["profile:weights"].tolist() == [1.0]
    assert row["profile:age"] == big
    assert set(result.non_numeric) <= set(names)
    assert result.values("profile:country").tolist() == [f"c{big}"]  # strings, as str


def test_to_numpy_object_broadcasts_a_one_row_list_column(client: FeatureClient, ids: Ids) -> None:
    user = ids("lists")
    defs.write_profiles(client, [user], ages=[5])
    result = client.get_features(
        ["profile:recent", "item_stats:popularity"],
        entities={"user_id": [user], "item_id": [1, 2]},
    )
    matrix, names = result.to_numpy(dtype=object)
    assert names == ["profile:recent", "item_stats:popularity"]
    assert [cell.tolist() for cell in matrix[:, 0]] == [[0, 1], [0, 1]]


async def test_async_client_reads_writes_and_lists(server: ServerThread, ids: Ids) -> None:
    user = ids("async")
    async with AsyncFeatureClient(server.address) as client:
        written = await client.write_features(
            "item_stats",
            entities={"item_id": [920_001]},
            event_timestamps_us=[defs.now_us()],
            features={"popularity": np.array([0.5], np.float32), "vec": np.ones((1, 4), "f4")},
        )
        result = await client.get_features(
            ["item_stats:popularity", "profile:age"],
            entities={"item_id": [920_001], "user_id": [user]},
            include_event_timestamps=True,
        )
        catalog = await client.list_features()
        with pytest.raises(NotFound, match="no feature 'nope'"):
            await client.get_features(["profile:nope"], entities={"user_id": [user]})
        with pytest.raises(InvalidArgument, match="empty batch"):
            await client.get_features(["profile:age"], entities={"user_id": []})
    assert written == WriteResult("item_stats", written=1, skipped_older=0)
    assert result.values("item_stats:popularity").tolist() == [0.5]
    assert result.statuses("profile:age").tolist() == [Status.NOT_FOUND]
    stamps = result["item_stats:popularity"].event_time_us
    assert stamps is not None
    assert stamps[0] > 0
    assert "item_stats" in {view.name for view in catalog.views}


def test_default_deadline_bounds_a_call_to_a_server_that_never_answers() -> None:
    with socket.socket() as silent:  # accepts connections, never speaks HTTP/2
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        port = silent.getsockname()[1]
        with FeatureClient(f"127.0.0.1:{port}") as client:
            assert client.timeout == 1.0
            started = time.monotonic()
            with pytest.raises(DeadlineExceeded):
                client.get_features(["profile:age"], entities={"user_id": ["u"]})
            waited = time.monotonic() - started
    assert 0.9 <= waited < 5.0


def test_reads_are_retried_and_writes_are_not(
    cluster: LocalCluster, registry: Registry, ids: Ids
) -> None:
    # The node sleeps 2 s: the occupant's read waits for it (the cap is 5 s) while the other
    # calls are shed. Everything inside that window is connected beforehand, so a slow machine
    # spends it on the calls only (1 s was once all of it: thread, connection, calls).
    server = ServerThread(
        make_settings(cluster, max_in_flight=1, store_timeout_ms=5000.0, cache_entries=0),
        registry,
    )
    try:
        user = ids("retry")
        with FeatureClient(server.address, timeout=5) as setup:
            defs.write_profiles(setup, [user], ages=[1])
        port = cluster.owner(slot_of(entity_tags([[user]], 1)[0]))
        calls = server.server.service.calls
        connected, go = threading.Event(), threading.Event()
        occupant = threading.Thread(target=_read_once, args=(server.address, user, connected, go))
        occupant.start()
        options = ClientOptions(timeout=0.6, read_attempts=3)
        with FeatureClient(server.address, options=options) as client:
            grpc.channel_ready_future(client._channel).result(timeout=30)
            assert connected.wait(30)
            sleeper = sleep_node(port, 2.0)
            go.set()  # the occupant holds the server's only slot until the node wakes
            wait_until(
                lambda: calls.in_flight > 0,
                5,
                "the occupant's call to be in flight",
                interval=0.001,
            )
            with pytest.raises(ResourceExhausted):
                client.get_features(["profile:age"], entities={"user_id": [user]})
            shed_by_read = calls.shed
            with pytest.raises(ResourceExhausted):
                defs.write_profiles(client, [user], ages=[2])
            shed_by_write = calls.shed - shed_by_read
        occupant.join()
        sleeper.join()
        assert (shed_by_read, shed_by_write) == (3, 1)  # three attempts of the read, one write
    finally:
        server.stop()


def _read_once(address: str, user: str, connected: threading.Event, go: threading.Event) -> None:
    with FeatureClient(address, options=ClientOptions(timeout=10, read_attempts=1)) as client:
        grpc.channel_ready_future(client._channel).result(timeout=30)
        connected.set()
        go.wait(60)
        client.get_features(["profile:age"], entities={"user_id": [user]})


def test_dns_target_round_robins_over_resolved_addresses(server: ServerThread) -> None:
    port = server.server.port
    with FeatureClient(f"dns:///localhost:{port}") as client:
        channel_options = dict(client.options.channel_options(f"dns:///localhost:{port}"))
        result = client.get_features(["profile:age"], entities={"user_id": ["dns-user"]})
    assert channel_options["grpc.lb_policy_name"] == "round_robin"
    assert result.rows == 1


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost,IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


def test_tls(cluster: LocalCluster, registry: Registry, certificate: tuple[Path, Path]) -> None:
    cert, key = certificate
    settings = make_settings(cluster, tls_cert_file=str(cert), tls_key_file=str(key))
    server = ServerThread(settings, registry)
    try:
        address = f"localhost:{server.server.port}"
        with FeatureClient(address, options=ClientOptions(tls=cert.read_bytes())) as secure:
            assert secure.get_features(["profile:age"], entities={"user_id": ["t"]}).rows == 1
        plaintext = ClientOptions(timeout=0.5, read_attempts=1)
        with (
            FeatureClient(address, options=plaintext) as plain,
            pytest.raises(FeatureClientError, match=r"UNAVAILABLE|DEADLINE_EXCEEDED"),
        ):
            plain.get_features(["profile:age"], entities={"user_id": ["t"]})
    finally:
        server.stop()
