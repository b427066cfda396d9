"""SubscribeInvalidations as a hostile caller sees it: garbage refused with the codes that say
why, authentication and authorisation as on every call, a slow subscriber cut off with a reset
instead of buffered without bound, and a near cache that never answers a caller without access."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import grpc
import numpy as np
import pytest

from featurewell.client import ClientOptions, FeatureClient, PermissionDenied
from featurewell.definitions import Feature, FeatureView, Int64
from featurewell.devcluster import LocalCluster
from featurewell.serving.invalidations import near_ttl
from featurewell.v1 import feature_service_pb2 as pb
from featurewell.v1 import feature_service_pb2_grpc as pb_grpc
from tests import auth_tools, defs
from tests.auth_tools import AUDITOR, AuthStack
from tests.tools import Ids, ServerThread, make_settings, wait_until

METHOD = "/featurewell.v1.FeatureService/SubscribeInvalidations"
Metadata = tuple[tuple[str, str], ...]


def refusal(
    channel: grpc.Channel, request: pb.SubscribeInvalidationsRequest, metadata: Metadata = ()
) -> grpc.StatusCode:
    call = pb_grpc.FeatureServiceStub(channel).SubscribeInvalidations(
        request, timeout=10, metadata=metadata
    )
    with pytest.raises(grpc.RpcError) as raised:
        next(iter(call))
    code: grpc.StatusCode = raised.value.code()
    return code


def test_garbage_subscriptions_are_refused(server: ServerThread) -> None:
    with grpc.insecure_channel(server.address) as channel:
        for views, code in [
            ([], grpc.StatusCode.INVALID_ARGUMENT),
            (["Not A View!"], grpc.StatusCode.INVALID_ARGUMENT),
            (["profile@v0"], grpc.StatusCode.INVALID_ARGUMENT),
            (["x" * 100_000], grpc.StatusCode.INVALID_ARGUMENT),
            (["profile"] * 257, grpc.StatusCode.INVALID_ARGUMENT),
            (["no_such_view"], grpc.StatusCode.NOT_FOUND),
            (["profile@v9"], grpc.StatusCode.NOT_FOUND),
        ]:
            request = pb.SubscribeInvalidationsRequest(views=views)
            assert refusal(channel, request) == code, views[:2]
        # Bytes that are not the message at all.
        raw: grpc.UnaryStreamMultiCallable[bytes, pb.InvalidationBatch] = channel.unary_stream(
            METHOD,
            request_serializer=None,
            response_deserializer=pb.InvalidationBatch.FromString,
        )
        with pytest.raises(grpc.RpcError) as raised:
            next(iter(raw(b"\x0a\xff\xff\xff\xff", timeout=10)))
        assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        # The server still serves subscriptions afterwards.
        call = pb_grpc.FeatureServiceStub(channel).SubscribeInvalidations(
            pb.SubscribeInvalidationsRequest(views=["profile", "profile@v1", "item_stats"])
        )
        first = next(iter(call))
        call.cancel()
    assert [(v.name, v.version) for v in first.views] == [
        ("profile", 2),
        ("profile", 1),
        ("item_stats", 1),
    ]
    assert [list(v.join_keys) for v in first.views] == [["user_id"], ["user_id"], ["item_id"]]
    assert [v.max_age_seconds for v in first.views] == [3600.0, 0.0, 86400.0]
    assert all(v.ttl_seconds == 1.0 and not v.not_cacheable for v in first.views)


def test_what_is_cacheable_and_for_how_long() -> None:
    def view(max_age: timedelta | None = None, **tags: str) -> FeatureView:
        return FeatureView(
            "v", entity=defs.user, features=[Feature("f", Int64)], max_age=max_age, tags=tags
        )

    assert near_ttl(view(), 1.0, 0.1) == (1.0, "")
    assert near_ttl(view(timedelta(seconds=5)), 1.0, 0.1) == (0.5, "")  # a tenth of max age
    ttl, why = near_ttl(view(near_cache="off"), 1.0, 0.1)
    assert ttl == 0
    assert "opts out" in why
    ttl, why = near_ttl(view(), 0.0, 0.1)
    assert ttl == 0
    assert "near_cache_ttl_s" in why


@pytest.fixture(scope="module")
def stack(cluster: LocalCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[AuthStack]:
    yield from auth_tools.auth_stack(cluster, tmp_path_factory.mktemp("near-cache-auth"))


def _bearer(token: str) -> Metadata:
    return (("authorization", f"Bearer {token}"),)


def test_subscriptions_are_authenticated_and_authorised(stack: AuthStack) -> None:
    credentials = grpc.ssl_channel_credentials(stack.pki.roots)
    with grpc.secure_channel(f"localhost:{stack.token.server.port}", credentials) as channel:
        secret = pb.SubscribeInvalidationsRequest(views=["secret"])
        assert refusal(channel, secret) == grpc.StatusCode.UNAUTHENTICATED
        assert refusal(channel, secret, _bearer("forged")) == grpc.StatusCode.UNAUTHENTICATED
        outsider = _bearer(stack.jwks.token(sub="outsider"))
        assert refusal(channel, secret, outsider) == grpc.StatusCode.PERMISSION_DENIED
        # The outsider may follow the open view, not one listed beside it that it may not read.
        both = pb.SubscribeInvalidationsRequest(views=["profile", "secret"])
        assert refusal(channel, both, outsider) == grpc.StatusCode.PERMISSION_DENIED
        call = pb_grpc.FeatureServiceStub(channel).SubscribeInvalidations(
            secret, metadata=_bearer("tok-auditor")
        )
        first = next(iter(call))
        call.cancel()
    assert [(v.name, v.ttl_seconds) for v in first.views] == [("secret", 1.0)]


def test_a_near_cache_never_answers_a_caller_without_access(
    stack: AuthStack, ids: Ids, tmp_path: Path
) -> None:
    user = ids("secret")
    with stack.mtls_client(stack.pki.client(dns=auth_tools.WRITER)) as writer:
        writer.write_features(
            "secret",
            entities={"user_id": [user]},
            event_timestamps_us=[defs.now_us()],
            features={"score": np.array([0.5], dtype=np.float32), "ssn": ["123"]},
        )
    token = ["tok-auditor"]
    options = ClientOptions(
        tls=stack.pki.roots, token=lambda: token[0], timeout=5.0, read_attempts=1, near_cache=True
    )
    with FeatureClient(f"localhost:{stack.token.server.port}", options=options) as near:
        assert near.near_cache is not None
        stats = near.near_cache.stats

        def held() -> bool:
            before = stats.hits
            near.get_features(["secret:ssn"], {"user_id": [user]})
            return stats.hits > before

        wait_until(held, 15, f"{AUDITOR}'s answer from the near cache")
        token[0] = stack.jwks.token(sub="outsider")  # the same client, another principal
        for _ in range(3):
            with pytest.raises(PermissionDenied):
                near.get_features(["secret:ssn"], {"user_id": [user]})


def _metric(server: ServerThread, name: str, **labels: str) -> float | None:
    return server.server.telemetry.metrics.registry.get_sample_value(name, labels)


def _subscribe(
    address: str, views: list[str]
) -> tuple[grpc.Channel, Iterator[pb.InvalidationBatch]]:
    channel = grpc.insecure_channel(address)
    call = pb_grpc.FeatureServiceStub(channel).SubscribeInvalidations(
        pb.SubscribeInvalidationsRequest(views=views), timeout=30
    )
    return channel, iter(call)


def test_a_slow_subscriber_gets_a_reset_and_a_stopping_server_ends_streams(
    cluster: LocalCluster, client: FeatureClient, ids: Ids
) -> None:
    server = ServerThread(make_settings(cluster, near_cache_buffer=5), defs.registry())
    stopped = False
    try:
        channel, stream = _subscribe(server.address, ["profile"])
        assert next(stream).views[0].name == "profile"
        hub = server.server.service.invalidations
        wait_until(lambda: hub.subscribers == 1, 10, "the subscription to be registered")
        # 300 rows written at once: far more than 5 queue up before the stream can send them.
        defs.write_profiles(client, [ids(f"slow{n}") for n in range(300)], ages=[1] * 300)
        batches = list(stream)  # the stream ends after its reset
        channel.close()
        assert "fell behind by more than 5 rows" in batches[-1].reset
        sent = sum(len(k.keys) for b in batches for k in b.rows)
        assert sent < 300
        assert wait_until(lambda: hub.subscribers == 0, 10, "the subscriber to be let go") is True
        # What an SRE sees: the reset by reason, the rows sent, no stream left open.
        assert _metric(server, "featurewell_near_cache_resets_total", reason="fell_behind") == 1
        assert _metric(server, "featurewell_near_cache_resets_total", reason="stopping") == 0
        assert _metric(server, "featurewell_near_cache_invalidations_total") == sent
        assert _metric(server, "featurewell_near_cache_subscribers") == 0

        channel, stream = _subscribe(server.address, ["profile"])
        next(stream)
        assert _metric(server, "featurewell_near_cache_subscribers") == 1
        server.stop()
        stopped = True
        assert [b.reset for b in stream][-1] == "the server is stopping"
        channel.close()
        assert _metric(server, "featurewell_near_cache_resets_total", reason="stopping") == 1
    finally:
        if not stopped:
            server.stop()


_REPO = """
from featurewell.definitions import Entity, Feature, FeatureView, Int64, String

