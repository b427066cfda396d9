"""`featurewell ui`: the read-only web UI over a repo, its Redis Cluster and its servers'
/metrics (docs/ui.md)."""

from __future__ import annotations

import argparse
import socket

import uvicorn

from featurewell.commands._command import Command, number, registry_of, run
from featurewell.errors import ConfigError
from featurewell.settings import AuthSettings, RedisSettings, Settings
from featurewell.ui.app import build


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--metrics-url",
        action="append",
        default=[],
        metavar="URL",
        help="a server's /metrics (repeat for every replica); the health page reads them",
    )
    parser.add_argument("--host", default="127.0.0.1", help="where the UI listens")
    parser.add_argument("--port", type=int, default=8080, help="0: any free port")
    parser.add_argument(
        "--scrape-s", type=number(positive=True), default=5.0, help="how often to read /metrics"
    )


def _ui(settings: Settings, args: argparse.Namespace) -> None:
    if args.scrape_s <= 0:
        raise ConfigError(f"--scrape-s must be positive, got {args.scrape_s}")
    app = build(
        registry_of(settings), settings.redis, settings.auth, args.metrics_url, args.scrape_s
    )
    config = uvicorn.Config(app, host=args.host, port=args.port, log_level="warning", lifespan="on")
    # Bound here, so the address (the port chosen for --port 0) is printed before serving;
    # connections wait in the backlog until uvicorn takes them.
    sock = socket.create_server((args.host, args.port))
    host, port = sock.getsockname()[:2]
    print(f"featurewell ui: serving on http://{host}:{port}/", flush=True)
    run(uvicorn.Server(config).serve(sockets=[sock]))


COMMANDS = (
    Command(
        "ui",
        "the read-only web UI: catalog, view pages, live health from /metrics",
        _ui,
        (RedisSettings, AuthSettings),
        _arguments,
    ),
)
