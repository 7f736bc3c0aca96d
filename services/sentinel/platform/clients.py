"""gRPC clients for service-to-service calls, carrying the caller's identity.

Channels are created once per peer and reused (HTTP/2 multiplexing, keepalive). Outgoing
calls propagate the current call's bearer token and request id, so the callee authorises
the original principal, not a blanket service identity. With tracing on, each call is a CLIENT
span whose context goes along as ``traceparent`` (the callee's server span is its child).
"""

from __future__ import annotations

import grpc

from sentinel.platform import tracing
from sentinel.platform.calls import current_call

CHANNEL_OPTIONS = [
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.enable_retries", 1),
]


_channels: dict[str, grpc.aio.Channel] = {}


def channel(target: str) -> grpc.aio.Channel:
    if target not in _channels:
        _channels[target] = grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS,
                                                      interceptors=tracing.client_interceptors() or None)
    return _channels[target]


def propagated_metadata() -> tuple[tuple[str, str], ...]:
    call = current_call()
    if call is None:
        return ()
    out = []
    for header in ("authorization", "x-api-key"):
        if value := call.metadata.get(header):
            out.append((header, value))
    if call.request_id:
        out.append(("x-request-id", call.request_id))
    return tuple(out)


async def close_all() -> None:
    channels = list(_channels.values())
    _channels.clear()
    for ch in channels:
        await ch.close()
