"""sentinel-watchdog on recorded and synthetic log streams, with a fake auditd and fake commands.

The fake auditd (tests/fake_auditd.py) is a real child process: the watchdog finds it through its
pid file and /proc and signals it; it writes down every signal it gets. Commands (start, restart,
reload rules, list rules) are fakes that record their calls. The clock is the test's, so cooldowns,
backoff and the hourly restart limit are checked over simulated hours in milliseconds. Nothing
here reaches the real auditd or kernel: the real commands and the real pid file refuse to run
under pytest (checked below too).

* Each pattern, from the exact auditd/kernel message texts, triggers its first action exactly
  once however many lines show it; the next rung only after the cooldown; restarts rate-limited
  with backoff, also across a watchdog restart (state file).
* Dry run decides the same and changes nothing.
* Per-key counts from the recorded sample logs match ausearch's (SYSCALL records only).
* The follower survives rotation and truncation; the textfile passes promtool and the duplicate/
  timestamp check; every action is a JSON log line.
"""

from __future__ import annotations

import itertools
import json
import logging
import shlex
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from sentinel.host import rules, textfile
from sentinel.host.safety import RealSystemRefused
from sentinel.watchdog import FILE_NAME, Policy, RestartLimiter, Watchdog
from sentinel.watchdog.auditd import Commands, PidFileAuditd
from sentinel.watchdog.patterns import PATTERNS, match
from sentinel.watchdog.sources import FileFollower, audit_keys

from tests.support import promtool_check_metrics

REPO = Path(__file__).resolve().parents[2]
FAKE_AUDITD = REPO / "tests" / "fake_auditd.py"
DATA = REPO / "tests" / "data" / "audit"

# The texts as auditd 3.0.9 (syslog) and the kernel (kmsg, as journald shows MESSAGE) write them.
LINES = {
    "disk-full": "Audit daemon is suspending logging due to no space left on logging partition.",
    "disk-low": "Audit daemon is low on disk space for logging",
    "backlog-limit": "audit: backlog limit exceeded",
    "lost-events": "audit: audit_lost=17 audit_rate_limit=0 audit_backlog_limit=8192",
    "rate-limit": "audit: rate limit exceeded",
}
FIRST_ACTION = {"disk-full": "resume", "disk-low": "report", "backlog-limit": "resume", "lost-events": "resume",
                "rate-limit": "report"}
DEFAULT_POLICY = Policy()
LOADED = "\n".join(f"-a always,exit -F arch=b64 -S execve -F key={k}" for k in rules.ALL_KEYS)


@dataclass
class Clock:
    t: float = 1_700_000_000.0

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


@dataclass
class Runner:
    """Fake commands: records argv, answers `auditctl -l` with ``listed``."""

    listed: str = LOADED
    fail: set[str] = field(default_factory=set)
    calls: list[tuple[str, ...]] = field(default_factory=list)

    def __call__(self, argv: Sequence[str], timeout: float) -> tuple[int, str]:
        self.calls.append(tuple(argv))
        if tuple(argv) == Commands().list_rules:
            return 0, self.listed
        return (1, "refused") if argv[-1] in self.fail or " ".join(argv) in self.fail else (0, "")

    def changes(self) -> list[tuple[str, ...]]:
        return [c for c in self.calls if c != Commands().list_rules]


@dataclass
class FakeAuditd:
    pid_file: Path
    record: Path
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.pid_file.unlink(missing_ok=True)
        self.proc = subprocess.Popen([sys.executable, str(FAKE_AUDITD), "--pid-file", str(self.pid_file),
                                      "--record", str(self.record)])
        deadline = time.monotonic() + 10
        while not self.pid_file.exists():
            assert time.monotonic() < deadline, "fake auditd did not start"
            assert self.proc.poll() is None, "fake auditd exited"
            time.sleep(0.01)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)

    def signals(self, wait_for: int = 0) -> list[str]:
        deadline = time.monotonic() + 5
        while True:
            got = self.record.read_text().split() if self.record.exists() else []
            if len(got) >= wait_for or time.monotonic() > deadline:
                return got
            time.sleep(0.01)


