"""Idempotency for every mutating RPC: a repeated ``request_id`` (or ``Idempotency-Key`` header)
within 24 hours replays the first response; the same key with a different request is ABORTED.
Failed calls record nothing (their transaction rolled back), so a retry after an error runs again.

The lookup, the handler's writes and the stored response share one transaction, so a
response is recorded exactly when its effects are committed. Requests with the same key are
serialised by an advisory lock, so two at once give one effect and two equal responses.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Awaitable, Callable
from typing import Any

from google.protobuf import message_factory
from google.protobuf.message import Message
from sqlalchemy import func, select
from sqlalchemy.dialects.postgresql import insert

from sentinel.platform import db
from sentinel.platform.calls import Call
from sentinel.platform.errors import Aborted, FieldViolation, InvalidArgument
from sentinel.platform.models import IdempotencyRecord

MAX_KEY_LENGTH = 200
#: How long a key replays its first response; after that it may be used again.
REPLAY_WINDOW = dt.timedelta(hours=24)


def request_key(call: Call) -> str:
    request = call.request
    key = ""
    if request is not None and "request_id" in request.DESCRIPTOR.fields_by_name:
        key = request.request_id
    key = key or call.metadata.get("idempotency-key", "")
    if len(key) > MAX_KEY_LENGTH:
        raise InvalidArgument(f"request_id must be at most {MAX_KEY_LENGTH} characters",
                              [FieldViolation("request_id", "too long")])
    return key


def request_hash(request: Message) -> str:
    copy = type(request)()
    copy.CopyFrom(request)
    if "request_id" in copy.DESCRIPTOR.fields_by_name:
        copy.ClearField("request_id")
    return hashlib.sha256(copy.SerializeToString(deterministic=True)).hexdigest()


#: Top-level response fields never written to the idempotency table (a created API key's
#: secret is shown once; a replay returns the response without it).
SECRET_FIELDS = frozenset({"secret"})


def stored_form(response: Message) -> bytes:
    names = [n for n in SECRET_FIELDS if n in response.DESCRIPTOR.fields_by_name]
    if not names:
        return response.SerializeToString(deterministic=True)
    copy = type(response)()
    copy.CopyFrom(response)
    for name in names:
        copy.ClearField(name)
    return copy.SerializeToString(deterministic=True)


class IdempotencyInterceptor:
    """Wraps mutating unary RPCs that carry a key (``request_id`` field or header)."""

    async def invoke(self, call: Call, proceed: Callable[[], Awaitable[Any]]) -> Any:
        if call.rpc is None or not call.rpc.mutating or call.request is None or call.tenant_id is None:
            return await proceed()
        key = request_key(call)
        if not key:
            return await proceed()
        digest = request_hash(call.request)
        async with db.unit_of_work() as session:
            # Concurrent requests with one key queue here; the second then finds the first's record.
            await db.lock_in_tenant(session, f"sentinel.idempotency:{call.method}|{key}")
            found = (await session.execute(
                select(IdempotencyRecord).where(
                    IdempotencyRecord.tenant_id == call.db_tenant_id,
                    IdempotencyRecord.method == call.method,
                    IdempotencyRecord.key == key,
                    IdempotencyRecord.create_time > func.now() - REPLAY_WINDOW,
                ).with_for_update()
            )).scalar_one_or_none()
            if found is not None:
                if found.request_hash != digest:
                    raise Aborted("this request_id was already used for a different request; "
                                  "use a new request_id", reason="IDEMPOTENCY_KEY_REUSED")
                output = message_factory.GetMessageClass(call.rpc.method.output_type)
                call.replayed = True  # nothing happened again: nothing new to audit
                return output.FromString(found.response)
            response: Message = await proceed()
            record = insert(IdempotencyRecord).values(
                tenant_id=call.db_tenant_id, method=call.method, key=key,
                request_hash=digest, response=stored_form(response))
            # A record older than the window is replaced: the key is new again.
            await session.execute(record.on_conflict_do_update(
                index_elements=["tenant_id", "method", "key"],
                set_={"request_hash": record.excluded.request_hash, "response": record.excluded.response,
                      "create_time": func.now()}))
            return response
