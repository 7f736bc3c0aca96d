"""Password policy (shipped common-password list) and hashing: argon2id, bcrypt import, rehash."""

from __future__ import annotations

import bcrypt
import pytest
from sentinel.platform.config import Settings
from sentinel.platform.errors import FieldViolation
from sentinel.user import passwords as pw

FAST = {"argon2_time_cost": 1, "argon2_memory_cost_kib": 1024, "argon2_parallelism": 1}


def problems(password: str, *, email: str = "", min_len: int = 12) -> list[str]:
    out: list[FieldViolation] = []
    pw.check_password("new_password", password, min_len, out, email=email)
    assert all(v.field == "new_password" for v in out)
    return [v.description for v in out]


def test_shipped_list_is_loaded_and_sane() -> None:
    common = pw.common_passwords()
    assert len(common) > 10_000
    assert {"password", "baseball", "qwertyuiop", "1qaz2wsx"} <= common
    assert all(len(p) >= 8 and p == p.lower() and p.strip() == p for p in common)
    assert not any(p.startswith("#") for p in common)  # the header is not a password


@pytest.mark.parametrize("password", ["qwertyuiop123", "Password1234", "BASEBALL2024!!", "iloveyou12345"])
def test_common_passwords_and_decorated_ones_are_refused(password: str) -> None:
    assert problems(password) == ["is one of the most common passwords in leaked password lists; choose another"]


@pytest.mark.parametrize("password", ["correct horse battery staple", "Tr0ub4dor&3-extended", "x" * 256])
def test_good_passwords_pass(password: str) -> None:
    assert problems(password) == []


def test_length_bounds_and_required() -> None:
    assert problems("") == ["is required"]
    assert problems("12345678901234") == ["must not be digits only"]
    assert problems("short") == ["must be at least 12 characters"]
    assert problems("y" * 257) == [f"must be at most {pw.MAX_PASSWORD} characters"]
    assert problems("eight ch", min_len=8) == []


def test_password_must_not_be_the_email() -> None:
    email = "Alice.Smith.Jones@example.com"
    message = ["must not be the e-mail address or its name part"]
    assert problems("alice.smith.jones@example.com!", email=email) == message
    assert problems("Alice.Smith.Jones2024!", email=email) == message
    # Words of the address inside a longer passphrase are fine (no false refusals).
    assert problems("a long owner password", email="owner@acme.example") == []


@pytest.fixture(scope="module")
def passwords() -> pw.Passwords:
    return pw.Passwords(Settings(**FAST))  # type: ignore[arg-type]


async def test_argon2_roundtrip_and_rehash_on_new_parameters(passwords: pw.Passwords) -> None:
    stored = await passwords.hash("correct horse battery staple")
    assert stored.startswith("$argon2id$")
    assert await passwords.verify(stored, "correct horse battery staple")
    assert not await passwords.verify(stored, "correct horse battery stapler")
    assert not passwords.needs_rehash(stored)
    stronger = pw.Passwords(Settings(**{**FAST, "argon2_time_cost": 2}))  # type: ignore[arg-type]
    assert stronger.needs_rehash(stored)
    assert await stronger.verify(stored, "correct horse battery staple")  # old hashes still verify


@pytest.mark.parametrize("prefix", [b"2b", b"2a"])
async def test_bcrypt_hashes_from_the_old_stack_verify_and_need_rehash(passwords: pw.Passwords,
                                                                       prefix: bytes) -> None:
    stored = bcrypt.hashpw(b"old stack password", bcrypt.gensalt(rounds=4, prefix=prefix)).decode()
    assert stored.startswith(f"${prefix.decode()}$")
    assert await passwords.verify(stored, "old stack password")
    assert not await passwords.verify(stored, "old stack passwort")
    assert passwords.needs_rehash(stored)


async def test_bcrypt_edge_cases_fail_closed(passwords: pw.Passwords) -> None:
    stored = bcrypt.hashpw(b"a" * 72, bcrypt.gensalt(rounds=4)).decode()
    assert await passwords.verify(stored, "a" * 72)
    # bcrypt ignores bytes after 72; accepting a longer input would accept any suffix.
    assert not await passwords.verify(stored, "a" * 72 + "anything")
    assert not await passwords.verify("$2b$04$not-a-real-hash", "whatever")
    assert not await passwords.verify(None, "whatever")  # unknown account: still one slow verify


async def test_unknown_accounts_cost_a_full_verification() -> None:
    """With production argon2 parameters a miss must not be measurably faster than a real check."""
    import time

    passwords = pw.Passwords(Settings())
    stored = await passwords.hash("correct horse battery staple")

    async def timed(stored_hash: str | None) -> float:
        start = time.perf_counter()
        assert not await passwords.verify(stored_hash, "wrong guess")
        return time.perf_counter() - start

    real, missing = [], []
    for _ in range(3):  # interleaved, medians: noise hits both alike
        real.append(await timed(stored))
        missing.append(await timed(None))
    ratio = sorted(missing)[1] / sorted(real)[1]
    assert 0.5 < ratio < 2.0, (real, missing)  # a skipped hash would be ~1000x faster