@pytest.fixture
def auditd(tmp_path: Path) -> Iterator[FakeAuditd]:
    fake = FakeAuditd(tmp_path / "auditd.pid", tmp_path / "signals")
    fake.start()
    yield fake
    fake.stop()


@dataclass
class Rig:
    dog: Watchdog
    clock: Clock
    runner: Runner
    messages: Path
    audit_log: Path

    def say(self, line: str, times: int = 1) -> None:
        with self.messages.open("a") as f:
            f.write(f"{line}\n" * times)

    def scan(self) -> list[tuple[str, str, str]]:
        return [(d.pattern, d.action, d.result) for d in self.dog.scan()]


def _rig(tmp_path: Path, auditd: FakeAuditd, *, dry_run: bool = False, runner: Runner | None = None,
         state_file: Path | None = None, policy: Policy = DEFAULT_POLICY) -> Rig:
    messages, audit_log = tmp_path / "messages", tmp_path / "audit.log"
    messages.touch()
    audit_log.touch()
    clock, runner = Clock(), runner or Runner()
    dog = Watchdog(auditd=PidFileAuditd(auditd.pid_file), sources=[FileFollower(audit_log, "audit"),
                                                                    FileFollower(messages, "messages")],
                   runner=runner, policy=policy, dry_run=dry_run, clock=clock, textfile_dir=tmp_path,
                   state_file=state_file, expected_keys=rules.ALL_KEYS)
    return Rig(dog, clock, runner, messages, audit_log)


# ---------------------------------------------------------------------------------------------


def test_patterns_match_the_real_messages() -> None:
    for name, line in LINES.items():
        assert [p.name for p in match(line)] == [name], line
    assert [p.name for p in match("kernel: audit: kauditd hold queue overflow")] == ["backlog-limit"]
    assert [p.name for p in match("audit: audit_backlog=8193 > audit_backlog_limit=8192")] == ["backlog-limit"]
    assert [p.name for p in match("auditd[612]: Audit daemon has no space left on logging partition")] == ["disk-full"]
    for quiet in ("audit: type=1400 audit(1733241600.1:10): apparmor=\"STATUS\"",
                  "auditd[612]: Audit daemon rotating log files", "audit: initializing netlink subsys (disabled)",
                  "audit: audit_backlog_limit=8192"):
        assert match(quiet) == [], quiet
    assert {p.name for p in PATTERNS} == {*LINES, "auditd-down", "rules-missing"}


@pytest.mark.parametrize("name", sorted(LINES))
def test_each_pattern_triggers_its_action_exactly_once(tmp_path: Path, auditd: FakeAuditd, name: str) -> None:
    rig = _rig(tmp_path, auditd)
    rig.say(LINES[name], times=50)  # a burst of identical kernel lines is one incident
    assert rig.scan() == [(name, FIRST_ACTION[name], "ok")]
    rig.clock.advance(30)
    rig.say(LINES[name], times=5)
    assert rig.scan() == [], "within the cooldown nothing more is done"
    assert auditd.signals(wait_for=1 if FIRST_ACTION[name] == "resume" else 0) == (
        ["SIGUSR2"] if FIRST_ACTION[name] == "resume" else [])
    assert rig.runner.changes() == []
    assert rig.dog.metrics.detections[name] == 55
    assert rig.dog.metrics.actions[(FIRST_ACTION[name], "ok")] == 1


def test_escalation_backoff_and_reset(tmp_path: Path, auditd: FakeAuditd) -> None:
    rig = _rig(tmp_path, auditd)
    seen = []
    for _ in range(4):
        rig.say(LINES["disk-full"])
        seen += rig.scan()
        rig.clock.advance(61)
    assert seen == [("disk-full", "resume", "ok"), ("disk-full", "restart", "ok"),
                    ("disk-full", "restart", "ok"),  # backoff after the first restart: 60 s
                    ("disk-full", "restart", "rate_limited")]  # after the second: 120 s
    assert rig.runner.changes() == [("systemctl", "restart", "auditd")] * 2
    assert auditd.signals(wait_for=1) == ["SIGUSR2"]
    rig.clock.advance(901)  # quiet for longer than reset_after: the incident is over
    rig.say(LINES["disk-full"])
    assert rig.scan() == [("disk-full", "resume", "ok")], "a new incident starts at the least force again"


