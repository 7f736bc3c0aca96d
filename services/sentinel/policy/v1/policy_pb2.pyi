from google.protobuf import descriptor_pb2 as _descriptor_pb2
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class TenantScope(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TENANT_SCOPE_UNSPECIFIED: _ClassVar[TenantScope]
    TENANT_SCOPE_PUBLIC: _ClassVar[TenantScope]
    TENANT_SCOPE_AUTHENTICATED: _ClassVar[TenantScope]
    TENANT_SCOPE_TENANT: _ClassVar[TenantScope]
    TENANT_SCOPE_PLATFORM: _ClassVar[TenantScope]
    TENANT_SCOPE_INTERNAL: _ClassVar[TenantScope]
TENANT_SCOPE_UNSPECIFIED: TenantScope
TENANT_SCOPE_PUBLIC: TenantScope
TENANT_SCOPE_AUTHENTICATED: TenantScope
TENANT_SCOPE_TENANT: TenantScope
TENANT_SCOPE_PLATFORM: TenantScope
TENANT_SCOPE_INTERNAL: TenantScope
POLICY_FIELD_NUMBER: _ClassVar[int]
policy: _descriptor.FieldDescriptor

class Policy(_message.Message):
    __slots__ = ("permission", "tenant_scope", "audit_action", "idempotent", "tenant_field")
    PERMISSION_FIELD_NUMBER: _ClassVar[int]
    TENANT_SCOPE_FIELD_NUMBER: _ClassVar[int]
    AUDIT_ACTION_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENT_FIELD_NUMBER: _ClassVar[int]
    TENANT_FIELD_FIELD_NUMBER: _ClassVar[int]
    permission: str
    tenant_scope: TenantScope
    audit_action: str
    idempotent: bool
    tenant_field: str
    def __init__(self, permission: _Optional[str] = ..., tenant_scope: _Optional[_Union[TenantScope, str]] = ..., audit_action: _Optional[str] = ..., idempotent: _Optional[bool] = ..., tenant_field: _Optional[str] = ...) -> None: ...
