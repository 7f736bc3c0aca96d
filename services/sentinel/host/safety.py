"""A guard that keeps tests away from the real host: its /etc, its kernel and its auditd.

Root on CI machines can reach the kernel's audit subsystem, so a test that forgot ``--root`` or a
fake command would load rules into the machine it runs on, or signal the real auditd. Every code
path that touches the real system calls :func:`refuse_in_tests` first; pytest sets
``PYTEST_CURRENT_TEST`` for the test process and everything it starts.
"""

from __future__ import annotations

import os

__all__ = ["RealSystemRefused", "refuse_in_tests", "under_test"]


class RealSystemRefused(RuntimeError):
    """Raised instead of touching the real host while running under pytest."""


def under_test() -> bool:
    return "PYTEST_CURRENT_TEST" in os.environ


def refuse_in_tests(what: str) -> None:
    if under_test():
        raise RealSystemRefused(f"refusing to {what} under pytest (PYTEST_CURRENT_TEST is set); "
                                "tests use a temporary --root and fake commands")
