"""The watchdog's loop: read, detect, decide, act (or only say what it would do), export.

One :meth:`Watchdog.scan` reads every source's new lines, counts the audit log's events per key,
matches the patterns (:mod:`.patterns`), probes auditd and, every ``rules_interval``, the loaded
rule keys; then it takes at most one action per detected pattern.

**Least force, escalating.** Each pattern has a ladder of actions. A detection opens an
incident and takes the first rung; detections within ``cooldown`` of an action take nothing (the
action gets time to work, and a burst of 500 identical kernel lines is one incident); a detection
after the cooldown takes the next rung; the last rung repeats. An incident closes when the
pattern has not been seen for ``reset_after``, and the next one starts at the first rung again.
While auditd is down only ``auditd-down`` acts: signals cannot reach it.

**Restarts are rate-limited.** ``start`` and ``restart`` pass :class:`RestartLimiter`: at most
``max_restarts`` per ``restart_window`` and, after the n-th, a wait of ``backoff * 2**(n-1)``.
Its history survives the watchdog's own restarts (``state_file``), so a crash-looping watchdog
cannot restart auditd in a loop.

**Dry run** decides exactly as a real run would (the same ladders and limits, recorded the same
way), logs each action with ``"result": "dry_run"`` and changes nothing: no signal, no command
except the read-only rule listing.

Every action is one JSON log line (``sentinel.platform.logging``) and a count in
``sentinel_watchdog_actions_total{action, result}``.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, Literal

from sentinel.host import rules, textfile
from sentinel.watchdog.auditd import Auditd, CommandRunner, Commands, run_command
from sentinel.watchdog.patterns import ACTIONS, PATTERNS, RESTARTS, SIGNALS, Action, Pattern, match
from sentinel.watchdog.sources import Source, audit_keys

__all__ = ["FILE_NAME", "RESULTS", "Decision", "Policy", "RestartLimiter", "Watchdog"]

FILE_NAME: Final = "sentinel_watchdog.prom"
Result = Literal["ok", "failed", "dry_run", "rate_limited"]
RESULTS: Final[tuple[Result, ...]] = ("ok", "failed", "dry_run", "rate_limited")
OTHER_KEY: Final = "other"

log = logging.getLogger("sentinel.watchdog")
DEFAULT_COMMANDS: Final = Commands()


@dataclass(frozen=True)
class Policy:
    cooldown: float = 60.0
    reset_after: float = 900.0
    max_restarts: int = 3
    restart_window: float = 3600.0
    backoff: float = 60.0
    rules_interval: float = 300.0
    command_timeout: float = 60.0


class RestartLimiter:
    """At most ``max_restarts`` in ``restart_window`` seconds, with exponential backoff."""

    def __init__(self, policy: Policy, history: Iterable[float] = ()) -> None:
        self.policy = policy
        self.history = sorted(history)

    def recent(self, now: float) -> list[float]:
        return [t for t in self.history if now - t < self.policy.restart_window]

    def check(self, now: float) -> str | None:
        """None when a restart may happen now, else why not."""
        recent = self.recent(now)
        if len(recent) >= self.policy.max_restarts:
            return (f"{len(recent)} restarts in the last {self.policy.restart_window:g}s "
                    f"(limit {self.policy.max_restarts})")
        if recent:
            wait = self.policy.backoff * 2 ** (len(recent) - 1)
            if now - recent[-1] < wait:
                return f"backoff: {wait:g}s after restart {len(recent)}, {now - recent[-1]:.0f}s passed"
        return None

    def record(self, now: float) -> None:
        self.history = [*self.recent(now), now]


@dataclass
class _Incident:
    rung: int = 0
    last_action: float | None = None
    last_seen: float = 0.0


@dataclass(frozen=True)
class Decision:
    pattern: str
    action: Action
    result: Result
    detail: str


@dataclass
class _Metrics:
    events: Counter[str] = field(default_factory=Counter)
    detections: Counter[str] = field(default_factory=Counter)
    actions: Counter[tuple[str, str]] = field(default_factory=Counter)
    scans: int = 0
    last_scan: float | None = None
    auditd_up: bool | None = None
    rules_missing: int | None = None


class Watchdog:
    def __init__(self, *, auditd: Auditd, sources: Sequence[Source], runner: CommandRunner = run_command,
                 commands: Commands = DEFAULT_COMMANDS, expected_keys: Sequence[str] = rules.expected_keys(),
                 policy: Policy = Policy(), dry_run: bool = False, check_rules: bool = True,
                 clock: Callable[[], float] = time.time, textfile_dir: Path | None = None,
                 state_file: Path | None = None) -> None:
        self.auditd = auditd
        self.sources = list(sources)
        self.runner = runner
        self.commands = commands
        self.expected_keys = tuple(expected_keys)
        self.policy = policy
        self.dry_run = dry_run
        self.check_rules = check_rules
        self.clock = clock
        self.textfile_dir = textfile_dir
        self.state_file = state_file
        self.metrics = _Metrics()
        self.limiter = RestartLimiter(policy, self._load_state())
        self._incidents: dict[str, _Incident] = {}
        self._next_rules_check: float | None = None

    # -- state -------------------------------------------------------------------------------

    def _load_state(self) -> list[float]:
        if self.state_file is None:
            return []
        try:
            data = json.loads(self.state_file.read_text())
            return [float(t) for t in data.get("restarts", [])]
        except (OSError, ValueError, TypeError, AttributeError):
            return []

    def _save_state(self) -> None:
        if self.state_file is None or self.dry_run:
            return
        fd, tmp = tempfile.mkstemp(dir=self.state_file.parent, prefix=".state.")
        with os.fdopen(fd, "w") as f:
            json.dump({"restarts": self.limiter.history}, f)
        os.replace(tmp, self.state_file)

    # -- one scan ----------------------------------------------------------------------------

    def scan(self) -> list[Decision]:
        now = self.clock()
        m = self.metrics
        m.scans += 1
        hits: Counter[str] = Counter()
        samples: dict[str, str] = {}
        known = set(rules.ALL_KEYS)
        for src in self.sources:
            for line in src.read_new():
                if src.kind == "audit":
                    for key in audit_keys(line):
                        m.events[key if key in known else OTHER_KEY] += 1
                for p in match(line):
                    hits[p.name] += 1
                    samples.setdefault(p.name, f"{src.name}: {line[:300]}")
        pid = self.auditd.pid()
        m.auditd_up = pid is not None
        if pid is None:
            hits["auditd-down"] += 1
            samples["auditd-down"] = "no auditd process (pid file and /proc)"
        elif self.check_rules and (self._next_rules_check is None or now >= self._next_rules_check):
            self._next_rules_check = now + self.policy.rules_interval
            missing = self._missing_keys()
            if missing:
                hits["rules-missing"] += 1
                samples["rules-missing"] = "not loaded: " + ", ".join(missing)
        decisions = []
        for p in PATTERNS:
            if not hits[p.name]:
                continue
            m.detections[p.name] += hits[p.name]
            log.info("detected %s", p.name, extra={"event": "watchdog.detection", "pattern": p.name,
                                                    "count": hits[p.name], "sample": samples.get(p.name, "")})
            if pid is None and p.name != "auditd-down":
                continue  # signals cannot reach a daemon that is not running: auditd-down acts
            d = self._decide(p, now, pid, samples.get(p.name, ""))
            if d is not None:
                decisions.append(d)
        m.last_scan = now
        if self.textfile_dir is not None:
            textfile.write_atomic(self.textfile_dir, FILE_NAME, self.exposition())
        return decisions

    def _missing_keys(self) -> list[str]:
        rc, out = self.runner(self.commands.list_rules, self.policy.command_timeout)
        if rc != 0:
            log.warning("cannot list the loaded audit rules", extra={"event": "watchdog.rules_unknown",
                                                                    "command": list(self.commands.list_rules),
                                                                    "status": rc, "output": out[-300:]})
            self.metrics.rules_missing = None
            return []
        loaded = rules.keys_in_text(out)
        missing = [k for k in self.expected_keys if k not in loaded]
        self.metrics.rules_missing = len(missing)
        return missing

    def _decide(self, p: Pattern, now: float, pid: int | None, sample: str) -> Decision | None:
        inc = self._incidents.get(p.name)
        if inc is None or now - inc.last_seen > self.policy.reset_after:
            inc = self._incidents[p.name] = _Incident()
        inc.last_seen = now
        if inc.last_action is not None and now - inc.last_action < self.policy.cooldown:
            return None
        action = p.ladder[min(inc.rung, len(p.ladder) - 1)]
        inc.last_action = now
        if action in RESTARTS:
            reason = self.limiter.check(now)
            if reason is not None:
                return self._record(p, action, "rate_limited", reason, inc.rung, sample)
        inc.rung += 1
        result, detail = self._act(p, action, pid)
        if action in RESTARTS:
            self.limiter.record(now)
            self._save_state()
        if p.name == "rules-missing":
            self._next_rules_check = now + self.policy.cooldown  # see soon whether the reload worked
        return self._record(p, action, result, detail, inc.rung - 1, sample)

    def _act(self, p: Pattern, action: Action, pid: int | None) -> tuple[Result, str]:
        if action == "report":
            return "ok", p.summary
        if action in SIGNALS:
            sig = signal.Signals[SIGNALS[action]]
            if self.dry_run:
                return "dry_run", f"would send {sig.name} to auditd (pid {pid})"
            try:
                self.auditd.signal(sig)
            except (ProcessLookupError, PermissionError) as e:
                return "failed", f"{sig.name}: {e}"
            return "ok", f"sent {sig.name} to auditd (pid {pid})"
        argv = {"reload-rules": self.commands.reload_rules, "start": self.commands.start,
                "restart": self.commands.restart}[action]
        if self.dry_run:
            return "dry_run", f"would run: {' '.join(argv)}"
        rc, out = self.runner(argv, self.policy.command_timeout)
        if rc != 0:
            return "failed", f"{' '.join(argv)} exited {rc}: {out[-300:]}"
        return "ok", f"ran: {' '.join(argv)}"

    def _record(self, p: Pattern, action: Action, result: Result, detail: str, rung: int, sample: str) -> Decision:
        self.metrics.actions[(action, result)] += 1
        level = logging.ERROR if result == "failed" else logging.WARNING
        log.log(level, "%s: %s (%s)", p.name, action, result,
                extra={"event": "watchdog.action", "pattern": p.name, "action": action, "result": result,
                       "rung": rung, "dry_run": self.dry_run, "detail": detail, "sample": sample})
        return Decision(p.name, action, result, detail)

    # -- metrics -----------------------------------------------------------------------------

    def exposition(self) -> str:
        m = self.metrics
        events = textfile.Family("sentinel_audit_events_total", "counter",
                                 "Audit events (SYSCALL records) per rule key read from the audit log by the watchdog "
                                 "since it started; keys outside Sentinel's rule sets count as key=\"other\".")
        for key in (*rules.ALL_KEYS, OTHER_KEY):
            events.add(m.events[key], key=key)
        det = textfile.Family("sentinel_watchdog_detections_total", "counter",
                              "Bad conditions the audit watchdog detected, by pattern (log lines or probe hits).")
        for p in PATTERNS:
            det.add(m.detections[p.name], pattern=p.name)
        act = textfile.Family("sentinel_watchdog_actions_total", "counter",
                              "Actions the audit watchdog took (or, in dry-run, would have taken), by result.")
        for a in ACTIONS:
            for r in RESULTS:
                act.add(m.actions[(a, r)], action=a, result=r)
        fams = [events, det, act]

        def gauge(name: str, help_: str, value: float | None) -> None:
            if value is not None:
                fam = textfile.Family(name, "gauge", help_)
                fam.add(value)
                fams.append(fam)

        scans = textfile.Family("sentinel_watchdog_scans_total", "counter", "Scans the audit watchdog completed.")
        scans.add(m.scans)
        fams.append(scans)
        gauge("sentinel_watchdog_last_scan_timestamp_seconds",
              "Unix time of the audit watchdog's last scan (a value, not a sample timestamp).", m.last_scan)
        gauge("sentinel_watchdog_auditd_up", "1 when the audit watchdog found auditd running at its last scan.",
              None if m.auditd_up is None else float(m.auditd_up))
        gauge("sentinel_watchdog_rules_missing", "Expected audit rule keys not loaded in the kernel at the last check.",
              m.rules_missing)
        gauge("sentinel_watchdog_recent_restarts", "auditd starts/restarts by the watchdog in the rate-limit window.",
              len(self.limiter.recent(self.clock())))
        gauge("sentinel_watchdog_dry_run", "1 when the audit watchdog runs in dry-run mode (decides, changes nothing).",
              float(self.dry_run))
        return textfile.render(fams)

    # -- the loop ----------------------------------------------------------------------------

    def run(self, interval: float, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                self.scan()
            except OSError as e:  # a full disk for the textfile, say: keep watching
                log.error("scan failed: %s", e, extra={"event": "watchdog.scan_failed"})
            stop.wait(interval)

    def close(self) -> None:
        for src in self.sources:
            src.close()
