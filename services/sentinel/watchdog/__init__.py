"""``sentinel-watchdog``: keeps auditd healthy and counts audit events per rule key.

It follows the audit log (rotation and truncation included), journald when present, and any
extra log files; detects auditd not running, kernel backlog overflows, lost events, rate-limit
hits, logging suspended for lack of disk space, and expected rule keys missing from the kernel;
and acts with the least force that works (signal, reload rules, then a rate-limited restart),
logging every action as a JSON line. It exports per-key event counts and its own health through
the node exporter's textfile collector. See :mod:`.core` for the decision rules,
:mod:`.patterns` for what is matched and docs/host-security.md for operating it.
"""

from sentinel.watchdog.core import FILE_NAME, Decision, Policy, RestartLimiter, Watchdog

__all__ = ["FILE_NAME", "Decision", "Policy", "RestartLimiter", "Watchdog"]
