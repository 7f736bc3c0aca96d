"""Where the watchdog reads from: log files it follows (rotation and truncation included) and
journald (``journalctl -f -o json``), plus the parser for audit records' keys."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import re
import shutil
import subprocess
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Literal, Protocol

__all__ = ["FileFollower", "JournalFollower", "Source", "audit_keys"]

log = logging.getLogger("sentinel.watchdog")

Kind = Literal["audit", "messages"]


class Source(Protocol):
    """New complete lines since the last call. ``kind`` "audit" marks the audit log (whose
    records are counted per key); "messages" is kernel/syslog text (patterns only)."""

    kind: Kind
    name: str

    def read_new(self) -> list[str]: ...

    def close(self) -> None: ...


class FileFollower:
    """Follows a file like ``tail -F``: keeps its position, notices rotation (the path now names
    another inode: the rest of the old file is read first) and truncation (the file got shorter:
    start again from 0). Only complete lines are returned; a partial last line waits.
    """

    def __init__(self, path: Path, kind: Kind = "messages", *, from_start: bool = False,
                 max_bytes: int = 8 << 20) -> None:
        self.path = path
        self.kind = kind
        self.name = str(path)
        self.max_bytes = max_bytes  # per call, so one huge burst cannot stall a scan
        self._f: IO[bytes] | None = None
        self._ino: tuple[int, int] | None = None
        self._partial = b""
        self._open(from_start=from_start)

    def _open(self, *, from_start: bool) -> None:
        try:
            f = self.path.open("rb")
        except OSError:
            self._f, self._ino = None, None
            return
        st = os.fstat(f.fileno())
        self._f, self._ino = f, (st.st_dev, st.st_ino)
        if not from_start:
            f.seek(0, os.SEEK_END)
        self._partial = b""

    def read_new(self) -> list[str]:
        done: list[bytes] = []
        try:
            st = self.path.stat()
            current: tuple[int, int] | None = (st.st_dev, st.st_ino)
        except OSError:
            current = None
        if self._f is None:
            if current is None:
                return []
            self._open(from_start=True)  # appeared since: everything in it is new
        elif current != self._ino:
            # Rotated (or removed): the old file is finished, so its last line is complete too.
            done += (self._partial + self._f.read()).split(b"\n")
            self._f.close()
            self._open(from_start=True)
        elif st.st_size < self._f.tell():
            self._f.seek(0)  # truncated (copytruncate): start again
            self._partial = b""
        if self._f is not None:
            lines = (self._partial + self._f.read(self.max_bytes)).split(b"\n")
            self._partial = lines.pop()
            done += lines
        return [ln.decode("utf-8", "replace") for ln in done if ln]

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None


class JournalFollower:
    """``journalctl -f -o json`` for the kernel's and auditd's messages, read on a thread.

    Optional: :meth:`available` says whether journald is there to follow. MESSAGE fields that
    journald stores as bytes (a JSON list of integers) are decoded.
    """

    kind: Kind = "messages"
    name = "journal"
    MATCHES: Sequence[str] = ("_TRANSPORT=kernel", "+", "SYSLOG_IDENTIFIER=auditd", "+",
                              "_SYSTEMD_UNIT=auditd.service")

    def __init__(self, journalctl: str = "journalctl") -> None:
        self._queue: queue.Queue[str] = queue.Queue(maxsize=100_000)
        self._proc = subprocess.Popen([journalctl, "-f", "-o", "json", "-n", "0", "--no-pager", *self.MATCHES],
                                      stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        self._thread = threading.Thread(target=self._pump, name="journal", daemon=True)
        self._thread.start()

    @staticmethod
    def available(journalctl: str = "journalctl") -> bool:
        return shutil.which(journalctl) is not None and Path("/run/systemd/journal").is_dir()

    def _pump(self) -> None:
        assert self._proc.stdout is not None
        for raw in self._proc.stdout:
            try:
                entry = json.loads(raw)
            except ValueError:
                continue
            message = entry.get("MESSAGE")
            if isinstance(message, list):
                message = bytes(message).decode("utf-8", "replace")
            if isinstance(message, str):
                with contextlib.suppress(queue.Full):
                    self._queue.put_nowait(message)

    def read_new(self) -> list[str]:
        out = []
        with contextlib.suppress(queue.Empty):
            while True:
                out.append(self._queue.get_nowait())
        return out

    def close(self) -> None:
        self._proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._proc.wait(timeout=5)


_SYSCALL = re.compile(r"^(?:node=\S+ )?type=SYSCALL ")
_KEY = re.compile(r' key=(?:"([^"]*)"|\(null\)|([0-9A-Fa-f]+))(?:\s|\x1d|$)')


def audit_keys(line: str) -> list[str]:
    """The keys of a raw SYSCALL record (none for other record types: CONFIG_CHANGE records carry
    the key of the rule being loaded, not an event of it). Several keys on one rule are written
    hex-encoded and separated by \\x01, as ausearch decodes them."""
    if not _SYSCALL.match(line):
        return []
    m = _KEY.search(line)
    if m is None:
        return []
    if m.group(1) is not None:
        return [m.group(1)]
    if m.group(2) is not None:
        try:
            return [k for k in bytes.fromhex(m.group(2)).decode("utf-8", "replace").split("\x01") if k]
        except ValueError:
            return []
    return []
