"""Redis ACL roles: which commands and keys each kind of featurewell process needs, and no more.

The key patterns are not written here: they are translated from the key families of
`store/keys.py` (`FAMILIES`), so a change to the key layout changes the rules with it, and a
change the translation does not understand fails loudly (tests/test_acl.py checks both ways, and
runs every role against a real Redis Cluster with ACLs on).

  role    for                               may
  server  `featurewell serve`               read rows, markers and promoted defaults; track
                                            keys for the hot-key cache; count its consumers
  writer  `stream`, `backfill`, `append`,   write rows (the ordered-write Lua script) and
          `materialize`, `parity`           markers; consume event streams; keep stream state
  admin   `promote`, `rollback`, `status`,  change promoted defaults; read rows, markers and
          `lineage`, `validate`             consumer counts

A server that only holds the `server` user answers WriteFeatures with FAILED_PRECONDITION
(the NOPERM reply, mapped once in `store.connection.refusal`); give a serving fleet that takes
writes a user with both roles' rules (`--role server --role writer`). Offline history is Parquet,
not Redis: no role needs it. ACL users are per node: apply the rules on every node, replicas
included (they become masters on failover).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass

from featurewell.store.keys import FAMILIES, Family

# Redis reads a Family's regex pieces as these globs (ACL key patterns are globs). Each regex
# piece keys.py uses must be listed: anything left over is refused, not guessed.
_NAME = r"\[a-z\]\[a-z0-9_\]\*"
_PIECES: tuple[tuple[str, str], ...] = (
    (rf"\(\?P<(?:view|source)>{_NAME}\)", "[a-z]*"),  # names start with a letter
    (r"\(\?P<version>\[0-9\]\+\)", "[0-9]*"),
    (r"\(\?P<day>\[0-9\]\+\)", "[0-9]*"),
    (r"\\\{\(\?P<tag>\[\^\{\}\]\*\)\\\}", "{*}"),
    (r"\(\?P<group>\.\*\)", "*"),
    # An optional ":<partition>" after a source name: the name's own trailing '*' covers it.
    (r"\(\?::\(\?P<partition>\[0-9\]\+\)\)\?", ""),
    (r"\\([{}])", r"\1"),
)
_REGEX_ONLY = re.compile(r"[\\()\[\]?+.^$|]")


class UntranslatableKey(ValueError):
    """A key family's pattern holds a regex piece with no glob here: update `_PIECES`."""


def glob_of(family: Family) -> str:
    """The family's keys as a Redis glob (a row: the prefix, `[a-z]*:v[0-9]*:{*}`). A glob matches
    at least every key of the family; where it matches more, that is another family's key
    only for the `events` glob and a row of a view named `events` (tests show which)."""
    text = family.pattern.pattern.decode()
    parts: list[str] = []
    position = 0
    while position < len(text):
        for regex, glob in _PIECES:
            match = re.compile(regex).match(text, position)
            if match is not None:
                parts.append(match.expand(glob))
                position = match.end()
                break
        else:
            char = text[position]
            if _REGEX_ONLY.match(char):
                raise UntranslatableKey(
                    f"key family {family.name}: no ACL glob for {text[position:]!r}"
                )
            parts.append(char)
            position += 1
    return "".join(parts)


GLOBS: dict[str, str] = {family.name: glob_of(family) for family in FAMILIES}
INVALIDATION_CHANNEL = "__redis__:invalidate"  # store/tracking.py subscribes to it


@dataclass(frozen=True)
class Role:
    """A role: the commands it may run (ACL syntax: `get`, `client|id`) on any key it may
    touch, the key families it may read (`reads`) or read and write (`writes`), and the
    pub/sub channels it may subscribe to. Every command here is one featurewell sends, inside
    the Lua scripts included (`time`, `hget`...)."""

    name: str
    purpose: str
    commands: tuple[str, ...]
    reads: tuple[str, ...] = ()
    writes: tuple[str, ...] = ()
    channels: tuple[str, ...] = ()


