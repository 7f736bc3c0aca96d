"""The exception tree of Sentinel and its mapping to gRPC status with ``google.rpc`` details.

Handlers and repositories raise these; only the errors interceptor turns them into a status.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2


@dataclass(frozen=True, slots=True)
class FieldViolation:
    field: str
    description: str


class SentinelError(Exception):
    """Base class: a failure a client can act on, with a stable reason slug."""

    code: grpc.StatusCode = grpc.StatusCode.UNKNOWN
    reason: str = "UNKNOWN"

    def __init__(self, message: str, *, reason: str | None = None,
                 metadata: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        if reason:
            self.reason = reason
        self.metadata = dict(metadata or {})

    def details(self) -> list[any_pb2.Any]:
        return []

    def trailing_metadata(self) -> tuple[tuple[str, str], ...]:
        """Extra response metadata (Envoy turns it into HTTP headers for REST clients)."""
        return ()


class InvalidArgument(SentinelError):
    code = grpc.StatusCode.INVALID_ARGUMENT
    reason = "INVALID_ARGUMENT"

    def __init__(self, message: str, violations: Sequence[FieldViolation] = (), **kw: object) -> None:
        super().__init__(message, **kw)  # type: ignore[arg-type]
        self.violations = list(violations)

    def details(self) -> list[any_pb2.Any]:
        if not self.violations:
            return []
        br = error_details_pb2.BadRequest(field_violations=[
            error_details_pb2.BadRequest.FieldViolation(field=v.field, description=v.description)
            for v in self.violations
        ])
        packed = any_pb2.Any()
        packed.Pack(br)
        return [packed]


class NotFound(SentinelError):
    code = grpc.StatusCode.NOT_FOUND
    reason = "NOT_FOUND"


class AlreadyExists(SentinelError):
    code = grpc.StatusCode.ALREADY_EXISTS
    reason = "ALREADY_EXISTS"


class FailedPrecondition(SentinelError):
    code = grpc.StatusCode.FAILED_PRECONDITION
    reason = "FAILED_PRECONDITION"


class Unimplemented(SentinelError):
    code = grpc.StatusCode.UNIMPLEMENTED
    reason = "UNIMPLEMENTED"


class Aborted(SentinelError):
    """Concurrency conflict: stale etag, or an idempotency key reused for another request."""

    code = grpc.StatusCode.ABORTED
    reason = "ABORTED"


class Unauthenticated(SentinelError):
    code = grpc.StatusCode.UNAUTHENTICATED
    reason = "UNAUTHENTICATED"


class PermissionDenied(SentinelError):
    code = grpc.StatusCode.PERMISSION_DENIED
    reason = "PERMISSION_DENIED"


class ResourceExhausted(SentinelError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    reason = "RESOURCE_EXHAUSTED"

    def __init__(self, message: str, *, retry_after_seconds: float | None = None,
                 headers: Mapping[str, str] | None = None, **kw: object) -> None:
        super().__init__(message, **kw)  # type: ignore[arg-type]
        self.retry_after = None if retry_after_seconds is None else max(1, math.ceil(retry_after_seconds))
        #: More response headers (e.g. the rate limiter's ``RateLimit-*``).
        self.headers = {k: v for k, v in (headers or {}).items() if k != "retry-after"}

    def details(self) -> list[any_pb2.Any]:
        if self.retry_after is None:
            return []
        packed = any_pb2.Any()
        packed.Pack(error_details_pb2.RetryInfo(retry_delay=duration_pb2.Duration(seconds=self.retry_after)))
        return [packed]

    def trailing_metadata(self) -> tuple[tuple[str, str], ...]:
        retry = () if self.retry_after is None else (("retry-after", str(self.retry_after)),)
        return (*retry, *self.headers.items())


class Unavailable(SentinelError):
    code = grpc.StatusCode.UNAVAILABLE
    reason = "UNAVAILABLE"


def require(violations: list[FieldViolation], message: str = "the request has invalid fields") -> None:
    """Raise one InvalidArgument listing every violation, so clients fix all at once."""
    if violations:
        detail = "; ".join(f"{v.field}: {v.description}" for v in violations)
        raise InvalidArgument(f"{message}: {detail}", violations)


def to_status(err: SentinelError, *, domain: str) -> status_pb2.Status:
    """Build the rich ``google.rpc.Status`` (ErrorInfo first, then specific details)."""
    info = error_details_pb2.ErrorInfo(reason=err.reason, domain=domain, metadata=err.metadata)
    packed = any_pb2.Any()
    packed.Pack(info)
    code_value = err.code.value[0]
    assert code_value != code_pb2.OK
    return status_pb2.Status(code=code_value, message=err.message, details=[packed, *err.details()])
