"""One multiplexed connection to one Redis node.

Calls write pre-encoded RESP commands straight to the socket and wait on a future; replies are
parsed by hiredis in `data_received` and handed out in order. Concurrent calls share the
connection (their batches are pipelined back to back), so there are no per-command objects and
no pool checkout on the hot path: this is where redis-py's per-command cost (~15-20 µs a key on
these machines) is avoided.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

import hiredis

from featurewell.errors import StoreError, StorePermissionDenied, StoreUnavailable

Address = tuple[str, int]


@dataclass(frozen=True)
class NodeAccess:
    """How to reach a node: AUTH credentials and TLS context (None: plaintext). Shared by every
    connection, data and invalidation alike. With `password_file`, the password is read from it
    at every connect, so a rotated Secret is picked up by the next reconnect, no restart."""

    password: str = ""
    tls: ssl.SSLContext | None = None
    username: str = ""  # an ACL user; "" is Redis's `default` user (AUTH <password> alone)
    password_file: str = ""

    def __repr__(self) -> str:  # never the password
        hidden = "***" if self.password or self.password_file else ""
        return (
            f"NodeAccess(username={self.username!r}, password={hidden!r}, "
            f"tls={self.tls is not None})"
        )

    def auth_command(self) -> tuple[str, ...] | None:
        """AUTH's arguments (None: no AUTH). Raises StoreUnavailable when the password file
        cannot be read: a Secret not mounted yet is a connect failure like any other."""
        password = self.password
        if self.password_file:
            try:
                with open(self.password_file, encoding="utf-8") as file:
                    password = file.read().rstrip("\r\n")  # a Secret file may end in a newline
            except OSError as exc:
                raise StoreUnavailable(
                    f"cannot read redis_password_file {self.password_file}: {exc.strerror}"
                ) from exc
        if not password:
            return None
        return ("AUTH", self.username, password) if self.username else ("AUTH", password)


# Redis refuses a command an ACL user may not run with an error reply starting "NOPERM"; this is
# the one place that reads it, so every path says the same thing: which permission is missing,
# and that it is this process's Redis user (a deployment problem), not the caller, that lacks it.
_NOPERM = "NOPERM"


def refusal(what: str, reply: object) -> StoreError:
    """The error for an error `reply` Redis gave to `what` ("cannot promote view x"):
    StorePermissionDenied for an ACL refusal (NOPERM), StoreUnavailable for anything else."""
    text = f"{reply!s:.300}"
    if text.startswith(_NOPERM):
        return StorePermissionDenied(
            f"{what}: this process's Redis user may not do it (Redis said: {text}); run it with "
            "a redis_username whose role allows it (see `featurewell redis-acl --help`)"
        )
    return StoreUnavailable(f"{what}: {text}")


def encode_command(*args: bytes | str | int) -> bytes:
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        raw = arg.encode() if isinstance(arg, str) else b"%d" % arg if isinstance(arg, int) else arg
        parts.append(b"$%d\r\n%s\r\n" % (len(raw), raw))
    return b"".join(parts)


class _Batch:
    __slots__ = ("future", "remaining", "replies", "whole")

    def __init__(self, future: asyncio.Future[list[Any]], count: int) -> None:
        self.future = future
        self.remaining = count
        self.replies: list[Any] = []
        self.whole = False  # its replies are read as one array (see `Connection._wrap`)


class Connection(asyncio.Protocol):
    """A pipelined, multiplexed RESP2 connection. Error replies come back as
    `hiredis.ReplyError` values in the reply list; they are never raised here."""

    def __init__(self, address: Address) -> None:
        self.address = address
        self._reader = hiredis.Reader()
        self._pending: deque[_Batch] = deque()
        self._transport: asyncio.Transport | None = None
        self._loop = asyncio.get_running_loop()
        self.closed = False
        # Whether the reader has parsed every byte fed to it, up to the end of a reply: the
        # next byte from the socket starts the next batch's replies.
        self._between = True
        # A subscriber connection receives messages nobody asked for; they go here.
        self.on_message: Callable[[Any], None] | None = None
        self.on_lost: Callable[[], None] | None = None

    @classmethod
    async def open(
        cls, address: Address, timeout: float, access: NodeAccess | None = None
    ) -> Connection:
        """Connect (over TLS, and AUTH, as `access` says) within `timeout` seconds."""
        host, port = address
        access = access or NodeAccess()
        loop = asyncio.get_running_loop()
        command = access.auth_command()  # before connecting: a missing file leaks nothing
        try:
            async with asyncio.timeout(timeout):
                _, protocol = await loop.create_connection(
                    lambda: cls(address),
                    host,
                    port,
                    ssl=access.tls,
                    server_hostname=host if access.tls is not None else None,
                )
                reply = await protocol.call(*command) if command else b"OK"
        except ssl.SSLError as exc:
            raise StoreUnavailable(
                f"TLS to Redis node {host}:{port} failed ({exc.reason or exc}); check the "
                "redis_tls_* settings (CA file, client certificate, host name check)"
            ) from exc
        except (OSError, TimeoutError) as exc:
            raise StoreUnavailable(f"cannot connect to Redis node {host}:{port}: {exc}") from exc
        if reply != b"OK":
            protocol.close()
            user = f"user {access.username!r}" if access.username else "the default user"
            raise StoreUnavailable(
                f"Redis node {host}:{port} refused the password of {user} ({reply!s:.200}); check "
                "redis_username and the password (FEATUREWELL_REDIS_PASSWORD or "
                "redis_password_file)"
            )
        return protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def send(self, payload: bytes, replies: int) -> asyncio.Future[list[Any]]:
        """Write `payload` (`replies` commands) and return a future of their replies in order."""
        if self.closed or self._transport is None:
            raise StoreUnavailable(f"connection to Redis node {self._name} is closed")
        future: asyncio.Future[list[Any]] = self._loop.create_future()
        batch = _Batch(future, replies)
        self._pending.append(batch)
        if self._between:
            self._wrap(batch)
        self._transport.write(payload)
        return future

    def _wrap(self, batch: _Batch) -> None:
        """Make hiredis read `batch`'s replies as one array, in one `gets` call, by feeding an
        array header of their count first: a 500-command batch is then parsed in C instead of
        500 `gets` calls and list appends. Only possible when the reader holds nothing else (the
        header must come right before the batch's first reply), and never on a connection that
        receives messages nobody asked for (a subscriber's), whose replies could interleave."""
        self._between = False
        if self.on_message is None:
            self._reader.feed(b"*%d\r\n" % batch.remaining)
            batch.whole = True

    async def call(self, *args: bytes | str | int) -> Any:
        """One command, for the rare paths (topology, script loading)."""
        (reply,) = await self.send(encode_command(*args), 1)
        return reply

    def data_received(self, data: bytes) -> None:
        reader = self._reader
        reader.feed(data)
        pending = self._pending
        try:
            while pending:
                batch = pending[0]
                if batch.whole:
                    replies = reader.gets()
                    if replies is False:
                        return
                    batch.replies = replies
                else:
                    while batch.remaining:
                        reply = reader.gets()
                        if reply is False:
                            return
                        batch.replies.append(reply)
                        batch.remaining -= 1
                pending.popleft()
                if not batch.future.done():  # a caller that timed out has cancelled it
                    batch.future.set_result(batch.replies)
                if not reader.has_data():  # at the end of a reply, nothing more buffered
                    if pending:
                        self._wrap(pending[0])
                    else:
                        self._between = True
            if self.on_message is not None:
                while (message := reader.gets()) is not False:
                    self.on_message(message)
        except hiredis.ProtocolError as exc:
            self._fail(StoreUnavailable(f"Redis node {self._name} sent an invalid reply: {exc}"))
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        reason = f": {exc}" if exc else ""
        self._fail(StoreUnavailable(f"connection to Redis node {self._name} lost{reason}"))
        if self.on_lost is not None:
            self.on_lost()

    def _fail(self, error: StoreUnavailable) -> None:
        self.closed = True
        while self._pending:
            batch = self._pending.popleft()
            if not batch.future.done():
                batch.future.set_exception(error)

    def close(self) -> None:
        self.closed = True
        if self._transport is not None:
            self._transport.close()

    @property
    def _name(self) -> str:
        return f"{self.address[0]}:{self.address[1]}"
