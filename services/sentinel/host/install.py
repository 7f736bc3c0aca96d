"""Install and remove the audit rules and the host agents' units on a non-NixOS host.

Files, under ``root`` (default ``/``; tests always pass a temporary directory):

* ``etc/audit/rules.d/sentinel.rules`` (0640), picked up by ``augenrules``;
* ``etc/systemd/system/sentinel-watchdog.service`` and ``sentinel-procmem.service`` (0644).

Idempotent: the plan compares what is there with what would be written, and a second run says
"nothing to change". ``--dry-run`` prints the unified diff and writes nothing. Nothing is loaded
into the kernel or into systemd unless ``load=True`` (``--load``), which requires ``root`` to be
``/`` (``augenrules`` and ``systemctl`` only know the real /etc) and is refused under pytest
(:mod:`sentinel.host.safety`), as is any run against ``/``.

Removal deletes only files that carry Sentinel's marker (``--force`` to delete anyway). Two things
outlive it until the next reboot: ``--loginuid-immutable`` (a kernel setting), and, if the rules
were installed with ``--immutable``, the loaded rules themselves.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final, TextIO

from sentinel.host import rules, units
from sentinel.host.safety import refuse_in_tests
from sentinel.watchdog.auditd import CommandRunner, PidFileAuditd

__all__ = ["RULES_FILE", "Change", "apply", "load_commands", "plan_install", "plan_remove", "status"]

RULES_FILE: Final = Path("etc/audit/rules.d/sentinel.rules")
UNIT_DIR: Final = Path("etc/systemd/system")
RULES_MARKER: Final = "## Sentinel audit rules"


@dataclass(frozen=True)
class Change:
    path: Path
    old: str | None
    new: str | None  # None: remove
    mode: int = 0o644

    @property
    def verb(self) -> str:
        if self.old == self.new:
            return "unchanged"
        return "create" if self.old is None else "remove" if self.new is None else "update"

    def diff(self) -> str:
        return "".join(difflib.unified_diff((self.old or "").splitlines(keepends=True),
                                            (self.new or "").splitlines(keepends=True),
                                            fromfile=str(self.path) if self.old is not None else "/dev/null",
                                            tofile=str(self.path) if self.new is not None else "/dev/null"))


def _check_root(root: Path, load: bool) -> Path:
    resolved = root.resolve()
    if resolved == Path("/"):
        refuse_in_tests("install into or remove from the real / (pass a temporary --root)")
    elif load:
        raise ValueError(f"--load loads into this machine's kernel and systemd: it needs --root /, not {root}")
    return resolved


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except FileNotFoundError:
        return None


def plan_install(root: Path, options: rules.Options, *, with_units: bool = True, sentinel_bin: str = "sentinel",
                 textfile_dir: str = units.DEFAULT_TEXTFILE_DIR, load: bool = False) -> list[Change]:
    base = _check_root(root, load)
    wanted = {base / RULES_FILE: (rules.render_audit_rules(options), 0o640)}
    if with_units:
        wanted[base / UNIT_DIR / units.WATCHDOG_UNIT] = (units.watchdog_unit(sentinel_bin, textfile_dir), 0o644)
        wanted[base / UNIT_DIR / units.COLLECTOR_UNIT] = (units.collector_unit(sentinel_bin, textfile_dir), 0o644)
    return [Change(path, _read(path), text, mode) for path, (text, mode) in wanted.items()]


def _ours(text: str) -> bool:
    return text.startswith((RULES_MARKER, units.MARKER))


def plan_remove(root: Path, *, force: bool = False, load: bool = False) -> list[Change]:
    base = _check_root(root, load)
    changes = []
    for path in (base / RULES_FILE, base / UNIT_DIR / units.WATCHDOG_UNIT, base / UNIT_DIR / units.COLLECTOR_UNIT):
        old = _read(path)
        if old is None:
            continue
        if not _ours(old) and not force:
            raise ValueError(f"{path} was not written by sentinel (no marker); remove it by hand or pass --force")
        changes.append(Change(path, old, None))
    return changes


def apply(changes: Sequence[Change], *, dry_run: bool, out: TextIO) -> bool:
    """Print what changes (a diff when ``dry_run``) and, unless ``dry_run``, do it. True if
    anything changed (or would)."""
    todo = [c for c in changes if c.verb != "unchanged"]
    for c in changes:
        if c.verb == "unchanged":
            print(f"unchanged: {c.path}", file=out)
    if not todo:
        print("nothing to change", file=out)
        return False
    for c in todo:
        print(f"{'would ' if dry_run else ''}{c.verb}: {c.path}", file=out)
        if dry_run:
            out.write(c.diff())
            continue
        if c.new is None:
            c.path.unlink()
            continue
        c.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = c.path.with_name(f".{c.path.name}.sentinel-tmp")
        tmp.write_text(c.new)
        os.chmod(tmp, c.mode)
        os.replace(tmp, c.path)
    return True


def load_commands(*, installing: bool, with_units: bool) -> list[list[str]]:
    """What ``--load`` runs after the files changed (root ``/`` only)."""
    cmds: list[list[str]] = []
    if not installing and with_units:
        cmds.append(["systemctl", "disable", "--now", units.WATCHDOG_UNIT, units.COLLECTOR_UNIT])
    cmds.append(["systemctl", "daemon-reload"])
    cmds.append(["augenrules", "--load"])
    if installing and with_units:
        cmds.append(["systemctl", "enable", "--now", units.WATCHDOG_UNIT, units.COLLECTOR_UNIT])
    return cmds


def status(root: Path, *, runner: CommandRunner | None, textfile_dir: Path | None, now: float) -> list[str]:
    """Human-readable state: the files, and for root ``/`` (with a ``runner``) auditd and the
    loaded keys."""
    base = root.resolve()
    lines = []
    text = _read(base / RULES_FILE)
    expected: tuple[str, ...] = rules.expected_keys()
    if text is None:
        lines.append(f"rules: {base / RULES_FILE}: not installed")
    else:
        opts = rules.parse_options_line(text)
        if opts is None:
            lines.append(f"rules: {base / RULES_FILE}: present, not written by this version of sentinel")
        else:
            current = rules.render_audit_rules(opts) == text
            sets = ", ".join((*rules.BASE_SETS, *opts.extras))
            lines.append(f"rules: {base / RULES_FILE}: installed ({sets}; "
                         f"{'immutable' if opts.immutable else 'not immutable'}), "
                         f"{'up to date' if current else 'differs from what install-audit-rules writes now'}")
            expected = rules.expected_keys(opts.extras)
    for name in (units.WATCHDOG_UNIT, units.COLLECTOR_UNIT):
        unit = _read(base / UNIT_DIR / name)
        state = "not installed" if unit is None else "installed" if _ours(unit) else "present, not sentinel's"
        lines.append(f"unit: {name}: {state}")
    if runner is not None:
        refuse_in_tests("query the real auditd and kernel")
        pid = PidFileAuditd().pid()
        lines.append(f"auditd: {'running, pid ' + str(pid) if pid else 'not running'}")
        rc, out = runner(["auditctl", "-l"], 30)
        if rc != 0:
            lines.append(f"kernel rules: unknown (auditctl -l exited {rc}: {out[-200:]})")
        else:
            missing = [k for k in expected if k not in rules.keys_in_text(out)]
            lines.append("kernel rules: all expected keys loaded" if not missing
                         else f"kernel rules: missing {', '.join(missing)}")
    if textfile_dir is not None:
        from sentinel.host import procmem
        from sentinel.watchdog import FILE_NAME as WATCHDOG_FILE

        for name in (WATCHDOG_FILE, procmem.FILE_NAME):
            path = textfile_dir / name
            try:
                age = now - path.stat().st_mtime
            except FileNotFoundError:
                lines.append(f"textfile: {path}: missing")
            else:
                lines.append(f"textfile: {path}: written {age:.0f}s ago")
    return lines
