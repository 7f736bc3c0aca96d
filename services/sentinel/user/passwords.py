"""Passwords: argon2id hashing off the event loop, bcrypt import, and the password policy.

Hashes from the old stack are bcrypt (``$2a$``/``$2b$``/``$2y$``): they verify, and the next
successful login replaces them with argon2id, as it does an argon2 hash whose parameters are
older than the configured ones.
"""

from __future__ import annotations

import asyncio
import functools
import re
from pathlib import Path

import bcrypt
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from sentinel.platform.config import Settings
from sentinel.platform.errors import FieldViolation

#: Longer inputs are refused before hashing: argon2 cost grows with length, so this bounds it.
MAX_PASSWORD = 256
BCRYPT_PREFIXES = ("$2a$", "$2b$", "$2y$")
COMMON_PASSWORDS_FILE = Path(__file__).with_name("common-passwords.txt")
# "Password123!" is "password" with decoration: strip trailing digits and symbols, too.
_DECORATION = re.compile(r"[\d\W_]+$")


@functools.cache
def common_passwords() -> frozenset[str]:
    lines = COMMON_PASSWORDS_FILE.read_text().splitlines()
    return frozenset(line.strip().lower() for line in lines if line and not line.startswith("#"))


def check_password(field: str, password: str, min_len: int, out: list[FieldViolation], *,
                   email: str = "") -> None:
    """Append what is wrong with a new password to ``out`` (nothing when it is acceptable)."""
    if not password:
        out.append(FieldViolation(field, "is required"))
    elif len(password) < min_len:
        out.append(FieldViolation(field, f"must be at least {min_len} characters"))
    elif len(password) > MAX_PASSWORD:
        out.append(FieldViolation(field, f"must be at most {MAX_PASSWORD} characters"))
    elif password.isdigit():
        out.append(FieldViolation(field, "must not be digits only"))
    elif is_common(password):
        out.append(FieldViolation(field, "is one of the most common passwords in leaked password lists; "
                                         "choose another"))
    elif email and is_email_based(password, email):
        out.append(FieldViolation(field, "must not be the e-mail address or its name part"))


def is_email_based(password: str, email: str) -> bool:
    lowered, email = password.lower(), email.lower()
    return email in lowered or _DECORATION.sub("", lowered) == email.split("@", 1)[0]


def is_common(password: str) -> bool:
    lowered = password.lower()
    common = common_passwords()
    return lowered in common or _DECORATION.sub("", lowered) in common


class Passwords:
    def __init__(self, settings: Settings) -> None:
        self._hasher = PasswordHasher(time_cost=settings.argon2_time_cost,
                                      memory_cost=settings.argon2_memory_cost_kib,
                                      parallelism=settings.argon2_parallelism)
        # Verified against when the account does not exist, so timing does not reveal it.
        self._dummy = self._hasher.hash("sentinel-timing-equaliser")

    async def hash(self, password: str) -> str:
        return await asyncio.to_thread(self._hasher.hash, password)

    def _verify(self, stored: str | None, password: str) -> bool:
        if stored is not None and stored.startswith(BCRYPT_PREFIXES):
            try:
                # bcrypt reads at most 72 bytes; longer passwords are refused rather than truncated.
                secret = password.encode()
                return len(secret) <= 72 and bcrypt.checkpw(secret, stored.encode())
            except ValueError:  # a malformed imported hash
                return False
        try:
            return self._hasher.verify(stored or self._dummy, password) and stored is not None
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False

    async def verify(self, stored: str | None, password: str) -> bool:
        """True when ``password`` matches ``stored``; always costs one slow verification."""
        return await asyncio.to_thread(self._verify, stored, password)

    def needs_rehash(self, stored: str) -> bool:
        """bcrypt hashes, and argon2 hashes made with other parameters, are replaced at login."""
        if stored.startswith(BCRYPT_PREFIXES):
            return True
        try:
            return self._hasher.check_needs_rehash(stored)
        except InvalidHashError:
            return True
