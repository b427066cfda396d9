"""Authorisation: the Access policies of tests/auth_tools.py enforced by real gRPC servers
(principals from client certificates), ListFeatures filtered, computed views closed to
WriteFeatures, lineage by principal, and the policy objects' own checks."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from featurewell.client import ClientOptions, FeatureClient, PermissionDenied
from featurewell.definitions import (
    Access,
    DefaultAccess,
    Feature,
    FeatureView,
    Int64,
    Registry,
    Team,
)
from featurewell.devcluster import LocalCluster
from featurewell.errors import DefinitionError, Unauthenticated
from featurewell.serving.authz import Authoriser, grants
from featurewell.telemetry import consumers
from tests import auth_tools, defs
from tests.auth_tools import PIPELINE, RANKER, WRITER, AuthStack
from tests.tools import Ids, ServerThread, make_settings, wait_until


@pytest.fixture(scope="module")
def stack(cluster: LocalCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[AuthStack]:
    yield from auth_tools.auth_stack(cluster, tmp_path_factory.mktemp("auth-policy"))


@pytest.fixture(scope="module")
def ranker(stack: AuthStack) -> Iterator[FeatureClient]:
    cert = stack.pki.client(uri=RANKER)
    with stack.mtls_client(cert, caller="ranker/3.2") as client:
        yield client


@pytest.fixture(scope="module")
def writer(stack: AuthStack) -> Iterator[FeatureClient]:
    with stack.mtls_client(stack.pki.client(dns=WRITER)) as client:
        yield client


def _write_secret(client: FeatureClient, user: str) -> int:
    return client.write_features(
        "secret",
        entities={"user_id": [user]},
        event_timestamps_us=[defs.now_us()],
        features={"score": np.array([0.5], dtype=np.float32), "ssn": ["123"]},
    ).written


def _write_count(client: FeatureClient, view: str, feature: str, user: str) -> int:
    return client.write_features(
        view,
        entities={"user_id": [user]},
        event_timestamps_us=[defs.now_us()],
        features={feature: np.array([3], dtype=np.int64)},
    ).written


def test_reads_refused_name_principal_and_view(
    ranker: FeatureClient, writer: FeatureClient, ids: Ids
) -> None:
    user = ids("u")
    assert ranker.get_features(["secret:score", "profile:age"], {"user_id": [user]}).rows == 1
    with pytest.raises(PermissionDenied, match=f"principal '{RANKER}'.*features \\['ssn'\\]"):
        ranker.get_features(["secret:ssn"], {"user_id": [user]})
    with pytest.raises(PermissionDenied, match="'secret@v1'"):
        ranker.get_features(["secret:*"], {"user_id": [user]})  # * includes ssn
    with pytest.raises(PermissionDenied, match=f"principal '{WRITER}' may not read view 'secret"):
        writer.get_features(["profile:age", "secret:score"], {"user_id": [user]})
    # A transform reading a view the caller may not read is refused too, naming both.
    with pytest.raises(PermissionDenied, match=r"'secret@v1'.*on-demand transform 'double'"):
        writer.get_features(["double:doubled"], {"user_id": [user]})
    assert ranker.get_features(["double:doubled"], {"user_id": [user]}).rows == 1


def test_writes_follow_the_policy(ranker: FeatureClient, writer: FeatureClient, ids: Ids) -> None:
    user = ids("u")
    assert _write_secret(writer, user) == 1
    with pytest.raises(PermissionDenied, match=f"principal '{RANKER}' may not write view"):
        _write_secret(ranker, user)
    # profile declares no policy: the repo default lets any authenticated caller write it.
    written = defs.write_profiles(ranker, [user], ages=[30])
    assert written.written == 1


def test_list_features_shows_what_the_caller_may_read(
    ranker: FeatureClient, writer: FeatureClient
) -> None:
    ranked = ranker.list_features()
    views = {v.name: [f.name for f in v.features] for v in ranked.views}
    assert views["secret"] == ["score"]  # ssn hidden
    assert [t.name for t in ranked.on_demand] == ["double"]
    written = writer.list_features()
    assert "secret" not in {v.name for v in written.views}
    assert {"profile", "click_counts"} <= {v.name for v in written.views}
    assert not written.on_demand  # double reads secret


def test_computed_views_refuse_writes(stack: AuthStack, ranker: FeatureClient, ids: Ids) -> None:
    user = ids("u")
    with pytest.raises(PermissionDenied, match="'click_counts@v1' is computed by the stream"):
        _write_count(ranker, "click_counts", "clicks_7d", user)
    with stack.mtls_client(stack.pki.client(cn=PIPELINE)) as pipeline:
        assert _write_count(pipeline, "piped_counts", "clicks_1d", user) == 1
        with pytest.raises(PermissionDenied, match="computed by the stream"):
            _write_count(pipeline, "click_counts", "clicks_7d", user)  # not named there
    # Authentication off: anything but a computed view is writable, as before.
    with FeatureClient(stack.off.address, timeout=5.0) as anonymous:
        assert _write_secret(anonymous, user) == 1
        with pytest.raises(PermissionDenied, match="from an anonymous caller is refused"):
            _write_count(anonymous, "piped_counts", "clicks_1d", user)


def test_lineage_records_the_principal(stack: AuthStack, ranker: FeatureClient) -> None:
    ranker.get_features(["secret:score"], {"user_id": ["lineage"]})
    server = stack.mtls.server
    expected = f"{RANKER} (ranker/3.2)"

    def recorded() -> bool:
        stack.mtls.run(server.telemetry.consumers.flush(server.store, timeout=5.0))
        seen = stack.mtls.run(consumers.read(server.store.cluster))
        return any(c.caller == expected and c.view == "secret@v1" for c in seen)

    wait_until(recorded, 30, f"consumers to record {expected!r}", interval=0.1)


REPO = """
from featurewell.definitions import Access, Entity, Feature, FeatureView, Int64, String

