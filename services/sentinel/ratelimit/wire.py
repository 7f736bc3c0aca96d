"""The messages of Envoy's rate-limit API (``envoy/service/ratelimit/v3/rls.proto``), wire-compatible.

Why not the PyPI ``xds-protos`` classes: that wheel also ships its own, older copies of
``opentelemetry/proto/*_pb2.py``, which overwrite (or are overwritten by) the real
``opentelemetry-proto`` depending on install order, breaking the OTLP exporter; and Nix refuses
the file collision outright. The service needs only the fields below, so they are declared here
under a package of our own (no clash in the descriptor pool with xds-protos in the dev tools),
with Envoy's field numbers and types: protobuf's wire format knows numbers, not names. The gRPC
method is registered under Envoy's service name (``SERVICE``).
"""

from __future__ import annotations

from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, duration_pb2, message_factory, struct_pb2

# Imported for their registration in the default pool, which the file below depends on.
_DEPENDENCIES = (duration_pb2, struct_pb2)

SERVICE = "envoy.service.ratelimit.v3.RateLimitService"
METHOD = "ShouldRateLimit"
_PACKAGE = "sentinel.ratelimit.wire"

F = descriptor_pb2.FieldDescriptorProto
_REPEATED, _OPTIONAL = F.LABEL_REPEATED, F.LABEL_OPTIONAL


def _field(name: str, number: int, kind: F.Type.ValueType, type_name: str = "", repeated: bool = False) -> F:
    field = F(name=name, number=number, type=kind, label=_REPEATED if repeated else _OPTIONAL)
    if type_name:  # messages and enums only
        field.type_name = type_name
    return field


def _file() -> descriptor_pb2.FileDescriptorProto:
    f = descriptor_pb2.FileDescriptorProto(name="sentinel/ratelimit/wire.proto", package=_PACKAGE, syntax="proto3",
                                           dependency=["google/protobuf/duration.proto",
                                                       "google/protobuf/struct.proto"])
    p = f".{_PACKAGE}."
    # envoy.extensions.common.ratelimit.v3.RateLimitDescriptor (entries = 1; Entry: key = 1, value = 2)
    descriptor = f.message_type.add(name="RateLimitDescriptor")
    entry = descriptor.nested_type.add(name="Entry")
    entry.field.extend([_field("key", 1, F.TYPE_STRING), _field("value", 2, F.TYPE_STRING)])
    descriptor.field.append(_field("entries", 1, F.TYPE_MESSAGE, p + "RateLimitDescriptor.Entry", repeated=True))
    # envoy.service.ratelimit.v3.RateLimitRequest (domain = 1, descriptors = 2, hits_addend = 3)
    request = f.message_type.add(name="RateLimitRequest")
    request.field.extend([_field("domain", 1, F.TYPE_STRING),
                          _field("descriptors", 2, F.TYPE_MESSAGE, p + "RateLimitDescriptor", repeated=True),
                          _field("hits_addend", 3, F.TYPE_UINT32)])
    # envoy.config.core.v3.HeaderValue (key = 1, value = 2)
    header = f.message_type.add(name="HeaderValue")
    header.field.extend([_field("key", 1, F.TYPE_STRING), _field("value", 2, F.TYPE_STRING)])
    # envoy.service.ratelimit.v3.RateLimitResponse
    response = f.message_type.add(name="RateLimitResponse")
    code = response.enum_type.add(name="Code")
    code.value.add(name="UNKNOWN", number=0)
    code.value.add(name="OK", number=1)
    code.value.add(name="OVER_LIMIT", number=2)
    limit = response.nested_type.add(name="RateLimit")
    unit = limit.enum_type.add(name="Unit")
    for number, name in enumerate(("UNKNOWN", "SECOND", "MINUTE", "HOUR", "DAY")):
        unit.value.add(name=name, number=number)
    limit.field.extend([_field("requests_per_unit", 1, F.TYPE_UINT32),
                        _field("unit", 2, F.TYPE_ENUM, p + "RateLimitResponse.RateLimit.Unit"),
                        _field("name", 3, F.TYPE_STRING)])
    status = response.nested_type.add(name="DescriptorStatus")
    status.field.extend([_field("code", 1, F.TYPE_ENUM, p + "RateLimitResponse.Code"),
                         _field("current_limit", 2, F.TYPE_MESSAGE, p + "RateLimitResponse.RateLimit"),
                         _field("limit_remaining", 3, F.TYPE_UINT32),
                         _field("duration_until_reset", 4, F.TYPE_MESSAGE, ".google.protobuf.Duration")])
    response.field.extend([_field("overall_code", 1, F.TYPE_ENUM, p + "RateLimitResponse.Code"),
                           _field("statuses", 2, F.TYPE_MESSAGE, p + "RateLimitResponse.DescriptorStatus",
                                  repeated=True),
                           _field("response_headers_to_add", 3, F.TYPE_MESSAGE, p + "HeaderValue", repeated=True),
                           _field("request_headers_to_add", 4, F.TYPE_MESSAGE, p + "HeaderValue", repeated=True),
                           _field("dynamic_metadata", 6, F.TYPE_MESSAGE, ".google.protobuf.Struct")])
    return f


_pool = descriptor_pool.Default()
_pool.Add(_file())
RateLimitRequest: Any = message_factory.GetMessageClass(_pool.FindMessageTypeByName(f"{_PACKAGE}.RateLimitRequest"))
RateLimitResponse: Any = message_factory.GetMessageClass(_pool.FindMessageTypeByName(f"{_PACKAGE}.RateLimitResponse"))
