"""AuditService process. Until issue 3 lands it serves health only, and says so."""

from __future__ import annotations

import grpc

from sentinel.audit.v1 import audit_service_pb2
from sentinel.common.v1 import common_pb2
from sentinel.platform.server import Runtime, ServiceSpec


def spec() -> ServiceSpec:
    def register(server: grpc.aio.Server, runtime: Runtime) -> None:
        """No AuditService handlers yet: its RPCs answer UNIMPLEMENTED."""

    return ServiceSpec(
        name="audit",
        implements=[audit_service_pb2.DESCRIPTOR.services_by_name["AuditService"].full_name],
        register=register,
        needs_database=False,
        status=common_pb2.SERVING_STATUS_DEGRADED,
        detail="health only: the AuditService API is not implemented yet (issue 3)",
    )
