"""Who may read and write which views: access policies declared with the definitions.

A principal is the identity the server verified for a call (serving/auth.py): a client
certificate's SPIFFE URI, DNS name or CN, or a bearer token's principal (`sub` of a JWT). A
policy entry is one of:

- a principal, exactly as verified (`"spiffe://prod/ranker"`);
- `"team:<name>"`: every member of the `Team` of that name declared in the repo;
- `"*"`: any authenticated principal.

    ranking = Team("ranking", members=["spiffe://prod/ranker", "spiffe://prod/ranker-canary"])
    DefaultAccess(read=["*"], write=[])           # the repo's default for views without one
    FeatureView("user_activity", ..., access=Access(read=["team:ranking"],
                                                    write=["spiffe://prod/ingest"],
                                                    features={"ssn": ["team:risk"]}))

`features` narrows reads of single features: a caller must be allowed the view AND be named
for the feature. Without a `DefaultAccess` the repo's default is `Access(read=["*"],
write=["*"])`: any authenticated caller reads and writes views that declare no policy (turning
authentication on changes nobody's access until policies say so). Views the stream computes
(`events=`) refuse WriteFeatures unless their own `access.write` names the pipeline principal
(neither `"*"` nor the default counts). Policies are enforced only when `auth_required` is on.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from featurewell.definitions._names import check_name
from featurewell.errors import DefinitionError

ANYONE = "*"
TEAM_PREFIX = "team:"


def _entries(values: Sequence[str] | str, where: str) -> tuple[str, ...]:
    if isinstance(values, str):  # Access(read="team:x") would otherwise be 6 one-letter names
        raise DefinitionError(f"{where} takes a list of principals, got the string {values!r}")
    out = tuple(values)
    for entry in out:
        if not isinstance(entry, str) or not entry.strip() or entry != entry.strip():
            raise DefinitionError(
                f"{where}: {entry!r} is not a principal, 'team:<name>' or '*' (no blanks around)"
            )
        if entry.startswith(TEAM_PREFIX):
            check_name(entry[len(TEAM_PREFIX) :], f"team in {where}")
    return out


@dataclass(frozen=True, eq=False)
class Team:
    """Principals that share access: `Access(read=["team:ranking"])` names all of them."""

    name: str
    members: Sequence[str] = ()

    def __post_init__(self) -> None:
        check_name(self.name, "team")
        members = _entries(self.members, f"team {self.name!r} members")
        if ANYONE in members or any(m.startswith(TEAM_PREFIX) for m in members):
            raise DefinitionError(f"team {self.name!r}: members are principals, not '*' or teams")
        object.__setattr__(self, "members", frozenset(members))


@dataclass(frozen=True, eq=False)
class Access:
    """A view's policy: who may read it, who may write it (WriteFeatures), and optionally who
    may read single features of it (on top of reading the view)."""

    read: Sequence[str] = (ANYONE,)
    write: Sequence[str] = (ANYONE,)
    features: Mapping[str, Sequence[str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "read", _entries(self.read, "Access read"))
        object.__setattr__(self, "write", _entries(self.write, "Access write"))
        object.__setattr__(
            self,
            "features",
            {
                name: _entries(entries, f"Access features[{name!r}]")
                for name, entries in dict(self.features).items()
            },
        )

    def teams(self) -> set[str]:
        """Team names this policy refers to."""
        entries = [*self.read, *self.write, *(e for v in self.features.values() for e in v)]
        return {e[len(TEAM_PREFIX) :] for e in entries if e.startswith(TEAM_PREFIX)}


class DefaultAccess(Access):
    """The repo's policy for every view that declares none (at most one per repo). Per-feature
    entries belong on a view's own Access."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.features:
            raise DefinitionError(
                "DefaultAccess takes read and write only; put features= on a view's Access"
            )


OPEN = Access()  # the default without a DefaultAccess: any authenticated principal


def allows(entries: Sequence[str], principal: str, teams: Mapping[str, Team]) -> bool:
    """Whether `principal` matches one of the policy `entries`."""
    for entry in entries:
        if entry in (ANYONE, principal):
            return True
        if entry.startswith(TEAM_PREFIX):
            team = teams.get(entry[len(TEAM_PREFIX) :])
            if team is not None and principal in team.members:
                return True
    return False


def names(entries: Sequence[str], principal: str, teams: Mapping[str, Team]) -> bool:
    """Whether `entries` name `principal` explicitly (itself or a team of it; not '*')."""
    return allows([e for e in entries if e != ANYONE], principal, teams)
