"""``sentinel watchdog``: the command line of :class:`sentinel.watchdog.Watchdog`."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from pathlib import Path
from types import FrameType

from sentinel.host import rules
from sentinel.host.safety import RealSystemRefused, under_test

__all__ = ["add_arguments", "register", "run"]

DEFAULT_AUDIT_LOG = Path("/var/log/audit/audit.log")
DEFAULT_RULES_FILE = Path("/etc/audit/rules.d/sentinel.rules")
DEFAULT_STATE_DIR = Path("/var/lib/sentinel-watchdog")  # the unit's StateDirectory

log = logging.getLogger("sentinel.watchdog")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dry-run", action="store_true", help="decide and log every action, change nothing")
    p.add_argument("--audit-log", type=Path, default=DEFAULT_AUDIT_LOG, help="audit log to follow and count per key")
    p.add_argument("--log", type=Path, action="append", default=[], metavar="PATH",
                   help="also follow this kernel/syslog text file (repeat; e.g. /var/log/kern.log without journald)")
    p.add_argument("--journal", choices=("auto", "on", "off"), default="auto",
                   help="follow journald's kernel and auditd messages (journalctl -f -o json); auto: when present")
    p.add_argument("--textfile-dir", type=Path, default=None,
                   help="node exporter textfile directory for sentinel_watchdog.prom")
    p.add_argument("--interval", type=float, default=10.0, help="seconds between scans (default 10)")
    p.add_argument("--once", action="store_true", help="one scan, then exit (status 1 if any action failed)")
    p.add_argument("--from-start", action="store_true", help="read the files from the beginning, not from their end")
    p.add_argument("--pid-file", type=Path, default=Path("/run/auditd.pid"))
    p.add_argument("--rules-file", type=Path, default=None,
                   help="expected keys come from this rules file (default /etc/audit/rules.d/sentinel.rules "
                        "when it exists, else the base sets)")
    p.add_argument("--extra", action="append", default=[], choices=rules.EXTRA_SETS, metavar="NAME",
                   help="expect the keys of this extra rule set too (repeat)")
    p.add_argument("--no-rules-check", action="store_true", help="do not list the kernel's rules (auditctl -l)")
    p.add_argument("--rules-interval", type=float, default=300.0, help="seconds between rule checks (default 300)")
    p.add_argument("--start-command", default=None, help="default: systemctl start auditd")
    p.add_argument("--restart-command", default=None, help="default: systemctl restart auditd")
    p.add_argument("--reload-command", default=None,
                   help="reload the rules; default: augenrules --load (NixOS: systemctl restart audit-rules-nixos)")
    p.add_argument("--list-rules-command", default=None, help="default: auditctl -l")
    p.add_argument("--cooldown", type=float, default=60.0, help="seconds an action gets to work before the next rung")
    p.add_argument("--reset-after", type=float, default=900.0, help="quiet seconds that close an incident")
    p.add_argument("--max-restarts", type=int, default=3, help="auditd starts/restarts per --restart-window")
    p.add_argument("--restart-window", type=float, default=3600.0)
    p.add_argument("--backoff", type=float, default=60.0, help="wait after the first restart, doubling each time")
    p.add_argument("--state-file", type=Path, default=None,
                   help=f"restart history (default {DEFAULT_STATE_DIR}/state.json when that directory exists)")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``watchdog`` to the ``sentinel`` parser."""
    p = sub.add_parser("watchdog", help="sentinel-watchdog: keep auditd healthy, count audit events per key")
    add_arguments(p)
    p.set_defaults(func=run)


def _expected_keys(ns: argparse.Namespace) -> tuple[str, ...]:
    path = ns.rules_file or (DEFAULT_RULES_FILE if DEFAULT_RULES_FILE.exists() else None)
    keys: list[str] = []
    if path is not None:
        keys += [k for k in rules.ALL_KEYS if k in rules.keys_in_text(path.read_text())]
    else:
        keys += rules.expected_keys()
    keys += rules.expected_keys(ns.extra)
    return tuple(dict.fromkeys(keys))


def run(ns: argparse.Namespace) -> int:
    from sentinel.platform import logging as json_logging
    from sentinel.watchdog.auditd import Commands, PidFileAuditd
    from sentinel.watchdog.core import Policy, Watchdog
    from sentinel.watchdog.sources import FileFollower, JournalFollower, Source

    json_logging.configure("watchdog")
    commands = Commands.parse(start=ns.start_command, restart=ns.restart_command, reload_rules=ns.reload_command,
                              list_rules=ns.list_rules_command)
    try:
        if under_test():
            used = ({"list_rules"} if not ns.no_rules_check else set()) | (
                set() if ns.dry_run else {"start", "restart", "reload_rules"})
            real = sorted(used & set(commands.defaults_in_use()))
            if real:
                raise RealSystemRefused(f"refusing to run the real {', '.join(real)} command(s) under pytest")
        auditd = PidFileAuditd(ns.pid_file)
    except RealSystemRefused as e:
        print(f"sentinel watchdog: {e}", file=sys.stderr)
        return 2
    sources: list[Source] = [FileFollower(ns.audit_log, "audit", from_start=ns.from_start)]
    sources += [FileFollower(p, "messages", from_start=ns.from_start) for p in ns.log]
    if ns.journal == "on" or (ns.journal == "auto" and JournalFollower.available()):
        sources.append(JournalFollower())
    state_file = ns.state_file or (DEFAULT_STATE_DIR / "state.json" if DEFAULT_STATE_DIR.is_dir() else None)
    policy = Policy(cooldown=ns.cooldown, reset_after=ns.reset_after, max_restarts=ns.max_restarts,
                    restart_window=ns.restart_window, backoff=ns.backoff, rules_interval=ns.rules_interval)
    dog = Watchdog(auditd=auditd, sources=sources, commands=commands, expected_keys=_expected_keys(ns),
                   policy=policy, dry_run=ns.dry_run, check_rules=not ns.no_rules_check,
                   textfile_dir=ns.textfile_dir, state_file=state_file)
    log.info("watchdog started", extra={"event": "watchdog.start", "dry_run": ns.dry_run,
                                        "sources": [s.name for s in sources], "expected_keys": list(dog.expected_keys)})
    try:
        if ns.once:
            return 1 if any(d.result == "failed" for d in dog.scan()) else 0
        stop = threading.Event()

        def _stop(signum: int, frame: FrameType | None) -> None:
            stop.set()

        signal.signal(signal.SIGTERM, _stop)
        signal.signal(signal.SIGINT, _stop)
        dog.run(ns.interval, stop)
        return 0
    finally:
        dog.close()
