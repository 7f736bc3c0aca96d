"""SchedulerService process. Until issue 4 lands it serves health only, and says so."""

from __future__ import annotations

import grpc

from sentinel.common.v1 import common_pb2
from sentinel.platform.server import Runtime, ServiceSpec
from sentinel.scheduler.v1 import scheduler_service_pb2


def spec() -> ServiceSpec:
    def register(server: grpc.aio.Server, runtime: Runtime) -> None:
        """No SchedulerService handlers yet: its RPCs answer UNIMPLEMENTED."""

    return ServiceSpec(
        name="scheduler",
        implements=[scheduler_service_pb2.DESCRIPTOR.services_by_name["SchedulerService"].full_name],
        register=register,
        needs_database=False,
        status=common_pb2.SERVING_STATUS_DEGRADED,
        detail="health only: the SchedulerService API is not implemented yet (issue 4)",
    )