def test_auditd_down_start_then_rate_limited_restarts(tmp_path: Path, auditd: FakeAuditd) -> None:
    rig = _rig(tmp_path, auditd)
    assert rig.scan() == []
    auditd.stop()
    rig.say(LINES["backlog-limit"])
    timeline = []
    for _ in range(2 * 360):  # two simulated hours, a scan every 10 s
        timeline += [(rig.clock.t, *d) for d in rig.scan()]
        rig.clock.advance(10)
    assert timeline[0][1:] == ("auditd-down", "start", "ok")
    assert all(d[1] == "auditd-down" for d in timeline), "while auditd is down only auditd-down acts"
    done = [t for t, _, action, result in timeline if result == "ok"]
    assert all(b - a >= 60 for a, b in itertools.pairwise(done))
    for i, t in enumerate(done):
        assert len([u for u in done[i:] if u - t < 3600]) <= 3, "at most 3 starts/restarts an hour"
    gaps = [b - a for a, b in itertools.pairwise(done)]
    assert gaps[:2] == sorted(gaps[:2]) and gaps[1] >= 120, f"exponential backoff: {gaps}"
    assert any(r == "rate_limited" for *_, r in timeline)
    assert len(rig.runner.changes()) == len(done) <= 6
    assert rig.runner.changes()[0] == ("systemctl", "start", "auditd")
    auditd.start()
    rig.clock.advance(3600)
    assert rig.scan() == [] and rig.dog.metrics.auditd_up


def test_rules_missing_reloads_once(tmp_path: Path, auditd: FakeAuditd) -> None:
    runner = Runner(listed="\n".join(ln for ln in LOADED.splitlines() if "exec-service" not in ln))
    rig = _rig(tmp_path, auditd, runner=runner)
    assert rig.scan() == [("rules-missing", "reload-rules", "ok")]
    assert rig.dog.metrics.rules_missing == 1
    assert rig.scan() == [] and rig.runner.calls.count(Commands().list_rules) == 1, "next check after the cooldown"
    runner.listed = LOADED  # the reload worked
    rig.clock.advance(61)
    assert rig.scan() == []
    assert rig.dog.metrics.rules_missing == 0
    assert rig.runner.changes() == [("augenrules", "--load")]
    assert auditd.signals() == []


def test_dry_run_decides_the_same_and_changes_nothing(tmp_path: Path, auditd: FakeAuditd) -> None:
    state = tmp_path / "state.json"
    rig = _rig(tmp_path, auditd, dry_run=True, runner=Runner(listed=""), state_file=state)
    rig.say(LINES["disk-full"])
    rig.say(LINES["lost-events"])
    assert rig.scan() == [("disk-full", "resume", "dry_run"), ("lost-events", "resume", "dry_run"),
                          ("rules-missing", "reload-rules", "dry_run")]
    auditd.stop()
    decisions = []
    for _ in range(40):
        decisions += rig.scan()
        rig.clock.advance(10)
    assert decisions[:2] == [("auditd-down", "start", "dry_run"), ("auditd-down", "restart", "dry_run")]
    assert ("auditd-down", "restart", "rate_limited") in decisions, "the limits apply as in a real run"
    assert rig.runner.changes() == [], "no command"
    assert not auditd.record.exists(), "no signal"
    assert not state.exists(), "no state written"
    assert rig.dog.metrics.actions[("start", "dry_run")] == 1
    assert textfile.families_by_name((tmp_path / FILE_NAME).read_text())["sentinel_watchdog_dry_run"] == [({}, 1.0)]


