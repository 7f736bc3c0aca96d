"""The exception tree and its mapping to gRPC status codes and ``google.rpc`` details."""

from __future__ import annotations

import grpc
import pytest
from google.rpc import code_pb2, error_details_pb2, status_pb2
from sentinel.platform import errors
from sentinel.platform.errors import (
    Aborted,
    AlreadyExists,
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    SentinelError,
    Unauthenticated,
    Unavailable,
    Unimplemented,
    require,
    to_status,
)

CASES: list[tuple[type[SentinelError], grpc.StatusCode, int, str]] = [
    (InvalidArgument, grpc.StatusCode.INVALID_ARGUMENT, code_pb2.INVALID_ARGUMENT, "INVALID_ARGUMENT"),
    (NotFound, grpc.StatusCode.NOT_FOUND, code_pb2.NOT_FOUND, "NOT_FOUND"),
    (AlreadyExists, grpc.StatusCode.ALREADY_EXISTS, code_pb2.ALREADY_EXISTS, "ALREADY_EXISTS"),
    (FailedPrecondition, grpc.StatusCode.FAILED_PRECONDITION, code_pb2.FAILED_PRECONDITION, "FAILED_PRECONDITION"),
    (Aborted, grpc.StatusCode.ABORTED, code_pb2.ABORTED, "ABORTED"),
    (Unauthenticated, grpc.StatusCode.UNAUTHENTICATED, code_pb2.UNAUTHENTICATED, "UNAUTHENTICATED"),
    (PermissionDenied, grpc.StatusCode.PERMISSION_DENIED, code_pb2.PERMISSION_DENIED, "PERMISSION_DENIED"),
    (ResourceExhausted, grpc.StatusCode.RESOURCE_EXHAUSTED, code_pb2.RESOURCE_EXHAUSTED, "RESOURCE_EXHAUSTED"),
    (Unavailable, grpc.StatusCode.UNAVAILABLE, code_pb2.UNAVAILABLE, "UNAVAILABLE"),
    (Unimplemented, grpc.StatusCode.UNIMPLEMENTED, code_pb2.UNIMPLEMENTED, "UNIMPLEMENTED"),
]


def _info(status: status_pb2.Status) -> error_details_pb2.ErrorInfo:
    info = error_details_pb2.ErrorInfo()
    assert status.details[0].Unpack(info)
    return info


@pytest.mark.parametrize(("cls", "code", "rpc_code", "reason"), CASES, ids=[c[0].__name__ for c in CASES])
def test_each_error_maps_to_its_status(cls: type[SentinelError], code: grpc.StatusCode, rpc_code: int,
                                       reason: str) -> None:
    err = cls("something went wrong")
    assert isinstance(err, SentinelError)
    assert err.code == code
    assert err.reason == reason
    status = to_status(err, domain="sentinel.test")
    assert status.code == rpc_code
    assert status.message == "something went wrong"
    info = _info(status)
    assert (info.reason, info.domain) == (reason, "sentinel.test")


def test_grpc_and_google_rpc_codes_agree() -> None:
    # to_status relies on grpc.StatusCode.value[0] being the google.rpc.Code number.
    for _cls, code, rpc_code, _ in CASES:
        assert code.value[0] == rpc_code


def test_reason_and_metadata_are_per_instance() -> None:
    err = PermissionDenied("no", reason="MISSING_PERMISSION", metadata={"permission": "users.write"})
    info = _info(to_status(err, domain="sentinel.user"))
    assert info.reason == "MISSING_PERMISSION"
    assert dict(info.metadata) == {"permission": "users.write"}
    # The class default is untouched by an instance override.
    assert PermissionDenied.reason == "PERMISSION_DENIED"
    assert PermissionDenied("again").reason == "PERMISSION_DENIED"
    assert PermissionDenied("again").metadata == {}


def test_metadata_is_copied() -> None:
    meta = {"k": "v"}
    err = NotFound("gone", metadata=meta)
    meta["k"] = "changed"
    assert err.metadata == {"k": "v"}


def test_base_error_is_unknown() -> None:
    err = SentinelError("?")
    assert err.code == grpc.StatusCode.UNKNOWN
    assert to_status(err, domain="d").code == code_pb2.UNKNOWN
    assert str(err) == "?"


def test_invalid_argument_carries_bad_request_after_error_info() -> None:
    err = InvalidArgument("bad", [FieldViolation("email", "required"), FieldViolation("slug", "too short")],
                          reason="BAD_FIELDS")
    status = to_status(err, domain="sentinel.tenant")
    assert len(status.details) == 2
    assert status.details[0].Is(error_details_pb2.ErrorInfo.DESCRIPTOR)
    bad = error_details_pb2.BadRequest()
    assert status.details[1].Unpack(bad)
    assert [(v.field, v.description) for v in bad.field_violations] == [
        ("email", "required"), ("slug", "too short")]
    assert _info(status).reason == "BAD_FIELDS"


def test_invalid_argument_without_violations_has_only_error_info() -> None:
    status = to_status(InvalidArgument("bad"), domain="d")
    assert len(status.details) == 1


def test_status_round_trips_through_the_wire_format() -> None:
    err = InvalidArgument("bad", [FieldViolation("f", "d")])
    wire = to_status(err, domain="d").SerializeToString()
    again = status_pb2.Status.FromString(wire)
    assert again.code == code_pb2.INVALID_ARGUMENT
    assert len(again.details) == 2


def test_require_collects_every_violation() -> None:
    require([])  # nothing to report: no exception
    with pytest.raises(InvalidArgument) as info:
        require([FieldViolation("a", "is required"), FieldViolation("b", "too long")])
    assert [v.field for v in info.value.violations] == ["a", "b"]
    assert info.value.message == "the request has invalid fields: a: is required; b: too long"
    with pytest.raises(InvalidArgument, match=r"^nope: a: x$"):
        require([FieldViolation("a", "x")], "nope")


def test_field_violation_is_immutable() -> None:
    v = FieldViolation("a", "b")
    with pytest.raises(AttributeError):
        v.field = "c"  # type: ignore[misc]


def test_every_public_error_class_is_covered() -> None:
    classes = {obj for obj in vars(errors).values()
               if isinstance(obj, type) and issubclass(obj, SentinelError) and obj is not SentinelError}
    assert classes == {c[0] for c in CASES}


def test_resource_exhausted_carries_retry_info_and_retry_after() -> None:
    err = ResourceExhausted("slow down", retry_after_seconds=1.2, reason="LOGIN_THROTTLED")
    status = to_status(err, domain="sentinel.user")
    info = error_details_pb2.RetryInfo()
    assert status.details[-1].Unpack(info) and info.retry_delay.seconds == 2  # rounded up, never 0
    assert err.trailing_metadata() == (("retry-after", "2"),)
    assert ResourceExhausted("x", retry_after_seconds=0.01).retry_after == 1
    plain = ResourceExhausted("quota")
    assert plain.trailing_metadata() == () and len(to_status(plain, domain="d").details) == 1
