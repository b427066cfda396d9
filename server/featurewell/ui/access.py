"""Who is looking, and what they may see: the API's own rules, applied to the UI.

A browser signs in with a bearer token the server would accept (the same tokens file or JWKS,
verified by serving/auth.py's Authenticator), once, on the login form; the UI keeps a random
session id in an HttpOnly, SameSite=Strict cookie and the principal in memory. A script may
send `Authorization: Bearer <token>` on every request instead. What a principal sees is what
ListFeatures would show it: the views and features its grants (serving/authz.py) let it read.

With `auth_required` off, as on the API, nobody signs in and everything is shown; a token
that is sent is still verified (a wrong one is refused, not ignored).
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass

from featurewell.definitions import Registry
from featurewell.errors import Unauthenticated
from featurewell.serving.auth import Authenticator
from featurewell.serving.authz import grants
from featurewell.settings import AuthSettings
from featurewell.ui.catalog import CanRead
from featurewell.ui.health import Visible

COOKIE = "featurewell_ui"
SESSION_S = 8 * 3600
MAX_SESSIONS = 10_000


@dataclass(frozen=True)
class Viewer:
    """The principal looking (None: anonymous, auth off) and what it may read."""

    principal: str | None
    can_read: CanRead | None  # None: everything
    visible: Visible | None


class Gate:
    def __init__(self, settings: AuthSettings) -> None:
        self.required = settings.required
        self._authenticator = Authenticator(settings) if settings.configured else None
        self._sessions: dict[str, tuple[str, float]] = {}

    def sign_in(self, token: str) -> str:
        """A new session id for the principal `token` names; Unauthenticated if it names none."""
        principal = self._verify(token)
        if len(self._sessions) >= MAX_SESSIONS:
            now = time.monotonic()
            self._sessions = {k: v for k, v in self._sessions.items() if v[1] > now}
            if len(self._sessions) >= MAX_SESSIONS:
                self._sessions.clear()
        session = secrets.token_urlsafe(32)
        self._sessions[session] = (principal, time.monotonic() + SESSION_S)
        return session

    def sign_out(self, session: str | None) -> None:
        if session:
            self._sessions.pop(session, None)

    def principal(self, authorization: str | None, session: str | None) -> str | None:
        """Who a request comes from: its bearer token, else its session. Raises Unauthenticated
        for a bad token, or when none is given and the API requires one."""
        if authorization:
            scheme, _, token = authorization.partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                raise Unauthenticated("the Authorization header must be 'Bearer <token>'")
            return self._verify(token.strip())
        if session:
            found = self._sessions.get(session)
            if found is not None and found[1] > time.monotonic():
                return found[0]
            self._sessions.pop(session, None)
        if self.required:
            raise Unauthenticated("sign in with a bearer token the feature server accepts")
        return None

    def viewer(self, registry: Registry, principal: str | None) -> Viewer:
        if not self.required:
            return Viewer(principal, None, None)
        if principal is None:  # fail closed, as serving/authz.py does
            raise Unauthenticated("sign in with a bearer token the feature server accepts")
        granted = grants(registry, principal)
        by_ref = {view.ref: view for view in registry.views.values()}

        def visible(ref: str, feature: str | None) -> bool:
            view = by_ref.get(ref)
            if view is None or (view.name, view.version) not in granted.readable:
                return False
            return feature is None or granted.can_read(view, feature)

        return Viewer(principal, granted.can_read, visible)

    def _verify(self, token: str) -> str:
        if self._authenticator is None:
            raise Unauthenticated(
                "no bearer tokens are configured (auth_tokens_file or auth_jwks_file)"
            )
        return self._authenticator.verify_token(token.strip())
