"""Shared input checks: text lengths and control characters, e-mail addresses, slugs."""

from __future__ import annotations

import pytest
from sentinel.platform import validation
from sentinel.platform.errors import FieldViolation


def _text(value: str, **kw: int) -> list[FieldViolation]:
    out: list[FieldViolation] = []
    validation.text("display_name", value, out=out, **{"max_len": 10, **kw})
    return out


def _email(value: str) -> list[FieldViolation]:
    out: list[FieldViolation] = []
    validation.email("email", value, out)
    return out


def _slug(value: str) -> list[FieldViolation]:
    out: list[FieldViolation] = []
    validation.slug("slug", value, out)
    return out


# --------------------------------------------------------------------------- text


def test_text_within_bounds() -> None:
    assert _text("") == []
    assert _text("x" * 10) == []
    assert _text("Ünïcødé ✓", min_len=1) == []


def test_text_required() -> None:
    assert _text("", min_len=1) == [FieldViolation("display_name", "is required")]


def test_text_too_short() -> None:
    assert _text("ab", min_len=3) == [FieldViolation("display_name", "must be at least 3 characters")]
    assert _text("", min_len=3) == [FieldViolation("display_name", "must be at least 3 characters")]


def test_text_too_long_counts_characters_not_bytes() -> None:
    assert _text("x" * 11) == [FieldViolation("display_name", "must be at most 10 characters")]
    assert _text("é" * 10) == []  # 20 bytes in UTF-8, 10 characters
    assert _text("x" * 1_000_000) == [FieldViolation("display_name", "must be at most 10 characters")]


@pytest.mark.parametrize("value", ["a\x00b", "tab\t", "line\nbreak", "cr\r", "esc\x1b[31m", "del\x7f"])
def test_text_rejects_control_characters(value: str) -> None:
    assert _text(value) == [FieldViolation("display_name", "must not contain control characters")]


@pytest.mark.parametrize("value", ["O'Brien", 'a"b', "x; --", "1 OR 1=1", "%_\\", "<b>&</b>"])
def test_text_accepts_sql_and_html_metacharacters_as_data(value: str) -> None:
    assert _text(value, max_len=50) == []


def test_text_reports_one_violation_and_appends() -> None:
    out = [FieldViolation("other", "x")]
    validation.text("name", "\x00" * 20, max_len=10, out=out)
    assert out == [FieldViolation("other", "x"), FieldViolation("name", "must be at most 10 characters")]


# --------------------------------------------------------------------------- email


@pytest.mark.parametrize("value", [
    "a@example.com", "first.last+tag@sub.example.co.uk", "o'brien@example.com", "UPPER@EXAMPLE.COM",
    "x@a-b.example", "jörg@example.de", "1@2.3", "a" * 64 + "@example.com",
])
def test_valid_emails(value: str) -> None:
    assert _email(value) == []


def test_email_required() -> None:
    assert _email("") == [FieldViolation("email", "is required")]


@pytest.mark.parametrize("value", [
    "plain", "@example.com", "a@", "a@b", "a@@example.com", "a@example..com", "a@-example.com",
    "a@example-.com", "a b@example.com", "a@exa mple.com", "a\x00@example.com", "a@example.com ",
    " a@example.com", "a" * 65 + "@example.com", "a@" + "b" * 64 + ".com", "a@example.com\n",
    "a@example.com\nBcc: victim@example.com", "a@example.com\r\n", "a@example_.com",
    "a@" + ".".join(["b" * 60] * 6) + ".com",  # over 320 characters in total
])
def test_invalid_emails(value: str) -> None:
    assert _email(value) == [FieldViolation("email", "must be an e-mail address like name@example.com")]


def test_email_length_limit_is_320_characters() -> None:
    domain = ".".join(["b" * 63] * 3) + "." + "b" * 61 + ".c"
    value = "a" * 64 + "@" + domain
    assert len(value) == 320
    assert _email(value) == []
    assert _email("a" + value) != []  # 65-character local part
    assert _email(value + "c") != []  # 321 characters


# --------------------------------------------------------------------------- slug


@pytest.mark.parametrize("value", ["abc", "acme", "acme-corp", "a1b", "123", "a" * 63, "a--b"])
def test_valid_slugs(value: str) -> None:
    assert _slug(value) == []


@pytest.mark.parametrize("value", [
    "", "a", "ab", "a" * 64, "-abc", "abc-", "Acme", "ac_me", "ac me", "acme\n", "\nacme", "ac.me",
    "acmé", "acme'; DROP TABLE tenants; --", "ac%me",
])
def test_invalid_slugs(value: str) -> None:
    out = _slug(value)
    assert len(out) == 1
    assert out[0].field == "slug"
    assert "3-63 characters" in out[0].description


def test_checks_append_to_the_same_list() -> None:
    out: list[FieldViolation] = []
    validation.email("email", "nope", out)
    validation.slug("slug", "NO", out)
    validation.text("display_name", "", min_len=1, max_len=200, out=out)
    assert [v.field for v in out] == ["email", "slug", "display_name"]
