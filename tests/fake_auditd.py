"""A stand-in for auditd that a test controls: a real process the watchdog finds and signals.

It names itself ``auditd`` (prctl PR_SET_NAME, so /proc/<pid>/stat shows that comm, as the
watchdog checks), writes its pid file once its handlers are installed, appends the name of every
SIGUSR2/SIGHUP it receives to ``--record`` (the watchdog must only ever send SIGUSR2), and
exits on SIGTERM.

    python tests/fake_auditd.py --pid-file PATH --record PATH
"""

from __future__ import annotations

import argparse
import ctypes
import os
import signal
import sys
from pathlib import Path
from types import FrameType

PR_SET_NAME = 15


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pid-file", type=Path, required=True)
    ap.add_argument("--record", type=Path, required=True)
    ap.add_argument("--comm", default="auditd")
    ns = ap.parse_args()
    ctypes.CDLL(None).prctl(PR_SET_NAME, ns.comm.encode(), 0, 0, 0)

    def record(signum: int, frame: FrameType | None) -> None:
        with ns.record.open("a") as f:
            f.write(signal.Signals(signum).name + "\n")

    def stop(signum: int, frame: FrameType | None) -> None:
        sys.exit(0)

    signal.signal(signal.SIGUSR2, record)
    signal.signal(signal.SIGHUP, record)
    signal.signal(signal.SIGTERM, stop)
    tmp = ns.pid_file.with_suffix(".tmp")
    tmp.write_text(f"{os.getpid()}\n")
    tmp.replace(ns.pid_file)
    while True:
        signal.pause()


if __name__ == "__main__":
    sys.exit(main())
