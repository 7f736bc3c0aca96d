"""Small clients for integration tests: gRPC stubs by service name and a REST helper."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import grpc
import httpx
from google.protobuf import json_format
from google.protobuf.message import Message
from sentinel.platform import contracts


@dataclass
class Principal:
    name: str
    tenant_id: str
    user_id: str
    token: str

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.token}"),)

    @property
    def headers(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self.token}"}


async def unary(channel: grpc.aio.Channel, rpc: contracts.Rpc, request: Message,
                token: str | None = None) -> Message:
    """Call any RPC by descriptor, without generated stubs (the suite is generic)."""
    out_cls: Any = type(_new(rpc.method.output_type))
    method = channel.unary_unary(rpc.full_method, request_serializer=lambda m: m.SerializeToString(),
                                 response_deserializer=out_cls.FromString)
    metadata = (("authorization", f"Bearer {token}"),) if token else ()
    return await method(request, metadata=metadata, timeout=10)  # type: ignore[no-any-return]


def _new(descriptor: Any) -> Message:
    from google.protobuf import message_factory

    return message_factory.GetMessageClass(descriptor)()


def new_request(rpc: contracts.Rpc) -> Message:
    return _new(rpc.method.input_type)


def rest_call(client: httpx.Client, rule: contracts.HttpRule, request: Message,
              token: str | None) -> httpx.Response:
    """Turn a request message into the REST call its google.api.http rule describes."""
    body = json_format.MessageToDict(request, preserving_proto_field_name=True)
    path = rule.path
    import re

    for match in re.findall(r"\{([^}=]+)(?:=[^}]*)?\}", rule.path):
        value: Any = body
        for part in match.split("."):
            value = value.get(part, "") if isinstance(value, dict) else ""
        path = re.sub(r"\{" + re.escape(match) + r"(=[^}]*)?\}", str(value) or "-", path)
        _drop(body, match.split("."))
    headers = {"authorization": f"Bearer {token}"} if token else {}
    if rule.body == "*":
        return client.request(rule.method, path, json=body, headers=headers)
    if rule.body:
        return client.request(rule.method, path, json=body.get(rule.body, {}), headers=headers)
    params = {k: (json.dumps(v) if isinstance(v, dict | list) else v) for k, v in body.items()}
    return client.request(rule.method, path, params=params, headers=headers)


def _drop(body: dict[str, Any], parts: list[str]) -> None:
    for part in parts[:-1]:
        body = body.get(part, {})
        if not isinstance(body, dict):
            return
    body.pop(parts[-1], None)


async def status_of(call: Any) -> grpc.StatusCode:
    """The status an RPC ends with (OK or the error's code)."""
    try:
        await call
    except grpc.aio.AioRpcError as err:
        return err.code()
    return grpc.StatusCode.OK


async def sentinel_cli(stack: Any, *args: str, **env: str) -> tuple[int, str]:
    """Run ``python -m sentinel ARGS`` against the stack's database (and ``env``): exit code, output."""
    import asyncio
    import os
    import sys

    full_env = {**os.environ, "SENTINEL_DATABASE_URL": stack.app_url, **env}
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "sentinel", *args, env=full_env,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode or 0, out.decode()