def test_restart_history_survives_the_watchdog(tmp_path: Path, auditd: FakeAuditd) -> None:
    state = tmp_path / "state.json"
    policy = Policy(backoff=0)
    rig = _rig(tmp_path, auditd, state_file=state, policy=policy)
    auditd.stop()
    for _ in range(3):
        rig.scan()
        rig.clock.advance(61)
    assert len(rig.runner.changes()) == 3 and len(json.loads(state.read_text())["restarts"]) == 3
    again = _rig(tmp_path, auditd, state_file=state, policy=policy)
    again.clock.t = rig.clock.t
    assert again.scan() == [("auditd-down", "start", "rate_limited")]


def test_restart_limiter() -> None:
    lim = RestartLimiter(Policy(max_restarts=3, restart_window=3600, backoff=60))
    assert lim.check(0) is None
    lim.record(0)
    assert "backoff" in (lim.check(59) or "") and lim.check(60) is None
    lim.record(60)
    assert lim.check(179) and lim.check(180) is None
    lim.record(180)
    assert "3 restarts" in (lim.check(3599) or "")
    assert lim.check(3601) is None, "the first one left the window"


def test_failed_actions_are_logged_as_failures(tmp_path: Path, auditd: FakeAuditd) -> None:
    rig = _rig(tmp_path, auditd, runner=Runner(fail={"auditd"}))
    auditd.stop()
    assert rig.scan() == [("auditd-down", "start", "failed")]
    assert rig.dog.metrics.actions[("start", "failed")] == 1


def test_counts_events_per_key_from_the_recorded_logs(tmp_path: Path, auditd: FakeAuditd) -> None:
    rig = _rig(tmp_path, auditd)
    samples = sorted(DATA.glob("*.log"))
    extra = ('type=SYSCALL msg=audit(1733242300.1:2201): arch=c000003e syscall=59 success=yes exit=0 a0=1 a1=2 a2=3 '
             'a3=4 items=2 ppid=1 pid=2 auid=0 uid=0 gid=0 euid=0 suid=0 fsuid=0 egid=0 sgid=0 fsgid=0 tty=(none) '
             'ses=1 comm="x" exe="/usr/bin/x" subj=unconfined key="someone-elses"\n')
    with rig.audit_log.open("a") as f:
        for path in samples:
            f.write(path.read_text())
        f.write(extra)
    rig.scan()
    counts = rig.dog.metrics.events
    for path in samples:
        if path.stem != "noise":
            assert counts[path.stem] == path.read_text().count("type=SYSCALL "), path.stem
    assert counts["other"] == 1
    assert sum(counts.values()) == 1 + sum(p.read_text().count('type=SYSCALL ') for p in samples if p.stem != "noise")
    exposed = textfile.families_by_name((tmp_path / FILE_NAME).read_text())["sentinel_audit_events_total"]
    assert {labels["key"] for labels, _ in exposed} == {*rules.ALL_KEYS, "other"}


def test_audit_keys_parser() -> None:
    # str.splitlines() would also split at the \x1d that starts auditd's ENRICHED part.
    line = (DATA / "ptrace-injection.log").read_text().split("\n")[0]
    assert audit_keys(line) == ["ptrace-injection"]
    multi = line.replace('key="ptrace-injection"', "key=" + b"ptrace-watchdog\x01ptrace-injection".hex().upper())
    assert audit_keys(multi) == ["ptrace-watchdog", "ptrace-injection"]
    assert audit_keys(line.replace('key="ptrace-injection"', "key=(null)")) == []
    config_change = (DATA / "noise.log").read_text().split("\n")[2]
    assert "CONFIG_CHANGE" in config_change and audit_keys(config_change) == []


