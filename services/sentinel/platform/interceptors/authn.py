"""Authentication: verifies the bearer token of every call and records the principal.

Public RPCs (policy scope PUBLIC) accept calls without a token. A token sent to one is not
verified and not used: the handler runs without a principal (so a forged token gains nothing,
and an expired access token sent along with RefreshToken does not break the refresh). A
malformed ``authorization`` header is refused everywhere.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from sentinel.platform import revocation
from sentinel.platform.auth import TokenVerifier, bearer_token
from sentinel.platform.calls import Call
from sentinel.platform.errors import Unauthenticated


class AuthnInterceptor:
    def __init__(self, verifier: TokenVerifier | None) -> None:
        self.verifier = verifier

    @contextlib.asynccontextmanager
    async def scope(self, call: Call) -> AsyncIterator[None]:
        token = bearer_token(call.metadata.items())
        public = call.rpc is not None and call.rpc.public
        if token is None:
            if not public:
                raise Unauthenticated("this call needs a bearer token; log in first", reason="TOKEN_MISSING")
        elif not public:
            if self.verifier is None:
                raise Unauthenticated("token verification is not configured", reason="TOKEN_INVALID")
            principal = self.verifier.verify(token)
            if principal.session_id and revocation.revoked.is_revoked(principal.session_id):
                raise Unauthenticated("this session has ended (logged out or revoked); log in again",
                                      reason="SESSION_REVOKED")
            # A suspended (or deleted) tenant's sessions and keys stop at once. Services act for
            # the platform (e.g. recording the suspension in the audit trail) and pass.
            blocked = None if principal.is_service else revocation.tenants.blocked(principal.tenant_id)
            if blocked is not None:
                raise blocked.refusal(principal.tenant_id, own=True)
            call.principal = principal
        yield
