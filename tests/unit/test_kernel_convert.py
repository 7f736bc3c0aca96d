"""Conversions at the proto edge: enum ↔ text, timestamps, update masks."""

from __future__ import annotations

import datetime as dt

import pytest
from google.protobuf import field_mask_pb2
from sentinel.platform.convert import EnumText, timestamp, update_paths
from sentinel.platform.errors import InvalidArgument
from sentinel.tenant.v1 import tenant_pb2

STATES = EnumText(tenant_pb2.TenantState, "TENANT_STATE_")
PLANS = EnumText(tenant_pb2.TenantPlan, "TENANT_PLAN_")
UPDATABLE = ("display_name", "plan")


# --------------------------------------------------------------------------- EnumText


def test_enum_to_text_and_back() -> None:
    assert STATES.text(tenant_pb2.TENANT_STATE_ACTIVE, "state") == "active"
    assert STATES.text(tenant_pb2.TENANT_STATE_PENDING_DELETION, "state") == "pending_deletion"
    for value in (1, 2, 3, 4):
        assert STATES.value(STATES.text(value, "state")) == value


def test_unspecified_is_never_text() -> None:
    assert "unspecified" not in STATES._to_text.values()
    with pytest.raises(KeyError):
        STATES.value("unspecified")


def test_unspecified_uses_the_default_when_given() -> None:
    assert PLANS.text(tenant_pb2.TENANT_PLAN_UNSPECIFIED, "plan", default="free") == "free"
    # A default only stands in for 0, not for a real value.
    assert PLANS.text(tenant_pb2.TENANT_PLAN_ENTERPRISE, "plan", default="free") == "enterprise"


@pytest.mark.parametrize("value", [0, 5, 99, -1])
def test_unknown_or_unspecified_value_is_invalid_argument(value: int) -> None:
    with pytest.raises(InvalidArgument) as info:
        PLANS.text(value, "tenant.plan")
    err = info.value
    assert [(v.field, v.description) for v in err.violations] == [("tenant.plan", "unknown value")]
    assert "TENANT_PLAN_FREE" in err.message and "TENANT_PLAN_ENTERPRISE" in err.message
    assert "UNSPECIFIED" not in err.message


def test_unknown_text_from_the_database_is_a_key_error() -> None:
    with pytest.raises(KeyError):
        STATES.value("ACTIVE")  # case matters: the database holds lower case


# --------------------------------------------------------------------------- timestamp


def test_timestamp_none() -> None:
    assert timestamp(None) is None


def test_timestamp_aware_datetime() -> None:
    when = dt.datetime(2024, 5, 1, 14, 30, 15, 123456, tzinfo=dt.timezone(dt.timedelta(hours=2)))
    ts = timestamp(when)
    assert ts is not None
    assert ts.seconds == int(when.timestamp())
    assert ts.nanos == 123456000
    assert ts.ToDatetime(tzinfo=dt.UTC) == when


def test_timestamp_epoch() -> None:
    ts = timestamp(dt.datetime(1970, 1, 1, tzinfo=dt.UTC))
    assert ts is not None
    assert (ts.seconds, ts.nanos) == (0, 0)


# --------------------------------------------------------------------------- update_paths


def _mask(*paths: str) -> field_mask_pb2.FieldMask:
    return field_mask_pb2.FieldMask(paths=list(paths))


def test_no_mask_updates_the_fields_present_in_the_body() -> None:
    body = tenant_pb2.Tenant(display_name="Acme", slug="acme")
    # slug is present but not updatable: it is silently not part of the update.
    assert update_paths(body, _mask(), UPDATABLE) == ["display_name"]
    body.plan = tenant_pb2.TENANT_PLAN_STANDARD
    assert update_paths(body, _mask(), UPDATABLE) == ["display_name", "plan"]


def test_no_mask_and_empty_body_updates_nothing() -> None:
    assert update_paths(tenant_pb2.Tenant(), _mask(), UPDATABLE) == []


def test_mask_names_exactly_its_paths_even_default_values() -> None:
    # With a mask a field can be cleared: display_name="" is applied because the mask names it.
    assert update_paths(tenant_pb2.Tenant(plan=2), _mask("display_name"), UPDATABLE) == ["display_name"]


def test_star_mask_means_every_updatable_field() -> None:
    assert update_paths(tenant_pb2.Tenant(), _mask("*"), UPDATABLE) == list(UPDATABLE)


def test_mask_duplicates_are_collapsed_in_order() -> None:
    assert update_paths(tenant_pb2.Tenant(), _mask("plan", "display_name", "plan"), UPDATABLE) == [
        "plan", "display_name"]


@pytest.mark.parametrize("paths", [("slug",), ("id",), ("display_name", "state"), ("*", "plan"),
                                   ("display_name; DROP TABLE tenants",), ("",)])
def test_mask_with_non_updatable_paths_is_invalid_argument(paths: tuple[str, ...]) -> None:
    with pytest.raises(InvalidArgument) as info:
        update_paths(tenant_pb2.Tenant(), _mask(*paths), UPDATABLE)
    bad = [p for p in paths if p not in UPDATABLE]
    assert [v.field for v in info.value.violations] == ["update_mask"] * len(bad)
    assert [v.description for v in info.value.violations] == [f"'{p}' cannot be updated" for p in bad]
    assert "display_name, plan" in info.value.message


def test_allowed_may_be_any_iterable() -> None:
    assert update_paths(tenant_pb2.Tenant(display_name="x"), _mask(), iter(UPDATABLE)) == ["display_name"]
    assert update_paths(tenant_pb2.Tenant(), _mask("*"), (p for p in UPDATABLE)) == list(UPDATABLE)