def test_follower_handles_rotation_truncation_and_partial_lines(tmp_path: Path) -> None:
    log = tmp_path / "audit.log"
    log.write_text("old\n")
    f = FileFollower(log, "audit")
    assert f.read_new() == [], "starts at the end"
    with log.open("a") as out:
        out.write("one\ntw")
    assert f.read_new() == ["one"]
    with log.open("a") as out:
        out.write("o\nthree\n")
    # auditd rotates: audit.log -> audit.log.1 and a new audit.log; a last line reached the old one.
    with log.open("a") as out:
        out.write("four\n")
    log.rename(tmp_path / "audit.log.1")
    log.write_text("five\n")
    assert f.read_new() == ["two", "three", "four", "five"]
    log.write_text("")  # copytruncate
    with log.open("a") as out:
        out.write("six\n")
    assert f.read_new() == ["six"]
    log.unlink()
    assert f.read_new() == []
    log.write_text("seven\n")
    assert f.read_new() == ["seven"], "a file that appears later is read from its start"
    f.close()


def test_the_textfile_passes_promtool_and_the_checks(tmp_path: Path, auditd: FakeAuditd) -> None:
    rig = _rig(tmp_path, auditd)
    rig.say(LINES["disk-full"])
    rig.scan()
    text = (tmp_path / FILE_NAME).read_text()
    assert textfile.check(text) == []
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == [], "no temp file left"
    fams = textfile.families_by_name(text)
    assert fams["sentinel_watchdog_actions_total"].count(({"action": "resume", "result": "ok"}, 1.0)) == 1
    assert fams["sentinel_watchdog_last_scan_timestamp_seconds"] == [({}, rig.clock.t)]
    assert fams["sentinel_watchdog_auditd_up"] == [({}, 1.0)]
    promtool_check_metrics(text)


def test_every_action_is_a_json_log_line(tmp_path: Path, auditd: FakeAuditd) -> None:
    from sentinel.platform.logging import JsonFormatter

    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    logger = logging.getLogger("sentinel.watchdog")
    logger.addHandler(handler)
    old = logger.level
    logger.setLevel(logging.INFO)
    try:
        rig = _rig(tmp_path, auditd)
        rig.say(LINES["backlog-limit"])
        rig.scan()
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old)
    lines = [json.loads(JsonFormatter("watchdog").format(r)) for r in records]
    action = [ln for ln in lines if ln.get("event") == "watchdog.action"]
    assert len(action) == 1
    assert {k: action[0][k] for k in ("pattern", "action", "result", "dry_run", "service", "level")} == {
        "pattern": "backlog-limit", "action": "resume", "result": "ok", "dry_run": False, "service": "watchdog",
        "level": "warning"}
    assert "SIGUSR2" in action[0]["detail"] and "backlog limit exceeded" in action[0]["sample"]


# ---------------------------------------------------------------------------------------------
# The command line, end to end: a subprocess against the fake auditd and fake commands


def _fake(record: Path, name: str) -> str:
    code = "import sys; open(sys.argv[1], 'a').write(sys.argv[2] + '\\n')"
    return shlex.join([sys.executable, "-c", code, str(record), name])


def _lister(listing: Path) -> str:
    return shlex.join([sys.executable, "-c", "import sys; print(open(sys.argv[1]).read())", str(listing)])


def _watchdog(tmp_path: Path, auditd: FakeAuditd, *args: str) -> subprocess.CompletedProcess[str]:
    calls = tmp_path / "calls"
    listing = tmp_path / "listing"
    if not listing.exists():
        listing.write_text(LOADED)
    argv = [sys.executable, "-m", "sentinel", "watchdog", "--once", "--journal", "off", "--from-start",
            "--pid-file", str(auditd.pid_file), "--audit-log", str(tmp_path / "audit.log"),
            "--log", str(tmp_path / "messages"), "--textfile-dir", str(tmp_path)]
    argv += ["--start-command", _fake(calls, "start"), "--restart-command", _fake(calls, "restart"),
             "--reload-command", _fake(calls, "reload"), "--list-rules-command", _lister(listing),
             "--state-file", str(tmp_path / "state.json"), *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False, cwd=REPO)