# Every role follows the cluster (CLUSTER SLOTS, ASKING during slot migrations).
_CLUSTER = ("cluster|slots", "asking")
ROLES: dict[str, Role] = {
    role.name: role
    for role in (
        Role(
            "server",
            "featurewell serve: read rows, markers and promoted defaults; hot-key cache "
            "tracking; count consumers",
            (
                *_CLUSTER,
                "get",  # a row of one view
                "mget",  # an entity's rows of several views
                "hmget",  # write markers (freshness)
                "hgetall",  # promoted defaults; consumer counts
                "hincrby",  # consumer counts
                "hset",  # consumers' last call
                "eval",  # the consumer counts' bounded update (one script per flush)
                "hexists",  # inside it: a known (caller, view) pair?
                "hlen",  # inside it: how many pairs are kept
                "expire",  # inside it: a day's counts expire (consumer_days)
                "client|id",
                "client|tracking",
                "client|caching",
                "subscribe",
            ),
            reads=("row", "marker", "defaults"),
            writes=("consumer_calls", "consumer_seen", "consumer_days"),
            channels=(INVALIDATION_CHANNEL,),
        ),
        Role(
            "writer",
            "featurewell stream, backfill, append, materialize, parity: ordered row writes, "
            "stream consumption and state",
            (
                *_CLUSTER,
                "evalsha",  # the write-if-newer script, one per row
                "eval",  # the write marker script, one per batch
                "script|load",  # after a node (re)starts without the script
                "get",  # state, watermarks; rows inside the script; parity reads rows
                "mget",
                "set",  # state, watermarks; rows inside the script
                "hget",  # inside the marker script
                "hset",
                "hmget",
                "time",
                "hgetall",  # promoted defaults (parity serves as the server would)
                "xadd",  # `featurewell append`
                "xgroup|create",
                "xreadgroup",
                "xautoclaim",
                "xack",
                "xinfo|groups",
                "xpending",
                "xrange",  # `featurewell dead-letters list` and replay
                "xdel",  # dead letters replayed or dropped
                "xlen",
            ),
            reads=("defaults",),
            writes=("row", "state", "marker", "watermarks", "events", "dead_letters"),
        ),
        Role(
            "admin",
            "featurewell promote, rollback, status, lineage, validate, repair: the "
            "promoted-defaults keys; deletes rows poisoned by a future time; reads consumer "
            "counts",
            (
                *_CLUSTER,
                "hgetall",
                "hset",  # promote, rollback
                "lpush",  # the promotion log
                "ltrim",
                "lrange",
                "hmget",
                "get",
                "mget",
                "scan",  # validate samples a view's entities; repair --all-future
                "eval",  # repair: delete a row only while it is still poisoned (one script)
                "del",
                "hdel",
                "getrange",  # repair reads stored event times
                "hget",  # and the write marker's newest time
            ),
            reads=("consumer_calls", "consumer_seen", "consumer_days"),
            writes=("defaults", "defaults_log", "row", "marker"),
        ),
    )
}


def rules(roles: Sequence[Role], streams: Sequence[str] = ()) -> list[str]:
    """ACL rules granting the union of `roles`, after `reset` (nothing allowed). `streams`
    adds the keys of event sources named with `stream=` to the roles that write events."""
    commands = sorted({command for role in roles for command in role.commands})
    writes = sorted({family for role in roles for family in role.writes})
    reads = sorted({f for role in roles for f in role.reads if f not in writes})
    out = ["resetkeys", "resetchannels", "-@all", *(f"+{command}" for command in commands)]
    out += [f"%R~{GLOBS[family]}" for family in reads]
    out += [f"~{GLOBS[family]}" for family in writes]
    if "events" in writes:
        out += [f"~{stream}*" for stream in streams]
    out += sorted({f"&{channel}" for role in roles for channel in role.channels})
    return out


def setuser(
    user: str, roles: Sequence[Role], password: str | None, streams: Sequence[str] = ()
) -> str:
    """An `ACL SETUSER` line (a password as its SHA-256, never in clear; None: no password,
    set one with `ACL SETUSER <user> >...` before the user can log in)."""
    return " ".join(["ACL SETUSER", user, *_head(password), *rules(roles, streams)])


def aclfile_line(
    user: str, roles: Sequence[Role], password: str | None, streams: Sequence[str] = ()
) -> str:
    """The same user as a line of a Redis `aclfile`."""
    return " ".join(["user", user, *_head(password), *rules(roles, streams)])


def _head(password: str | None) -> list[str]:
    head = ["reset", "on"]
    if password is not None:
        head.append("#" + hashlib.sha256(password.encode()).hexdigest())
    return head
