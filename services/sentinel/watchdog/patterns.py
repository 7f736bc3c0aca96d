"""What the watchdog looks for, and the remedies it tries for each, least force first.

Message texts are auditd 3.0.9's (src/auditd-event.c: "Audit daemon is low on disk space for
logging", "... has no space left on logging partition", "... is suspending logging due to ...")
and the kernel's (kernel/audit.c: "audit: backlog limit exceeded" with "audit: audit_backlog=N >
audit_backlog_limit=N" before it, "audit: rate limit exceeded",
"audit: audit_lost=N audit_rate_limit=N audit_backlog_limit=N", "audit: kauditd hold queue
overflow"). The kernel prints them to the kernel log (journald ``_TRANSPORT=kernel``, or
/var/log/kern.log), auditd to syslog (``SYSLOG_IDENTIFIER=auditd``).

Actions, from the least to the most force:

``report``
    log and count only (the condition is working as configured, or no signal can help);
``resume``
    SIGUSR2 to auditd: "attempt to resume logging" after it suspended (auditd(8));
``reload-rules``
    run the rule loader (``augenrules --load``; on NixOS ``systemctl restart
    audit-rules-nixos``). Not SIGHUP: that makes auditd re-read auditd.conf, not the rules,
    which the kernel holds and only auditctl loads;
``start``
    start auditd when it is not running (``systemctl start auditd``);
``restart``
    restart auditd (``systemctl restart auditd``), the last rung, rate-limited. NixOS's auditd
    unit has ``RefuseManualStop=true``, so there the command must be overridden (issue 8's
    module passes one) or it fails and says so.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final, Literal

__all__ = ["ACTIONS", "PATTERNS", "RESTARTS", "SIGNALS", "Action", "Pattern", "match"]

Action = Literal["report", "resume", "reload-rules", "start", "restart"]
ACTIONS: Final[tuple[Action, ...]] = ("report", "resume", "reload-rules", "start", "restart")
#: Actions that restart the daemon: they go through the restart rate limit.
RESTARTS: Final[frozenset[Action]] = frozenset(("start", "restart"))
SIGNALS: Final = {"resume": "SIGUSR2"}


@dataclass(frozen=True)
class Pattern:
    """A bad condition: matched in log lines (``regex``) or found by a probe (``regex`` None)."""

    name: str
    regex: re.Pattern[str] | None
    ladder: tuple[Action, ...]
    summary: str


PATTERNS: Final = (
    Pattern("auditd-down", None, ("start", "restart"),
            "auditd is not running (pid file and /proc)"),
    Pattern("disk-full", re.compile(r"Audit daemon (?:is suspending logging|has no space left on logging partition"
                                    r"|detected an error writing an event to disk)|audit.*disk is full",
                                    re.IGNORECASE),
            ("resume", "restart"), "auditd suspended logging: disk full, or disk_full/admin_space_left action"),
    Pattern("disk-low", re.compile(r"Audit daemon is low on disk space for logging"), ("report",),
            "auditd reached space_left: it still logs, someone must make room"),
    Pattern("backlog-limit", re.compile(r"audit: backlog limit exceeded|audit: audit_backlog=\d+ > audit_backlog_limit="
                                        r"|audit: kauditd hold queue overflow"),
            ("resume", "restart"), "the kernel's audit queue overflowed (auditd not reading fast enough)"),
    Pattern("lost-events", re.compile(r"audit: audit_lost=\d+"), ("resume", "restart"),
            "the kernel dropped audit events"),
    Pattern("rate-limit", re.compile(r"audit: rate limit exceeded"), ("report",),
            "the configured -r rate limit dropped events (working as configured: report only)"),
    Pattern("rules-missing", None, ("reload-rules", "restart"),
            "expected rule keys are not loaded in the kernel (auditctl -l)"),
)
BY_NAME: Final = {p.name: p for p in PATTERNS}


def match(line: str) -> list[Pattern]:
    """The log patterns ``line`` shows (probe patterns never match a line)."""
    return [p for p in PATTERNS if p.regex is not None and p.regex.search(line)]
