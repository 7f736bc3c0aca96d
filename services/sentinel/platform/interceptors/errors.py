"""Maps exceptions to gRPC status with ``google.rpc`` details; nothing else aborts calls.

Unexpected exceptions are logged with their traceback and reach the client only as
INTERNAL with the request id, never as a stack trace.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator

import asyncpg
import grpc
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from sentinel.platform.calls import Call
from sentinel.platform.errors import SentinelError, Unavailable, to_status

log = logging.getLogger("sentinel.errors")
STATUS_DETAILS_KEY = "grpc-status-details-bin"


# Raised as they are by db.read_only, which talks to the asyncpg connection directly: a lost
# connection (class 08) and a server shutting down or starting up (57P01-57P03).
_ASYNCPG_UNAVAILABLE = (asyncpg.PostgresConnectionError | asyncpg.AdminShutdownError
                        | asyncpg.CrashShutdownError | asyncpg.CannotConnectNowError)


def _is_connection_error(exc: BaseException) -> bool:
    if isinstance(exc, OperationalError | PoolTimeout | ConnectionError | OSError | _ASYNCPG_UNAVAILABLE):
        return True
    return isinstance(exc, DBAPIError) and bool(exc.connection_invalidated)


class ErrorsInterceptor:
    def __init__(self, service: str) -> None:
        self.domain = f"sentinel.{service}"

    async def abort(self, call: Call, err: SentinelError) -> None:
        status = to_status(err, domain=self.domain)
        await call.context.abort(err.code, err.message,
                                 trailing_metadata=((STATUS_DETAILS_KEY, status.SerializeToString()),
                                                    *err.trailing_metadata()))

    @contextlib.asynccontextmanager
    async def scope(self, call: Call) -> AsyncIterator[None]:
        try:
            yield
        except SentinelError as err:
            await self.abort(call, err)
        except grpc.aio.AbortError:
            raise
        except Exception as exc:
            if isinstance(exc, NotImplementedError) and call.context.code() == grpc.StatusCode.UNIMPLEMENTED:
                # The generated base servicer sets UNIMPLEMENTED and raises NotImplementedError for
                # a method the service does not override: answer UNIMPLEMENTED, not INTERNAL.
                await self.abort(call, _unimplemented())
            if _is_connection_error(exc):
                log.warning("dependency unavailable", extra={"method": call.method, "error": repr(exc)})
                await self.abort(call, Unavailable(
                    "a backing service is unavailable; retry shortly", reason="DEPENDENCY_UNAVAILABLE"))
            log.exception("unhandled error", extra={"method": call.method, "request_id": call.request_id})
            await self.abort(call, _internal(call))


def _internal(call: Call) -> SentinelError:
    err = SentinelError(f"internal error (request id {call.request_id or 'unknown'}); it has been logged",
                        reason="INTERNAL")
    err.code = grpc.StatusCode.INTERNAL
    return err


def _unimplemented() -> SentinelError:
    err = SentinelError("this method is not implemented by this service", reason="UNIMPLEMENTED")
    err.code = grpc.StatusCode.UNIMPLEMENTED
    return err
