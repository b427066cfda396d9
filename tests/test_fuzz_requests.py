"""Generated hostile requests: every one gets a deliberate status, none UNKNOWN or INTERNAL.

The requests are valid ones mutated at the byte level (flipped bytes, truncation, invalid UTF-8
planted in strings) and structured ones a hostile caller would send (huge or empty keys, wrong
value kinds, absurd timestamps, non-finite floats, mismatched lengths). They go over a raw
channel as bytes, so the server's own parsing is what is tested, not the client's checks."""

from __future__ import annotations

import random
import time
from collections import Counter
from collections.abc import Callable, Iterator

import grpc
import numpy as np
import pytest

from featurewell.client import FeatureClient
from featurewell.v1 import feature_service_pb2 as pb
from tests.tools import Ids, ServerThread

GET = "/featurewell.v1.FeatureService/GetFeatures"
WRITE = "/featurewell.v1.FeatureService/WriteFeatures"
# What a hostile request may be answered with: each says what is wrong with the request.
# UNKNOWN and INTERNAL would mean an error escaped un-mapped; UNAVAILABLE would blame a healthy
# store; DATA_LOSS would blame stored data for a bad request.
DELIBERATE = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.PERMISSION_DENIED,
}
MESSAGE_LIMIT = 2_000  # no message may echo a huge input back


def _strings(*values: str) -> pb.Values:
    return pb.Values(strings=pb.StringList(values=list(values)))


def _ints(*values: int) -> pb.Values:
    return pb.Values(int64s=pb.Int64List(values=list(values)))


def _valid_get(user: str) -> pb.GetFeaturesRequest:
    return pb.GetFeaturesRequest(
        features=["profile:*", "item_stats:popularity", "pair:progress"],
        entities={"user_id": _strings(user), "item_id": _ints(1, 2, 3)},
    )


def _valid_write(user: str) -> pb.WriteFeaturesRequest:
    now_us = time.time_ns() // 1000
    return pb.WriteFeaturesRequest(
        view="item_stats",
        entities={"item_id": _ints(hash(user) % 10_000_000 + 10_000_000)},
        event_timestamps=[now_us],
        features=[
            pb.FeatureColumn(
                name="popularity",
                data=np.array([0.5], np.float32).tobytes(),
                length=1,
                type=pb.VALUE_TYPE_FLOAT32,
            ),
            pb.FeatureColumn(
                name="vec",
                data=np.array([1, 2, 3, 4], np.float32).tobytes(),
                length=1,
                dim=4,
                type=pb.VALUE_TYPE_EMBEDDING,
            ),
        ],
    )


def _mutations(raw: bytes, rng: random.Random) -> Iterator[bytes]:
    """Byte-level damage to a valid message."""
    while True:
        data = bytearray(raw)
        kind = rng.randrange(4)
        if kind == 0:  # flip a few bytes
            for _ in range(rng.randint(1, 4)):
                data[rng.randrange(len(data))] = rng.randrange(256)
        elif kind == 1:  # cut it short
            del data[rng.randrange(1, len(data)) :]
        elif kind == 2:  # plant invalid UTF-8 where text is
            for index, byte in enumerate(data):
                if 0x61 <= byte <= 0x7A and rng.random() < 0.2:
                    data[index] = rng.choice([0xFF, 0xC0, 0xED])
        else:  # random garbage appended
            data += rng.randbytes(rng.randint(1, 64))
        yield bytes(data)


