"""Server interceptors, one concern per module, composed by :class:`Chain`.

Each interceptor is an async context manager factory around the call, so the same code
wraps unary and server-streaming RPCs, sees the outcome (exceptions included), and can set
and reset state. The chain wraps each handler once; order is outer to inner.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

import grpc

from sentinel.platform import calls, contracts
from sentinel.platform.auth import TokenVerifier
from sentinel.platform.service_identity import ServiceVerifier

if TYPE_CHECKING:
    from sentinel.ratelimit.limiter import Limiter


class Interceptor(Protocol):
    """Wraps every RPC (unary and streaming) as an async context manager."""

    def scope(self, call: calls.Call) -> contextlib.AbstractAsyncContextManager[None]: ...


class UnaryInterceptor(Protocol):
    """Wraps unary RPCs innermost, seeing (and possibly replacing) the response."""

    async def invoke(self, call: calls.Call, proceed: Callable[[], Awaitable[Any]]) -> Any: ...


def _metadata(details: grpc.HandlerCallDetails) -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in details.invocation_metadata or ():
        if isinstance(value, str):
            out[key] = value
    return out


def _peer_ip(context: grpc.aio.ServicerContext[Any, Any], metadata: dict[str, str]) -> str:
    # Behind Envoy (use_remote_address) the client address is the LAST x-forwarded-for entry:
    # Envoy appends the peer it saw, and everything before it is whatever the client sent.
    forwarded = metadata.get("x-forwarded-for", "")
    if forwarded:
        return forwarded.rsplit(",", 1)[-1].strip()
    peer = context.peer() or ""
    host = peer.split(":", 1)[1] if ":" in peer else peer
    return host.rsplit(":", 1)[0].strip("[]")


class Chain(grpc.aio.ServerInterceptor):
    def __init__(self, interceptors: Sequence[Interceptor],
                 unary: Sequence[UnaryInterceptor] = ()) -> None:
        self.interceptors = list(interceptors)
        self.unary = list(unary)

    async def _invoke(self, call: calls.Call, proceed: Callable[[], Awaitable[Any]], index: int = 0) -> Any:
        if index == len(self.unary):
            return await proceed()
        return await self.unary[index].invoke(call, lambda: self._invoke(call, proceed, index + 1))

    def _new_call(self, details: grpc.HandlerCallDetails, request: Any,
                  context: grpc.aio.ServicerContext[Any, Any]) -> calls.Call:
        method = details.method
        metadata = _metadata(details)
        return calls.Call(
            method=method, rpc=contracts.rpc_for(method), metadata=metadata, context=context,
            # Envoy sets x-request-id; direct gRPC callers get one here for logs and errors.
            request=request, request_id=metadata.get("x-request-id", "")[:100] or uuid.uuid4().hex,
            peer_ip=_peer_ip(context, metadata), user_agent=metadata.get("user-agent", ""),
        )

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or method.startswith(contracts.INFRASTRUCTURE_PREFIXES):
            return handler
        if handler.unary_unary is not None:
            inner: Any = handler.unary_unary

            async def unary(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
                call = self._new_call(handler_call_details, request, context)
                token = calls.bind(call)
                try:
                    async with contextlib.AsyncExitStack() as stack:
                        for interceptor in self.interceptors:
                            await stack.enter_async_context(interceptor.scope(call))
                        return await self._invoke(call, lambda: inner(request, context))
                finally:
                    calls.unbind(token)

            return grpc.unary_unary_rpc_method_handler(
                unary, request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer)
        if handler.unary_stream is not None:
            inner_stream: Any = handler.unary_stream

            async def stream(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
                call = self._new_call(handler_call_details, request, context)
                token = calls.bind(call)
                try:
                    async with contextlib.AsyncExitStack() as stack:
                        for interceptor in self.interceptors:
                            await stack.enter_async_context(interceptor.scope(call))
                        async for item in inner_stream(request, context):
                            yield item
                finally:
                    calls.unbind(token)

            return grpc.unary_stream_rpc_method_handler(
                stream, request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer)
        return handler  # client-streaming RPCs: none in the contracts


def default_chain(service: str, verifier: TokenVerifier | None,
                  service_verifier: ServiceVerifier | None = None, limiter: Limiter | None = None) -> Chain:
    """The production order: metrics, tracing, logging, errors, input, audit, authn, rate limits
    (when a limiter is given), policy; then, around unary handlers, the audit transaction and
    idempotency. (The call's span is opened in front of the chain:
    ``sentinel.platform.tracing.server_interceptors``.)"""
    from sentinel.platform.interceptors.audit import AuditInterceptor, AuditTransaction
    from sentinel.platform.interceptors.authn import AuthnInterceptor
    from sentinel.platform.interceptors.errors import ErrorsInterceptor
    from sentinel.platform.interceptors.idempotency import IdempotencyInterceptor
    from sentinel.platform.interceptors.input import InputInterceptor
    from sentinel.platform.interceptors.logging import LoggingInterceptor
    from sentinel.platform.interceptors.metrics import MetricsInterceptor
    from sentinel.platform.interceptors.policy import PolicyInterceptor
    from sentinel.platform.interceptors.ratelimit import RateLimitInterceptor
    from sentinel.platform.interceptors.tracing import TracingInterceptor

    return Chain([
        MetricsInterceptor(service),
        TracingInterceptor(),
        LoggingInterceptor(service),
        ErrorsInterceptor(service),
        InputInterceptor(),
        AuditInterceptor(),
        AuthnInterceptor(verifier, service_verifier),
        *([RateLimitInterceptor(limiter)] if limiter is not None else []),
        PolicyInterceptor(),
    ], unary=[AuditTransaction(), IdempotencyInterceptor()])