user = Entity("user", join_keys={"user_id": String})
member = FeatureView("member", entity=user, features=[Feature("age", Int64, default=-1)])
"""


def test_a_reload_resets_every_stream(cluster: LocalCluster, tmp_path: Path) -> None:
    """A reload may change what `view:feature` means (or a view's TTL): held rows must go."""
    repo = tmp_path / "repo.py"
    repo.write_text(_REPO)
    server = ServerThread(make_settings(cluster, repo=str(repo)), None)
    try:
        channel, stream = _subscribe(server.address, ["member"])
        assert next(stream).views[0].name == "member"
        assert server.run(server.server.reload()) is True
        assert [b.reset for b in stream] == ["the definitions were reloaded or a version promoted"]
        channel.close()
    finally:
        server.stop()


def _redis(port: int, *args: str) -> str:
    """A command's reply as redis-cli prints it (an error reply is printed too, not raised)."""
    return subprocess.run(
        ["redis-cli", "-p", str(port), *args], capture_output=True, text=True, check=False
    ).stdout


def _broadcast_clients(cluster: LocalCluster) -> list[tuple[int, str]]:
    """(node, client id) of every connection tracking in broadcast mode (flag B): the
    near-cache feeds (the hot-key cache tracks in OPTIN mode, never B)."""
    found = []
    for port in cluster.masters:
        for line in _redis(port, "CLIENT", "LIST").splitlines():
            fields = dict(part.split("=", 1) for part in line.split() if "=" in part)
            if "B" in fields.get("flags", ""):
                found.append((port, fields["id"]))
    return found


def test_a_lost_redis_connection_resets_every_stream(cluster: LocalCluster) -> None:
    server = ServerThread(make_settings(cluster), defs.registry())
    try:
        channel, stream = _subscribe(server.address, ["profile", "item_stats"])
        next(stream)
        feeds = _broadcast_clients(cluster)
        assert {port for port, _ in feeds} == set(cluster.masters)  # one on every master
        # Any one lost connection ends the whole feed; kill them all (another server of this
        # session may have a feed too: its streams reset just the same).
        killed = [_redis(port, "CLIENT", "KILL", "ID", client).strip() for port, client in feeds]
        assert "1" in killed
        resets = [b.reset for b in stream]
        assert resets[-1].startswith("lost the connection to 127.0.0.1:")
        channel.close()
        lost = {"reason": "connection_lost"}
        counted = wait_until(
            lambda: _metric(server, "featurewell_near_cache_resets_total", **lost),
            10,
            "the reset to be counted",
        )
        assert counted == 1
        # The next subscription listens again, on every master.
        channel, stream = _subscribe(server.address, ["profile"])
        assert next(stream).views[0].name == "profile"
        channel.close()
    finally:
        server.stop()
