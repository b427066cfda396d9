"""Redis ACL roles (store/acl.py): globs that follow store/keys.py, and each role against a real
Redis Cluster whose nodes load the users from an aclfile `featurewell redis-acl` printed."""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import redirect_stdout
from dataclasses import dataclass
from fnmatch import fnmatchcase
from io import StringIO
from pathlib import Path

import grpc
import pytest

from featurewell.app import open_store
from featurewell.cli import main
from featurewell.client import ClientOptions, FeatureClient, FeatureClientError
from featurewell.definitions import EventSource, Int64, Registry, String
from featurewell.devcluster import LocalCluster, call, start_local_cluster
from featurewell.errors import ConfigError, StorePermissionDenied, StoreUnavailable
from featurewell.lifecycle import defaults
from featurewell.lifecycle.repair import repair_view
from featurewell.settings import RedisSettings, Settings
from featurewell.store import acl
from featurewell.store import consumers as stored_consumers
from featurewell.store.keys import (
    CONSUMER_CALLS_KEY,
    CONSUMER_SEEN_KEY,
    DEFAULTS_KEY,
    DEFAULTS_LOG_KEY,
    Family,
    consumer_day_key,
    dead_letters_key,
    families_of,
    freshness_key,
    key_prefix,
    state_prefix,
    stream_keys,
    watermarks_key,
)
from featurewell.telemetry.consumers import read as read_consumers
from tests import defs
from tests.tools import ServerThread, make_settings, wait_until

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "streaming_media"
SOURCE = EventSource("watches", keys={"user_id": String}, fields={"n": Int64}, partitions=3)


def _sample_keys() -> dict[str, list[bytes]]:
    """Keys of every family, built by keys.py itself."""
    view = defs.profile
    tag = b"u%7B1%7D|42"
    return {
        "row": [key_prefix(view) + tag + b"}", key_prefix(defs.item_stats) + b"7}"],
        "state": [state_prefix(view) + tag + b"}"],
        "marker": [freshness_key(view), freshness_key(defs.item_stats)],
        "defaults": [DEFAULTS_KEY],
        "defaults_log": [DEFAULTS_LOG_KEY],
        "consumer_calls": [CONSUMER_CALLS_KEY],
        "consumer_seen": [CONSUMER_SEEN_KEY],
        "consumer_days": [consumer_day_key("20261204")],
        "watermarks": [watermarks_key(SOURCE, "g:1"), watermarks_key(SOURCE, "stream")],
        "events": [key.encode() for key in stream_keys(SOURCE)],
        "dead_letters": [dead_letters_key(SOURCE).encode()],
    }


def test_each_glob_matches_its_family_and_no_other() -> None:
    samples = _sample_keys()
    assert set(samples) == set(acl.GLOBS)  # a family added to keys.py needs samples here
    for family, keys in samples.items():
        for key in keys:
            assert [f.name for f, _ in families_of(key)] == [family], key
            matched = [name for name, glob in acl.GLOBS.items() if fnmatchcase(key.decode(), glob)]
            assert matched == [family], (key, matched)


def test_the_one_documented_overlap() -> None:
    # A row of a view named `events` also matches the events glob (globs cannot say "no '{'"):
    # a role that writes events may write that view's rows. Every role that writes events
    # writes rows anyway.
    key = b"fw:events:v1:{u1}"
    assert fnmatchcase(key.decode(), acl.GLOBS["events"])
    assert all("row" in role.writes for role in acl.ROLES.values() if "events" in role.writes)


def test_a_key_layout_the_translation_does_not_know_is_refused() -> None:
    family = Family("odd", re.compile(rb"fw:(?P<view>\w+):x"))
    with pytest.raises(acl.UntranslatableKey, match=r"odd: no ACL glob for '\(\?P<view>"):
        acl.glob_of(family)


def test_rules_grant_reads_read_only_and_never_in_clear(tmp_path: Path) -> None:
    (tmp_path / "pw").write_text("s3cret\n")
    output = _redis_acl(
        "--role", "server", "--user", "fw-server", "--password-file", str(tmp_path / "pw")
    )
    assert output.startswith("ACL SETUSER fw-server reset on #")
    assert "s3cret" not in output
    assert "%R~fw:[a-z]*:v[0-9]*:{*}" in output.split()  # rows: read only
    assert "~fw:{_meta}:consumers" in output.split()  # its consumer counts: read and write
    assert "+evalsha" not in output
    assert "+lpush" not in output


