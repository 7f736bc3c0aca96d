"""The watchdog's handles on auditd: is it running (pid file and /proc), signal it, run commands.

Both are interfaces so tests drive a fake auditd (a real child process with its own pid file)
and fake commands; the real ones refuse to run under pytest (:mod:`sentinel.host.safety`).
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from sentinel.host.safety import refuse_in_tests

__all__ = ["DEFAULT_PID_FILE", "Auditd", "CommandRunner", "Commands", "PidFileAuditd", "run_command"]

DEFAULT_PID_FILE = Path("/run/auditd.pid")


class Auditd(Protocol):
    def pid(self) -> int | None:
        """The running daemon's pid, or None when it is not running."""

    def signal(self, sig: signal.Signals) -> None:
        """Send ``sig`` to the daemon (raises ProcessLookupError when it is gone)."""


class PidFileAuditd:
    """auditd found by its pid file (``/run/auditd.pid``), checked against /proc: the pid must
    exist, not be a zombie, and have the expected ``comm``, so a stale pid file whose pid was
    reused is "not running". Without a pid file, /proc is scanned for the comm."""

    def __init__(self, pid_file: Path = DEFAULT_PID_FILE, comm: str = "auditd", proc: Path = Path("/proc")) -> None:
        if pid_file == DEFAULT_PID_FILE:
            refuse_in_tests("watch the real auditd")
        self.pid_file = pid_file
        self.comm = comm
        self.proc = proc

    def _is_auditd(self, pid: int) -> bool:
        try:
            stat = (self.proc / str(pid) / "stat").read_text()
        except OSError:
            return False
        comm = stat[stat.index("(") + 1:stat.rindex(")")]
        state = stat[stat.rindex(")") + 2:].split()[0]
        return comm == self.comm and state not in ("Z", "X")

    def pid(self) -> int | None:
        try:
            pid = int(self.pid_file.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            pid = 0
        if pid > 0 and self._is_auditd(pid):
            return pid
        if pid > 0 or self.pid_file != DEFAULT_PID_FILE:
            return None  # a stale pid file, or a test's pid file: no /proc-wide guessing
        for entry in self.proc.iterdir():
            if entry.name.isdigit() and self._is_auditd(int(entry.name)):
                return int(entry.name)
        return None

    def signal(self, sig: signal.Signals) -> None:
        pid = self.pid()
        if pid is None:
            raise ProcessLookupError("auditd is not running")
        os.kill(pid, sig)


class CommandRunner(Protocol):
    def __call__(self, argv: Sequence[str], timeout: float) -> tuple[int, str]:
        """Run ``argv``; return its exit status and its output (stdout and stderr)."""


def run_command(argv: Sequence[str], timeout: float) -> tuple[int, str]:
    try:
        p = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, check=False)
    except FileNotFoundError as e:
        return 127, str(e)
    except subprocess.TimeoutExpired:
        return 124, f"timed out after {timeout:g}s"
    return p.returncode, (p.stdout + p.stderr).strip()


@dataclass(frozen=True)
class Commands:
    """The commands behind the command actions (each an argv)."""

    start: tuple[str, ...] = ("systemctl", "start", "auditd")
    restart: tuple[str, ...] = ("systemctl", "restart", "auditd")
    reload_rules: tuple[str, ...] = ("augenrules", "--load")
    list_rules: tuple[str, ...] = ("auditctl", "-l")

    @classmethod
    def parse(cls, **overrides: str | None) -> Commands:
        """From command strings (shell-quoted), keeping the default for each None."""
        base = cls()
        values = {k: tuple(shlex.split(v)) if v else getattr(base, k) for k, v in overrides.items()}
        return cls(**values)

    def defaults_in_use(self) -> list[str]:
        base = Commands()
        return [name for name in ("start", "restart", "reload_rules", "list_rules")
                if getattr(self, name) == getattr(base, name)]
