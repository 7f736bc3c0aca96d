"""No account enumeration through timing: failed logins cost the same whoever they name.

Medians measured in one run, interleaved and each case first in turn, so machine noise and the
after-work of the previous call hit every case alike. The stack's
cheap test argon2 parameters make the database steps dominate: skipping the user lookup for an
unknown tenant (as an earlier version did) shows as a ratio of ~1.4, equal paths as ~1.1. That
the password hash is always paid is checked with production parameters in
tests/unit/test_passwords.py.
"""

from __future__ import annotations

import statistics
import time
import uuid

import grpc
import pytest
from sentinel.user.v1 import user_service_pb2 as usp
from sentinel.user.v1 import user_service_pb2_grpc as usg

from tests.integration.conftest import PASSWORD, World

pytestmark = pytest.mark.integration
ROUNDS = 30


async def test_failed_logins_take_alike(world: World) -> None:
    auth = usg.AuthServiceStub(world.channels["user"])
    real_email = f"timing-{uuid.uuid4().hex[:6]}@{world.b.slug}.example.com"
    await usg.UserServiceStub(world.channels["user"]).CreateUser(
        usp.CreateUserRequest(email=real_email, password=PASSWORD), metadata=world.b.owner.metadata)
    cases = {  # unknown names are fresh each round, so no account counter reaches its limit
        "existing user, wrong password": lambda: (world.b.slug, real_email),
        "unknown user": lambda: (world.b.slug, f"nobody-{uuid.uuid4().hex[:6]}@example.com"),
        "unknown tenant": lambda: (f"no-such-{uuid.uuid4().hex[:6]}", real_email),
    }
    samples: dict[str, list[float]] = {name: [] for name in cases}
    names = list(cases)
    for i in range(ROUNDS):
        # The first case of a round changes every round and, after each correct login below,
        # the next (that call shares the CPU with the login's after-work: its audit delivery).
        first = i + i // 3
        for n in range(len(names)):
            name = names[(first + n) % len(names)]
            slug, email = cases[name]()
            # A fake client address per attempt keeps the per-IP throttle out of the way.
            md = (("x-forwarded-for", f"10.250.{i}.{n + 1}"),)
            start = time.perf_counter()
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await auth.Login(usp.LoginRequest(tenant=slug, email=email, password="not the password"),
                                 metadata=md)
            samples[name].append(time.perf_counter() - start)
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert err.value.details() == "invalid tenant, e-mail or password"
        if i % 3 == 2:  # a correct login resets the real account's counter, below its limit of 5
            await auth.Login(usp.LoginRequest(tenant=world.b.slug, email=real_email, password=PASSWORD))
    medians = {name: statistics.median(values) for name, values in samples.items()}
    slowest, fastest = max(medians.values()), min(medians.values())
    print({k: f"{v * 1000:.2f} ms" for k, v in medians.items()})
    assert slowest / fastest < 1.35, medians
