"""Refuses requests with a NUL character in any text field, before anything else looks at them.

Postgres text cannot hold U+0000, so such a value would otherwise fail deep inside a query (an
INTERNAL error, a 500) or, worse, in the audit outbox after the work was done. One check here
covers every string of every request, nested messages, lists, maps and Struct values included.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator
from typing import Any

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from sentinel.platform.calls import Call
from sentinel.platform.errors import FieldViolation, InvalidArgument


def nul_fields(message: Message, prefix: str = "") -> Iterator[str]:
    """Paths of the string fields of ``message`` that contain a NUL character."""
    for field, value in message.ListFields():
        path = prefix + field.name
        if field.type == FieldDescriptor.TYPE_STRING:
            values: Any = value if field.is_repeated else [value]
            if any("\x00" in v for v in values):
                yield path
        elif field.type == FieldDescriptor.TYPE_MESSAGE:
            if field.message_type is not None and field.message_type.GetOptions().map_entry:
                for key, item in value.items():
                    if "\x00" in str(key) or (isinstance(item, str) and "\x00" in item):
                        yield f"{path}[{key!r}]"
                    elif isinstance(item, Message):
                        yield from nul_fields(item, f"{path}[{key!r}].")
            elif field.is_repeated:
                for i, item in enumerate(value):
                    yield from nul_fields(item, f"{path}[{i}].")
            else:
                yield from nul_fields(value, path + ".")


class InputInterceptor:
    @contextlib.asynccontextmanager
    async def scope(self, call: Call) -> AsyncIterator[None]:
        if isinstance(call.request, Message):
            bad = list(nul_fields(call.request))
            if bad:
                raise InvalidArgument(f"{bad[0]} contains a NUL character (U+0000), which no field accepts",
                                      [FieldViolation(path, "contains a NUL character") for path in bad[:20]])
        yield
