"""Input checks shared by services. Each returns violations; callers raise them together.

Patterns are applied with ``fullmatch``: ``re.match`` with ``$`` also accepts a trailing newline.
"""

from __future__ import annotations

import re

from sentinel.platform.errors import FieldViolation

EMAIL = re.compile(r"^[^@\s\x00-\x1f]{1,64}@[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
                   r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)+$")
SLUG = re.compile(r"^[a-z0-9][a-z0-9-]{1,61}[a-z0-9]$")
CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def text(field: str, value: str, *, min_len: int = 0, max_len: int, out: list[FieldViolation]) -> None:
    if len(value) < min_len:
        out.append(FieldViolation(field, "is required" if min_len == 1 and not value
                                  else f"must be at least {min_len} characters"))
    elif len(value) > max_len:
        out.append(FieldViolation(field, f"must be at most {max_len} characters"))
    elif CONTROL.search(value):
        out.append(FieldViolation(field, "must not contain control characters"))


def email(field: str, value: str, out: list[FieldViolation]) -> None:
    if not value:
        out.append(FieldViolation(field, "is required"))
    elif len(value) > 320 or not EMAIL.fullmatch(value):
        out.append(FieldViolation(field, "must be an e-mail address like name@example.com"))


def slug(field: str, value: str, out: list[FieldViolation]) -> None:
    if not SLUG.fullmatch(value):
        out.append(FieldViolation(field, "must be 3-63 characters of a-z, 0-9 and '-', "
                                         "starting and ending with a letter or digit"))
