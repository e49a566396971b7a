"""Bearer-key authentication with read and write roles.

Keys are compared in constant time (:func:`hmac.compare_digest` against every configured key,
whichever matches) and never logged.
"""

from __future__ import annotations

import hmac

from tunetrace.api.errors import ApiError
from tunetrace.api.settings import Role

_RANK: dict[str, int] = {"read": 1, "write": 2}


class KeyRing:
    """The configured keys and what each may do.

    Parameters
    ----------
    keys : dict
        Key -> role (``"read"`` or ``"write"``; write includes read).
    """

    def __init__(self, keys: dict[str, Role]) -> None:
        self._keys = [(key.encode(), role) for key, role in keys.items()]

    def role_of(self, key: str) -> Role | None:
        """The role of ``key``, or None if it is not a configured key."""
        candidate = key.encode()
        found: Role | None = None
        for known, role in self._keys:  # no early exit: time does not depend on the match
            if hmac.compare_digest(candidate, known):
                found = role
        return found

    def authorise(self, authorization: str | None, needed: Role) -> Role:
        """Check an ``Authorization`` header value for the ``needed`` role.

        Raises
        ------
        ApiError
            401 without a usable bearer key, 403 when the key's role is too weak.
        """
        if not authorization:
            raise ApiError(401, "unauthorized", "send an API key as 'Authorization: Bearer KEY'")
        scheme, _, key = authorization.partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            raise ApiError(401, "unauthorized", "the Authorization header must be 'Bearer KEY'")
        role = self.role_of(key.strip())
        if role is None:
            raise ApiError(401, "unauthorized", "the API key is not valid")
        if _RANK[role] < _RANK[needed]:
            raise ApiError(403, "forbidden", f"this API key has the {role} role; {needed} needed")
        return role
