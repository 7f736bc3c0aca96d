import datetime

from google.api import field_behavior_pb2 as _field_behavior_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class TenantState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TENANT_STATE_UNSPECIFIED: _ClassVar[TenantState]
    TENANT_STATE_ACTIVE: _ClassVar[TenantState]
    TENANT_STATE_SUSPENDED: _ClassVar[TenantState]
    TENANT_STATE_PENDING_DELETION: _ClassVar[TenantState]
    TENANT_STATE_DELETED: _ClassVar[TenantState]

class TenantPlan(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TENANT_PLAN_UNSPECIFIED: _ClassVar[TenantPlan]
    TENANT_PLAN_FREE: _ClassVar[TenantPlan]
    TENANT_PLAN_STANDARD: _ClassVar[TenantPlan]
    TENANT_PLAN_ENTERPRISE: _ClassVar[TenantPlan]
TENANT_STATE_UNSPECIFIED: TenantState
TENANT_STATE_ACTIVE: TenantState
TENANT_STATE_SUSPENDED: TenantState
TENANT_STATE_PENDING_DELETION: TenantState
TENANT_STATE_DELETED: TenantState
TENANT_PLAN_UNSPECIFIED: TenantPlan
TENANT_PLAN_FREE: TenantPlan
TENANT_PLAN_STANDARD: TenantPlan
TENANT_PLAN_ENTERPRISE: TenantPlan

class Tenant(_message.Message):
    __slots__ = ("id", "slug", "display_name", "plan", "state", "create_time", "update_time", "etag")
    ID_FIELD_NUMBER: _ClassVar[int]
    SLUG_FIELD_NUMBER: _ClassVar[int]
    DISPLAY_NAME_FIELD_NUMBER: _ClassVar[int]
    PLAN_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    UPDATE_TIME_FIELD_NUMBER: _ClassVar[int]
    ETAG_FIELD_NUMBER: _ClassVar[int]
    id: str
    slug: str
    display_name: str
    plan: TenantPlan
    state: TenantState
    create_time: _timestamp_pb2.Timestamp
    update_time: _timestamp_pb2.Timestamp
    etag: str
    def __init__(self, id: _Optional[str] = ..., slug: _Optional[str] = ..., display_name: _Optional[str] = ..., plan: _Optional[_Union[TenantPlan, str]] = ..., state: _Optional[_Union[TenantState, str]] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., update_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., etag: _Optional[str] = ...) -> None: ...
