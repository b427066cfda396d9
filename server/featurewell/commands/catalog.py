"""People's verbs: `get` and `list` ask a running server through the client (as a model would,
under the same permissions); `impact` and `unused` read the consumer counts servers keep in
Redis (docs/lifecycle.md)."""

from __future__ import annotations

import argparse
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from featurewell.app import connected
from featurewell.client import ClientOptions, FeatureClient, FeatureClientError, ViewStatus
from featurewell.commands import _tables
from featurewell.commands._command import Command, number, registry_of, run
from featurewell.errors import ConfigError, FeaturewellError
from featurewell.lifecycle import impact as impacts
from featurewell.settings import RedisSettings, Settings
from featurewell.v1 import feature_service_pb2 as pb


class ServerRefused(FeaturewellError):
    """The server answered with an error (the CLI prints it and exits 2)."""


def _client_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--server", default="127.0.0.1:50051", help="host:port of a server")
    parser.add_argument("--tls", action="store_true", help="TLS with the system's roots")
    parser.add_argument("--ca-file", type=Path, help="TLS, trusting this PEM CA instead")
    parser.add_argument("--cert-file", type=Path, help="PEM client certificate (mTLS)")
    parser.add_argument("--key-file", type=Path, help="PEM private key of --cert-file")
    parser.add_argument("--token-file", type=Path, help="a file holding a bearer token")
    parser.add_argument(
        "--caller", default="featurewell-cli", help="the name calls carry (x-featurewell-model)"
    )
    parser.add_argument(
        "--timeout", type=number(positive=True), default=5.0, help="seconds per call"
    )
    parser.add_argument("--json", action="store_true", help="machine-readable output")


def _client(args: argparse.Namespace) -> FeatureClient:
    """A client with the client's own options (ClientOptions), from the flags."""
    tls: bool | bytes = _read(args.ca_file) if args.ca_file is not None else args.tls
    if (args.cert_file is None) != (args.key_file is None):
        raise ConfigError("--cert-file and --key-file go together (mTLS)")
    token = _read(args.token_file).decode().strip() if args.token_file is not None else None
    try:
        options = ClientOptions(
            tls=tls or args.cert_file is not None,
            caller=args.caller,
            timeout=args.timeout,
            client_cert=_read(args.cert_file) if args.cert_file is not None else None,
            client_key=_read(args.key_file) if args.key_file is not None else None,
            token=token or None,
        )
        return FeatureClient(args.server, options=options)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None


def _get_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--features",
        required=True,
        help="comma-separated references: 'view:feature', 'view:*', 'view@v2:f', 'transform:*'",
    )
    parser.add_argument(
        "--entity",
        action="append",
        required=True,
        metavar="KEY=V1[,V2...]",
        help="an entity key column, e.g. user_id=u1 (repeat for more keys; one value broadcasts)",
    )
    _client_arguments(parser)


def entity_columns(items: list[str], key_types: Mapping[str, int]) -> dict[str, list[Any]]:
    """`user_id=u1`, `item_id=i1,i2` as key columns, typed as the server's catalog says."""
    columns: dict[str, list[Any]] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key or not raw:
            raise ConfigError(f"--entity takes KEY=VALUE[,VALUE...], got {item!r}")
        values: list[Any] = raw.split(",")
        if key_types.get(key) == pb.VALUE_TYPE_INT64:
            try:
                values = [int(v) for v in values]
            except ValueError:
                raise ConfigError(f"--entity {key}: the key is an integer, got {raw!r}") from None
        columns[key] = values
    return columns


def _get(_settings: Settings, args: argparse.Namespace) -> None:
    features = [f.strip() for f in args.features.split(",") if f.strip()]
    with _client(args) as client:
        try:
            catalog = client.list_features()
            key_types = {
                key: kind
                for entity in catalog.entities
                for key, kind in zip(entity.join_keys, entity.key_types, strict=True)
            }
            entities = entity_columns(args.entity, key_types)
            result = client.get_features(features, entities, include_event_timestamps=True)
        except FeatureClientError as exc:
            raise ServerRefused(f"{args.server}: {exc}") from None
    now = time.time()
    shown = _tables.get_json if args.json else _tables.get_table
    print(shown(result, entities, now))


def _list_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--owner", default="", help="views owned by exactly this owner")
    parser.add_argument("--tag", default="", help="views with this tag: KEY or KEY=VALUE")
    parser.add_argument("--entity", default="", help="views of this entity (e.g. user)")
    parser.add_argument("--prefix", default="", help="views whose name starts with this")
    parser.add_argument(
        "--status",
        choices=[s.name.lower() for s in ViewStatus],
        help="views in this status",
    )
    _client_arguments(parser)


def _list(_settings: Settings, args: argparse.Namespace) -> None:
    status = ViewStatus[args.status.upper()] if args.status else 0
    with _client(args) as client:
        try:
            catalog = client.list_features(
                owner=args.owner,
                tag=args.tag,
                entity=args.entity,
                name_prefix=args.prefix,
                status=status,
            )
        except FeatureClientError as exc:
            raise ServerRefused(f"{args.server}: {exc}") from None
    print(_tables.list_json(catalog) if args.json else _tables.list_table(catalog))


def _impact_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("view", metavar="VIEW[@vN]", help="a view (all versions) or one version")
    parser.add_argument("--days", type=int, default=30, help="the window, in UTC days")
    parser.add_argument("--json", action="store_true", help="machine-readable output")


def _impact(settings: Settings, args: argparse.Namespace) -> None:
    registry = registry_of(settings)
    impacts.targets(registry, args.view)  # a bad reference fails before connecting
    impacts.window(args.days)

    async def read() -> impacts.Impact:
        async with connected(settings.redis) as store:
            return await impacts.impact(store.cluster, registry, args.view, args.days)

    report = run(read())
    print(impacts.impact_json(report) if args.json else impacts.render_impact(report))


def _unused_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--days", type=int, default=30, help="the window, in UTC days")


def _unused(settings: Settings, args: argparse.Namespace) -> None:
    registry = registry_of(settings)
    impacts.window(args.days)

    async def read() -> list[str]:
        async with connected(settings.redis) as store:
            return await impacts.unused(store.cluster, registry, args.days)

    print(impacts.render_unused(run(read()), registry, args.days))


COMMANDS = (
    Command(
        "get",
        "read features from a running server: a table with statuses and ages (--json)",
        _get,
        (),
        _get_arguments,
        repo=False,
    ),
    Command(
        "list",
        "the server's catalog: views with status, owner, SLA, tags (filters; --json)",
        _list,
        (),
        _list_arguments,
        repo=False,
    ),
    Command(
        "impact",
        "who read VIEW[@vN] in the last --days days, and how much",
        _impact,
        (RedisSettings,),
        _impact_arguments,
    ),
    Command(
        "unused",
        "view versions nobody read in the last --days days",
        _unused,
        (RedisSettings,),
        _unused_arguments,
    ),
)