def test_the_documented_rules_are_the_generated_ones() -> None:
    doc = (
        Path(__file__).resolve().parents[1] / "docs" / "security" / "redis-and-deploy.md"
    ).read_text()
    for role in acl.ROLES.values():
        line = acl.setuser(f"fw-{role.name}", [role], None)
        assert line in doc.splitlines(), f"docs/security/redis-and-deploy.md: update {line!r}"


def test_settings_refuse_two_passwords() -> None:
    with pytest.raises(ConfigError, match="redis_password and redis_password_file"):
        Settings.load(environ={}).with_changes(redis_password="a", redis_password_file="/x")


# -- a real cluster with ACL users ------------------------------------------------------------

PASSWORDS = {"fw-server": "server-pw", "fw-writer": "writer-pw", "fw-admin": "admin-pw"}
SERVING_WRITER = "fw-serve-write"  # a serving fleet that takes WriteFeatures: server + writer


@dataclass
class AclCluster:
    cluster: LocalCluster
    folder: Path

    def settings(self, user: str, password: str | None = None, **changes: object) -> Settings:
        secret = self.folder / f"{user}.password"
        secret.write_text((password or PASSWORDS.get(user, "both-pw")) + "\n")
        return make_settings(
            self.cluster, redis_username=user, redis_password_file=str(secret), **changes
        )


def _redis_acl(*args: str) -> str:
    out = StringIO()
    with redirect_stdout(out):
        main(["redis-acl", *args])
    return out.getvalue().strip()


@pytest.fixture(scope="module")
def acl_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AclCluster]:
    folder = tmp_path_factory.mktemp("acl")
    lines = []
    for user, password in [*PASSWORDS.items(), (SERVING_WRITER, "both-pw")]:
        (folder / "pw").write_text(password)
        roles = ["server", "writer"] if user == SERVING_WRITER else [user.removeprefix("fw-")]
        role_args = [arg for role in roles for arg in ("--role", role)]
        lines.append(
            _redis_acl(
                *role_args,
                "--user",
                user,
                "--password-file",
                str(folder / "pw"),
                "--format",
                "aclfile",
            )
        )
    # `default` stays open: devcluster administers the nodes through it.
    (folder / "users.acl").write_text(
        "\n".join(["user default on nopass ~* &* +@all", *lines]) + "\n"
    )
    with start_local_cluster(masters=3, aclfile=folder / "users.acl") as running:
        yield AclCluster(running, folder)


@pytest.mark.redis
def test_server_user_reads_but_cannot_write_or_promote(
    acl_cluster: AclCluster, registry: Registry
) -> None:
    both = ServerThread(acl_cluster.settings(SERVING_WRITER), registry)
    reader = ServerThread(acl_cluster.settings("fw-server", cache_entries=1000), registry)
    try:
        with FeatureClient(both.address, timeout=5.0) as client:
            assert defs.write_profiles(client, ["acl-u1"], ages=[33]).written == 1
        with FeatureClient(reader.address, timeout=5.0) as client:
            for _ in range(3):  # twice more, so the hot-key cache (tracking) holds the row
                result = client.get_features(["profile:age"], entities={"user_id": ["acl-u1"]})
                assert result.to_numpy()[0].tolist() == [[33.0]]
            with pytest.raises(FeatureClientError) as refused:
                defs.write_profiles(client, ["acl-u2"], ages=[1])
        assert refused.value.code is grpc.StatusCode.FAILED_PRECONDITION
        assert "NOPERM" in str(refused.value)
        assert "'evalsha'" in str(refused.value)
        assert "redis_username" in str(refused.value)
        # The server records its callers (a bounded script) with its own user too.
        telemetry = reader.server.telemetry
        wait_until(lambda: telemetry.consumers.pending > 0, 30.0, "the reads observed")
        reader.run(telemetry.consumers.flush(reader.server.store, timeout=5.0))  # no NOPERM
        recorded = reader.run(read_consumers(reader.server.store.cluster))
        assert sum(c.calls for c in recorded if c.view.startswith("profile@")) >= 1
        with pytest.raises(StorePermissionDenied, match="NOPERM"):
            reader.run(defaults.promote(reader.server.store.cluster, registry, "profile", 1))
    finally:
        reader.stop()
        both.stop()


