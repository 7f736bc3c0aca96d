"""Authentication: verifies the credential of every call and records the principal.

A credential is an access token (``authorization: Bearer <jwt>``) or an API key (``Bearer
snt_...`` or ``x-api-key: snt_...``); sending both kinds at once is refused as ambiguous.

Public RPCs (policy scope PUBLIC) accept calls without a credential. One sent to them is not
verified and not used: the handler runs without a principal (so a forged token gains nothing,
and an expired access token sent along with RefreshToken does not break the refresh). A
malformed ``authorization`` header is refused everywhere.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from sentinel.platform import apikeys, revocation
from sentinel.platform.auth import Principal, TokenVerifier, bearer_token
from sentinel.platform.calls import Call
from sentinel.platform.errors import Unauthenticated
from sentinel.platform.service_identity import ServiceVerifier, is_service_token


class AuthnInterceptor:
    def __init__(self, verifier: TokenVerifier | None, service_verifier: ServiceVerifier | None = None) -> None:
        self.verifier = verifier
        self.service_verifier = service_verifier

    async def _principal(self, token: str | None, api_key: str | None) -> Principal:
        if api_key is not None:
            principal = await apikeys.authenticator.authenticate(api_key)
            ended = "this API key has been revoked"
        else:
            assert token is not None
            if is_service_token(token):  # another Sentinel service (internal RPCs)
                if self.service_verifier is None:
                    raise Unauthenticated("this service accepts no service tokens", reason="TOKEN_INVALID")
                return self.service_verifier.verify(token)
            if self.verifier is None:
                raise Unauthenticated("token verification is not configured", reason="TOKEN_INVALID")
            principal = self.verifier.verify(token)
            ended = "this session has ended (logged out or revoked); log in again"
        if principal.session_id and revocation.revoked.is_revoked(principal.session_id):
            if api_key is not None:
                apikeys.refused(principal.tenant_id, principal.session_id, "API_KEY_REVOKED")
            raise Unauthenticated(ended, reason="API_KEY_REVOKED" if api_key else "SESSION_REVOKED")
        return principal

    @contextlib.asynccontextmanager
    async def scope(self, call: Call) -> AsyncIterator[None]:
        token = bearer_token(call.metadata.items())
        api_key = call.metadata.get("x-api-key")
        public = call.rpc is not None and call.rpc.public
        if token is not None and api_key is not None and not public:
            raise Unauthenticated("send an access token or an API key, not both", reason="CREDENTIALS_AMBIGUOUS")
        if token is not None and token.startswith(apikeys.PREFIX):
            token, api_key = None, token
        if token is None and api_key is None:
            if not public:
                raise Unauthenticated("this call needs a bearer token or an API key; log in first",
                                      reason="TOKEN_MISSING")
        elif not public:
            principal = await self._principal(token, api_key)
            # A suspended (or deleted) tenant's sessions and keys stop at once. Services act for
            # the platform (e.g. recording the suspension in the audit trail) and pass.
            blocked = None if principal.is_service else revocation.tenants.blocked(principal.tenant_id)
            if blocked is not None:
                raise blocked.refusal(principal.tenant_id, own=True)
            call.principal = principal
        yield