def _structured(user: str, rng: random.Random) -> Iterator[tuple[str, bytes, bool]]:
    """Well-formed protobuf with hostile content, and whether it must be refused (every write
    here is one no store should accept; some reads are merely odd)."""
    now_us = time.time_ns() // 1000
    huge = "x" * (1 << 20)
    gets: list[Callable[[], pb.GetFeaturesRequest]] = [
        lambda: pb.GetFeaturesRequest(features=["profile:*"], entities={"user_id": _strings(huge)}),
        lambda: pb.GetFeaturesRequest(features=["profile:*"], entities={"user_id": _strings("")}),
        lambda: pb.GetFeaturesRequest(features=["profile:*"], entities={"user_id": _ints(1)}),
        lambda: pb.GetFeaturesRequest(features=[huge], entities={"user_id": _strings(user)}),
        lambda: pb.GetFeaturesRequest(
            features=["", ":", "@v"], entities={"user_id": _strings(user)}
        ),
        lambda: pb.GetFeaturesRequest(features=["profile:*"], entities={"user_id": pb.Values()}),
        lambda: pb.GetFeaturesRequest(features=["profile:*"], entities={huge: _strings(user)}),
        lambda: pb.GetFeaturesRequest(
            features=["profile:*", "item_stats:*"],
            entities={"user_id": _strings(user, user), "item_id": _ints(1, 2, 3)},
        ),
        lambda: pb.GetFeaturesRequest(
            features=["birth:*"],
            entities={"user_id": _strings(user)},
            context={"year": _strings("x")},
        ),
    ]
    item = hash(user) % 10_000_000 + 20_000_000

    def write(stamp: int, value: float, dim: int = 4, key: pb.Values | None = None) -> bytes:
        request = pb.WriteFeaturesRequest(
            view="item_stats",
            entities={"item_id": key if key is not None else _ints(item)},
            event_timestamps=[stamp],
            features=[
                pb.FeatureColumn(
                    name="popularity",
                    data=np.array([value], np.float32).tobytes(),
                    length=1,
                    type=pb.VALUE_TYPE_FLOAT32,
                ),
                pb.FeatureColumn(
                    name="vec",
                    data=np.arange(dim, dtype=np.float32).tobytes(),
                    length=1,
                    dim=dim,
                    type=pb.VALUE_TYPE_EMBEDDING,
                ),
            ],
        )
        return request.SerializeToString()

    writes: list[Callable[[], bytes]] = [
        lambda: write(2**63 - 1, 1.0),
        lambda: write(now_us + 3_600_000_000, 1.0),
        lambda: write(-5, 1.0),
        lambda: write(now_us // 1_000_000, 1.0),  # seconds, not µs
        lambda: write(now_us, float("nan")),
        lambda: write(now_us, float("inf")),
        lambda: write(now_us, 1.0, dim=3),
        lambda: write(now_us, 1.0, key=_strings("i1")),
        lambda: write(now_us, 1.0, key=_ints()),
        lambda: pb.WriteFeaturesRequest(view="nope").SerializeToString(),
        lambda: pb.WriteFeaturesRequest(view=huge).SerializeToString(),
    ]
    while True:
        if rng.random() < 0.5:
            yield GET, rng.choice(gets)().SerializeToString(), False
        else:
            yield WRITE, rng.choice(writes)(), True


@pytest.fixture(scope="module")
def channel(server: ServerThread) -> Iterator[grpc.Channel]:
    limit = 256 * 1024 * 1024
    options = [("grpc.max_send_message_length", limit), ("grpc.max_receive_message_length", limit)]
    with grpc.insecure_channel(server.address, options=options) as opened:
        yield opened


def test_hostile_requests_get_deliberate_statuses(
    channel: grpc.Channel, client: FeatureClient, ids: Ids
) -> None:
    rng = random.Random(20261204)
    user = ids("fuzz")
    calls: dict[str, grpc.UnaryUnaryMultiCallable[bytes, bytes]] = {
        method: channel.unary_unary(method, request_serializer=None, response_deserializer=None)
        for method in (GET, WRITE)
    }
    requests: list[tuple[str, bytes, bool]] = []
    get_mutations = _mutations(_valid_get(user).SerializeToString(), rng)
    write_mutations = _mutations(_valid_write(user).SerializeToString(), rng)
    structured = _structured(user, rng)
    for _ in range(150):
        requests.append((GET, next(get_mutations), False))
        requests.append((WRITE, next(write_mutations), False))
        requests.append(next(structured))

    seen: Counter[grpc.StatusCode] = Counter()
    wrong: list[str] = []
    for method, raw, refuse in requests:
        try:
            calls[method](raw, timeout=10)
            seen[grpc.StatusCode.OK] += 1
            if refuse:
                wrong.append(f"{method.rsplit('/', 1)[1]} OK for a hostile request")
        except grpc.RpcError as error:
            code = error.code()
            details = error.details() or ""
            seen[code] += 1
            if code not in DELIBERATE or len(details) > MESSAGE_LIMIT or not details:
                wrong.append(f"{method.rsplit('/', 1)[1]} {code.name}: {details[:200]!r}")
    kinds = sorted({w[:90] for w in wrong})
    assert not wrong, f"{len(wrong)} of {len(requests)} undeliberate answers: {kinds}"
    assert seen[grpc.StatusCode.INVALID_ARGUMENT] > 100, seen  # the generator does bite
    # The server is still healthy and a good call is still answered.
    assert client.get_features(["profile:age"], entities={"user_id": [user]}).rows == 1