def test_cli_acts_and_logs_json(tmp_path: Path, auditd: FakeAuditd) -> None:
    (tmp_path / "messages").write_text(LINES["disk-full"] + "\n" + LINES["rate-limit"] + "\n")
    (tmp_path / "audit.log").write_text((DATA / "tmp-exec.log").read_text())
    (tmp_path / "listing").write_text("\n".join(ln for ln in LOADED.splitlines() if "tmp-exec" not in ln))
    rules_file = tmp_path / "sentinel.rules"
    rules_file.write_text(rules.render_audit_rules(rules.Options(extras=("tmp-exec",))))
    p = _watchdog(tmp_path, auditd, "--rules-file", str(rules_file))
    assert p.returncode == 0, p.stderr
    lines = [json.loads(ln) for ln in p.stdout.splitlines()]
    actions = {(ln["pattern"], ln["action"], ln["result"]) for ln in lines if ln.get("event") == "watchdog.action"}
    assert actions == {("disk-full", "resume", "ok"), ("rate-limit", "report", "ok"),
                       ("rules-missing", "reload-rules", "ok")}
    assert auditd.signals(wait_for=1) == ["SIGUSR2"]
    assert (tmp_path / "calls").read_text().split() == ["reload"]
    fams = textfile.families_by_name((tmp_path / FILE_NAME).read_text())
    assert ({"key": "tmp-exec"}, 2.0) in fams["sentinel_audit_events_total"]


def test_cli_dry_run_changes_nothing(tmp_path: Path, auditd: FakeAuditd) -> None:
    (tmp_path / "messages").write_text(LINES["backlog-limit"] + "\n")
    (tmp_path / "audit.log").touch()
    (tmp_path / "listing").write_text("No rules")
    p = _watchdog(tmp_path, auditd, "--dry-run")
    assert p.returncode == 0, p.stderr
    results = [ln["result"] for ln in map(json.loads, p.stdout.splitlines()) if ln.get("event") == "watchdog.action"]
    assert results == ["dry_run", "dry_run"]
    assert not (tmp_path / "calls").exists() and auditd.signals() == []


def test_cli_refuses_the_real_system_under_pytest(tmp_path: Path, auditd: FakeAuditd) -> None:
    base = [sys.executable, "-m", "sentinel", "watchdog", "--once", "--journal", "off",
            "--audit-log", str(tmp_path / "none.log")]
    p = subprocess.run([*base, "--pid-file", str(auditd.pid_file)], capture_output=True, text=True, timeout=60,
                       check=False, cwd=REPO)
    assert p.returncode == 2 and "list_rules" in p.stderr, "the real `auditctl -l`"
    p = subprocess.run([*base, "--no-rules-check", "--dry-run"], capture_output=True, text=True, timeout=60,
                       check=False, cwd=REPO)
    assert p.returncode == 2 and "real auditd" in p.stderr, "the real pid file"
    with pytest.raises(RealSystemRefused):
        PidFileAuditd()


def test_journal_follower_reads_messages(tmp_path: Path) -> None:
    from sentinel.watchdog.sources import JournalFollower

    entries = tmp_path / "entries.json"
    entries.write_text(
        json.dumps({"_TRANSPORT": "kernel", "MESSAGE": LINES["backlog-limit"]}) + "\n"
        + json.dumps({"SYSLOG_IDENTIFIER": "auditd", "MESSAGE": list(LINES["disk-full"].encode())}) + "\n"
        + "not json\n" + json.dumps({"MESSAGE": None}) + "\n")
    fake = tmp_path / "journalctl"
    fake.write_text(f"#!/bin/sh\necho \"$@\" > {tmp_path / 'argv'}\ncat {entries}\nexec sleep 60\n")
    fake.chmod(0o755)
    follower = JournalFollower(str(fake))
    try:
        got: list[str] = []
        deadline = time.monotonic() + 10
        while len(got) < 2 and time.monotonic() < deadline:
            got += follower.read_new()
            time.sleep(0.01)
    finally:
        follower.close()
    assert got == [LINES["backlog-limit"], LINES["disk-full"]], "bytes MESSAGEs decoded, junk skipped"
    argv = (tmp_path / "argv").read_text().split()
    assert argv[:5] == ["-f", "-o", "json", "-n", "0"] and "_TRANSPORT=kernel" in argv
    assert "SYSLOG_IDENTIFIER=auditd" in argv
