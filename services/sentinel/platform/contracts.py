"""The proto contracts as data: services, RPCs, their HTTP bindings and policy options.

Everything that must agree with the contract (interceptors, Envoy config, OpenAPI, the
isolation suite, the policy lint) reads it from here, so adding an RPC needs no other edit.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from types import ModuleType

from google.api import annotations_pb2
from google.protobuf import descriptor_pb2
from google.protobuf.descriptor import FileDescriptor, MethodDescriptor, ServiceDescriptor

from sentinel.audit.v1 import audit_service_pb2
from sentinel.common.v1 import common_pb2
from sentinel.policy.v1 import policy_pb2
from sentinel.scheduler.v1 import scheduler_service_pb2
from sentinel.tenant.v1 import tenant_service_pb2
from sentinel.user.v1 import invitation_service_pb2, service_account_service_pb2, user_service_pb2

Policy = policy_pb2.Policy
TenantScope = policy_pb2.TenantScope

#: Every module that defines a Sentinel service, in a stable order.
SERVICE_MODULES: tuple[ModuleType, ...] = (
    common_pb2,
    tenant_service_pb2,
    user_service_pb2,
    service_account_service_pb2,
    invitation_service_pb2,
    audit_service_pb2,
    scheduler_service_pb2,
)

#: Methods that need no policy: standard gRPC infrastructure, never tenant data.
INFRASTRUCTURE_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")


@dataclass(frozen=True, slots=True)
class HttpRule:
    method: str  # GET, POST, PUT, PATCH, DELETE
    path: str  # template, e.g. /api/v1/users/{id}
    body: str
    response_body: str


@dataclass(frozen=True, slots=True)
class Rpc:
    service: ServiceDescriptor
    method: MethodDescriptor
    policy: policy_pb2.Policy
    http: tuple[HttpRule, ...]

    @property
    def full_method(self) -> str:
        """The gRPC path, e.g. ``/sentinel.user.v1.UserService/GetUser``."""
        return f"/{self.service.full_name}/{self.method.name}"

    @property
    def mutating(self) -> bool:
        return bool(self.policy.audit_action) or any(h.method != "GET" for h in self.http)

    @property
    def public(self) -> bool:
        return self.policy.tenant_scope == policy_pb2.TENANT_SCOPE_PUBLIC

    @property
    def streaming(self) -> bool:
        return bool(self.method.server_streaming or self.method.client_streaming)


def _http_rules(method: MethodDescriptor) -> tuple[HttpRule, ...]:
    opts = method.GetOptions()
    if not opts.HasExtension(annotations_pb2.http):
        return ()
    rule = opts.Extensions[annotations_pb2.http]
    out: list[HttpRule] = []
    for r in [rule, *rule.additional_bindings]:
        kind = r.WhichOneof("pattern")
        if kind is None or kind == "custom":
            continue
        out.append(HttpRule(kind.upper(), getattr(r, kind), r.body, r.response_body))
    return tuple(out)


def _policy(method: MethodDescriptor) -> policy_pb2.Policy:
    opts = method.GetOptions()
    if not opts.HasExtension(policy_pb2.policy):
        # Refuse to start rather than run an RPC nobody declared a policy for.
        raise LookupError(f"{method.full_name} has no (sentinel.policy.v1.policy) option")
    return opts.Extensions[policy_pb2.policy]


def services() -> list[ServiceDescriptor]:
    return [svc for mod in SERVICE_MODULES for svc in mod.DESCRIPTOR.services_by_name.values()]


@functools.cache
def rpcs() -> tuple[Rpc, ...]:
    return tuple(
        Rpc(svc, m, _policy(m), _http_rules(m)) for svc in services() for m in svc.methods
    )


@functools.cache
def policy_registry() -> dict[str, Rpc]:
    """``full_method`` → :class:`Rpc`, built once at start-up."""
    return {r.full_method: r for r in rpcs()}


def rpc_for(full_method: str) -> Rpc | None:
    return policy_registry().get(full_method)


def file_descriptor_set() -> descriptor_pb2.FileDescriptorSet:
    """All Sentinel files plus their transitive imports, dependencies first.

    This is the descriptor set Envoy's gRPC-JSON transcoder loads. It also carries
    ``google.rpc`` error details so Envoy can render them as JSON.
    """
    from google.rpc import error_details_pb2, status_pb2

    seen: dict[str, FileDescriptor] = {}
    order: list[FileDescriptor] = []

    def visit(fd: FileDescriptor) -> None:
        if fd.name in seen:
            return
        seen[fd.name] = fd
        for dep in fd.dependencies:
            visit(dep)
        order.append(fd)

    for mod in (*SERVICE_MODULES, error_details_pb2, status_pb2):
        visit(mod.DESCRIPTOR)
    fds = descriptor_pb2.FileDescriptorSet()
    for fd in order:
        fd.CopyToProto(fds.file.add())
    return fds