@pytest.mark.redis
async def test_writer_writes_admin_promotes(acl_cluster: AclCluster, registry: Registry) -> None:
    writer = await open_store(acl_cluster.settings("fw-writer").redis)
    admin = await open_store(acl_cluster.settings("fw-admin").redis)
    server = await open_store(acl_cluster.settings("fw-server").redis)
    try:
        with pytest.raises(StorePermissionDenied, match="NOPERM"):
            await defaults.promote(writer.cluster, registry, "profile", 1)
        change = await defaults.promote(admin.cluster, registry, "profile", 1)
        assert (change.previous, change.current) == (2, 1)
        assert await defaults.promoted(server.cluster) == {"profile": 1}  # servers follow it
        await defaults.rollback(admin.cluster, registry, "profile")
        assert await defaults.promoted(server.cluster) == {"profile": 2}
    finally:
        for store in (writer, admin, server):
            await store.close()


@pytest.mark.redis
def test_writer_materializes_the_example_repo(
    acl_cluster: AclCluster, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Batch writes as the pipelines do them: rows through the Lua script, markers, computed
    # views from the event log (the example repo with a little generated data).
    repo = tmp_path / "repo"
    shutil.copytree(EXAMPLE, repo)
    generate = [sys.executable, str(EXAMPLE / "generate.py"), "--users", "40", "--items", "20"]
    subprocess.run([*generate, "--out", str(repo / "data")], check=True, capture_output=True)
    settings = acl_cluster.settings("fw-writer")
    seeds = ",".join(f"{h}:{p}" for h, p in acl_cluster.cluster.seeds)
    login = ["--redis", seeds, "--redis-username", "fw-writer"]
    login += ["--redis-password-file", settings.redis.password_file]
    main(["materialize", "--repo", str(repo), *login])
    assert "user_activity@v1: 40 rows computed from watches" in capsys.readouterr().out


@pytest.mark.redis
def test_server_user_records_consumers_in_total_and_per_day(
    acl_cluster: AclCluster, registry: Registry
) -> None:
    """The consumers flush is one EVAL: the server role must be allowed to run it (and the
    EXPIRE of the per-day hash inside it), or `lineage`, `impact` and `unused` see nothing."""
    server = ServerThread(acl_cluster.settings("fw-server", consumers_flush_s=0.1), registry)
    caller = f"acl-reader/{uuid.uuid4().hex[:8]}"
    try:
        options = ClientOptions(caller=caller, timeout=5.0)
        with FeatureClient(server.address, options=options) as client:
            client.get_features(["profile:age"], entities={"user_id": ["acl-u9"]})

        async def counted() -> tuple[int, int]:
            admin = await open_store(acl_cluster.settings("fw-admin").redis)
            try:
                totals = await stored_consumers.read(admin.cluster, 5.0)
                days = await stored_consumers.read_days(
                    admin.cluster, [stored_consumers.today()], 5.0
                )
            finally:
                await admin.close()
            pair = (caller, "profile@v2")
            return totals.get(pair, (0, 0))[0], days.get(pair, 0)

        wait_until(lambda: asyncio.run(counted()) == (1, 1), 10, "the server's consumers flush")
    finally:
        server.stop()


# What each role may do beyond what the tests above run: (role, command, allowed).
_DRYRUN = [
    ("fw-writer", ["XADD", "fw:events:watches:1", "*", "a", "1"], True),
    ("fw-writer", ["XREADGROUP", "GROUP", "g", "c", "STREAMS", "fw:events:watches", ">"], True),
    ("fw-writer", ["XACK", "fw:events:watches", "g", "1-1"], True),
    ("fw-writer", ["XAUTOCLAIM", "fw:events:watches", "g", "c", "1000", "0", "JUSTID"], True),
    ("fw-writer", ["SET", "fw:_agg:profile:v2:{u1}", "x"], True),
    ("fw-writer", ["SET", "fw:{_stream}:watches:g:watermarks", "{}"], True),
    ("fw-writer", ["HSET", "fw:{_meta}:defaults", "profile", "1"], False),
    ("fw-writer", ["FLUSHALL"], False),
    ("fw-server", ["MGET", "fw:profile:v2:{u1}", "fw:item_stats:v1:{u1}"], True),
    ("fw-server", ["HINCRBY", "fw:{_meta}:consumers", "m|profile@v2", "1"], True),
    ("fw-server", ["HMGET", "fw:{_meta}:profile:v2", "newest_event_us", "written_us"], True),
    ("fw-server", ["EVAL", "return 1", "1", "fw:{_meta}:consumers:day:20261204"], True),
    ("fw-server", ["EXPIRE", "fw:{_meta}:consumers:day:20261204", "60"], True),
    ("fw-server", ["EXPIRE", "fw:profile:v2:{u1}", "60"], False),
    ("fw-server", ["EVAL", "return 1", "1", "fw:profile:v2:{u1}"], False),
    ("fw-server", ["HGETALL", "fw:{_meta}:defaults"], True),
    ("fw-server", ["SUBSCRIBE", "__redis__:invalidate"], True),
    ("fw-server", ["SUBSCRIBE", "other"], False),
    ("fw-server", ["HSET", "fw:{_meta}:profile:v2", "written_us", "1"], False),
    ("fw-server", ["SET", "fw:profile:v2:{u1}", "x"], False),
    ("fw-server", ["GET", "fw:_agg:profile:v2:{u1}"], False),
    ("fw-server", ["XREADGROUP", "GROUP", "g", "c", "STREAMS", "fw:events:watches", ">"], False),
    ("fw-server", ["KEYS", "*"], False),
    ("fw-admin", ["LPUSH", "fw:{_meta}:defaults:log", "x"], True),
    ("fw-admin", ["SCAN", "0", "MATCH", "fw:profile:v2:{*"], True),
    ("fw-admin", ["SET", "fw:profile:v2:{u1}", "x"], False),
    ("fw-admin", ["HSET", "fw:{_meta}:consumers", "x", "1"], False),
    ("fw-admin", ["HGETALL", "fw:{_meta}:consumers:day:20261204"], True),
]


@pytest.mark.redis
@pytest.mark.parametrize(("user", "command", "allowed"), _DRYRUN)
def test_role_permissions(
    acl_cluster: AclCluster, user: str, command: list[str], allowed: bool
) -> None:
    reply = call(acl_cluster.cluster.masters[0], "ACL", "DRYRUN", user, *command)
    assert (reply == b"OK") is allowed, reply


@pytest.mark.redis
async def test_wrong_password_is_a_clear_start_up_error(
    acl_cluster: AclCluster, registry: Registry
) -> None:
    settings = acl_cluster.settings("fw-server", "not-the-password", connect_timeout_s=1.0)
    with pytest.raises(
        StoreUnavailable, match=r"refused the password of user 'fw-server'.*WRONGPASS"
    ):
        await open_store(settings.redis)
    missing = make_settings(acl_cluster.cluster, redis_password_file="/nonexistent/pw")
    with pytest.raises(StoreUnavailable, match="cannot read redis_password_file /nonexistent/pw"):
        await open_store(missing.redis)


@pytest.mark.redis
async def test_a_rotated_password_is_read_again_on_reconnect(acl_cluster: AclCluster) -> None:
    user = "fw-rotate"
    for port in acl_cluster.cluster.masters:
        call(
            port,
            "ACL",
            "SETUSER",
            user,
            *acl.setuser(user, [acl.ROLES["admin"]], "old").split()[3:],
        )
    settings = acl_cluster.settings(user, "old")
    store = await open_store(settings.redis)
    try:
        before = await defaults.promoted(store.cluster)
        # Rotation: the Secret file changes, Redis gets the new password and drops the old one,
        # then connections are cut (a node restart, a failover, or CLIENT KILL USER).
        await asyncio.to_thread(Path(settings.redis.password_file).write_text, "new\n")
        for port in acl_cluster.cluster.masters:
            call(port, "ACL", "SETUSER", user, "resetpass", ">new")
            call(port, "CLIENT", "KILL", "USER", user)
        await asyncio.sleep(0.05)
        assert await defaults.promoted(store.cluster) == before  # reconnected with the new one
    finally:
        await store.close()


def test_node_access_repr_hides_the_password() -> None:
    from featurewell.app import node_access

    shown = repr(node_access(RedisSettings(username="u", password="pw-in-clear")))
    assert "***" in shown
    assert "pw-in-clear" not in shown


@pytest.mark.redis
async def test_only_admin_repairs(acl_cluster: AclCluster, registry: Registry) -> None:
    """`featurewell repair` deletes rows: an operator's act, not a server's or a pipeline's."""
    view = registry.view("profile")
    entities = {"user_id": ["acl-repair"]}
    admin = await open_store(acl_cluster.settings("fw-admin").redis)
    others = [
        await open_store(acl_cluster.settings(user).redis) for user in ("fw-server", "fw-writer")
    ]
    try:
        for store in others:
            with pytest.raises(StorePermissionDenied, match="NOPERM"):
                await repair_view(store.cluster, view, entities, 300.0)
        done = await repair_view(admin.cluster, view, entities, 300.0)
        assert done.rows == []  # nothing poisoned, but allowed to look
        assert not done.dry_run
    finally:
        for store in (admin, *others):
            await store.close()