user = Entity("user", join_keys={"user_id": String})
gated = FeatureView(
    "gated", entity=user, features=[Feature("x", Int64)], access=Access(read=[READERS])
)
"""


def test_a_reload_brings_the_new_policy(
    stack: AuthStack, cluster: LocalCluster, tmp_path: Path
) -> None:
    repo = tmp_path / "repo.py"
    repo.write_text(REPO.replace("READERS", repr("someone-else")))
    folder = stack.pki.folder
    settings = make_settings(
        cluster,
        repo=str(repo),
        tls_cert_file=str(folder / "server.crt"),
        tls_key_file=str(folder / "server.key"),
        tls_client_ca_file=str(folder / "ca.crt"),
        auth_required=True,
    )
    server = ServerThread(settings, None)
    try:
        options = ClientOptions(
            tls=stack.pki.roots, client_cert=stack.ranker_cert[0], client_key=stack.ranker_cert[1]
        )
        with FeatureClient(f"localhost:{server.server.port}", options=options) as client:
            with pytest.raises(PermissionDenied, match="may not read view 'gated@v1'"):
                client.get_features(["gated:x"], {"user_id": ["u"]})
            repo.write_text(REPO.replace("READERS", repr(RANKER)))
            assert server.run(server.server.reload()) is True
            assert client.get_features(["gated:x"], {"user_id": ["u"]}).rows == 1
    finally:
        server.stop()


def test_lineage_names_the_principal_and_the_model_within_it() -> None:
    header = [("x-featurewell-model", "ranker/3.2"), ("traceparent", "t")]
    assert consumers.as_principal(header, None) == header  # auth off: as before
    assert list(consumers.as_principal(header, "svc")) == [
        ("x-featurewell-model", "svc (ranker/3.2)"),
        ("traceparent", "t"),
    ]
    assert list(consumers.as_principal([], "svc")) == [("x-featurewell-model", "svc")]


def test_grants_resolve_teams_defaults_and_are_cached_per_registry() -> None:
    registry = auth_tools.registry()
    ranker = grants(registry, RANKER)
    assert ("secret", 1) in ranker.readable
    assert ("secret", 1) not in ranker.writable
    assert ranker.hidden == {("secret", 1): frozenset({"ssn"})}
    assert ("click_counts", 1) not in grants(registry, "*").writable  # '*' names nobody
    closed = Registry.build(
        [defs.user, defs.profile, Team("ops", members=["a"]), DefaultAccess(read=["team:ops"])]
    )
    assert ("profile", 2) in grants(closed, "a").readable
    assert ("profile", 2) not in grants(closed, "b").readable
    authoriser = Authoriser(enforce=True)
    with pytest.raises(Unauthenticated):  # fails closed should an anonymous call get here
        authoriser.check_read(registry, None, ["profile:age"])
    first = authoriser.grants(registry, RANKER)
    assert authoriser.grants(registry, RANKER) is first
    assert authoriser.grants(auth_tools.registry(), RANKER) is not first  # a reload


def test_policy_definitions_are_checked() -> None:
    with pytest.raises(DefinitionError, match="teams \\['risk'\\] that the repo does not"):
        Registry.build([defs.user, _view(Access(read=["team:risk"]))])
    with pytest.raises(DefinitionError, match="features \\['nope'\\] the view does not have"):
        _view(Access(features={"nope": ["a"]}))
    with pytest.raises(DefinitionError, match="takes a list of principals"):
        Access(read="team:risk")
    with pytest.raises(DefinitionError, match="DefaultAccess twice"):
        Registry.build([defs.user, _view(None), DefaultAccess(), DefaultAccess()])
    with pytest.raises(DefinitionError, match="members are principals"):
        Team("t", members=["*"])


def _view(access: Access | None) -> FeatureView:
    return FeatureView("guarded", entity=defs.user, features=[Feature("x", Int64)], access=access)
