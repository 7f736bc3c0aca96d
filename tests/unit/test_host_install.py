"""The ``sentinel host`` commands; install and remove on a non-NixOS host (install-audit-rules,
remove-audit-rules, status).

Always under a temporary ``--root``: the real / is refused under pytest, and ``--load`` (the only
path to the kernel and systemd) is refused for any other root. Idempotence, the dry-run diff,
removal of only what carries Sentinel's marker, and the units: ``systemd-analyze verify`` finds
nothing to complain about, ``systemd-analyze security --offline`` rates their exposure, and the
ExecStart lines are valid ``sentinel`` command lines.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from sentinel.cli import build_parser
from sentinel.cli import main as sentinel_main
from sentinel.host import install, procmem, rules, textfile, units
from sentinel.host.safety import RealSystemRefused

from tests.support import missing_tool

SENTINEL = str(Path(sys.executable).parent / "sentinel")
RULES = Path("etc/audit/rules.d/sentinel.rules")
WATCHDOG = Path("etc/systemd/system/sentinel-watchdog.service")
COLLECTOR = Path("etc/systemd/system/sentinel-procmem.service")


def _cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    rc = sentinel_main(list(args))
    out = capsys.readouterr()
    return rc, out.out, out.err


def _install(capsys: pytest.CaptureFixture[str], root: Path, *args: str) -> tuple[int, str, str]:
    return _cli(capsys, "host", "install-audit-rules", "--root", str(root), "--sentinel-bin", SENTINEL, *args)


def test_install_is_idempotent_and_dry_run_writes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = _install(capsys, tmp_path, "--extra", "tmp-exec", "--dry-run")
    assert rc == 0
    assert out.count("would create: ") == 3
    assert "+-a always,exit -F arch=b64 -S execve,execveat -F dir=/tmp -k tmp-exec" in out
    assert list(tmp_path.iterdir()) == [], "dry run writes nothing"

    rc, out, _ = _install(capsys, tmp_path, "--extra", "tmp-exec")
    assert rc == 0 and out.count("create: ") == 3 and "not loaded" in out
    assert (tmp_path / RULES).read_text() == rules.render_audit_rules(rules.Options(extras=("tmp-exec",)))
    assert (tmp_path / RULES).stat().st_mode & 0o777 == 0o640
    assert (tmp_path / WATCHDOG).stat().st_mode & 0o777 == 0o644
    mtimes = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file()}

    rc, out, _ = _install(capsys, tmp_path, "--extra", "tmp-exec")
    assert rc == 0 and out.count("unchanged: ") == 3 and "nothing to change" in out and "not loaded" not in out
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file()} == mtimes

    rc, out, _ = _install(capsys, tmp_path, "--extra", "tmp-exec", "--extra", "kmod-change", "--dry-run")
    assert "would update: " in out and "+-a always,exit -F arch=b64 -S init_module,finit_module,delete_module" in out
    assert not re.search(r"^-[^#].*-k tmp-exec", out, re.M), "the tmp-exec rules stay"
    assert (tmp_path / RULES).read_text() == rules.render_audit_rules(rules.Options(extras=("tmp-exec",)))


def test_status_reports_the_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    textfiles = tmp_path / "textfile"
    textfiles.mkdir()
    rc, out, _ = _cli(capsys, "host", "status", "--root", str(tmp_path), "--textfile-dir", str(textfiles))
    assert rc == 0 and "rules: " in out and "not installed" in out
    _install(capsys, tmp_path, "--extra", "etc-change", "--immutable")
    (textfiles / "sentinel_watchdog.prom").write_text("")
    rc, out, _ = _cli(capsys, "host", "status", "--root", str(tmp_path), "--textfile-dir", str(textfiles))
    assert "installed (exec-watchdog, file-watchdog, ptrace-watchdog, etc-change; immutable), up to date" in out
    assert f"unit: {units.WATCHDOG_UNIT}: installed" in out
    assert re.search(r"sentinel_watchdog\.prom: written \d+s ago", out)
    assert "sentinel_process_memory.prom: missing" in out
    assert "auditd:" not in out, "the live checks run only for root /"
    path = tmp_path / RULES
    path.write_text(path.read_text().replace("-k etc-change", "-k etc-chnage"))
    rc, out, _ = _cli(capsys, "host", "status", "--root", str(tmp_path))
    assert "differs from what install-audit-rules writes now" in out


def test_remove_takes_only_what_it_wrote(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _install(capsys, tmp_path)
    rc, out, _ = _cli(capsys, "host", "remove-audit-rules", "--root", str(tmp_path), "--dry-run")
    assert rc == 0 and out.count("would remove: ") == 3 and "--- " + str(tmp_path / RULES) in out
    assert (tmp_path / RULES).exists()
    rc, out, _ = _cli(capsys, "host", "remove-audit-rules", "--root", str(tmp_path))
    assert rc == 0 and out.count("remove: ") == 3
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]
    rc, out, _ = _cli(capsys, "host", "remove-audit-rules", "--root", str(tmp_path))
    assert rc == 0 and "nothing to change" in out

    foreign = tmp_path / RULES
    foreign.write_text("-w /etc/hosts -p wa -k hosts\n")
    rc, _, err = _cli(capsys, "host", "remove-audit-rules", "--root", str(tmp_path))
    assert rc == 2 and "not written by sentinel" in err and foreign.exists()
    rc, _, _ = _cli(capsys, "host", "remove-audit-rules", "--root", str(tmp_path), "--force")
    assert rc == 0 and not foreign.exists()


def test_the_real_system_is_out_of_reach(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for args in (["install-audit-rules", "--dry-run"], ["install-audit-rules", "--root", "/", "--load"],
                 ["remove-audit-rules", "--dry-run"], ["status"]):
        rc, _, err = _cli(capsys, "host", *args)
        assert rc == 2 and "under pytest" in err, args
    rc, _, err = _install(capsys, tmp_path, "--load")
    assert rc == 2 and "--root /" in err, "--load loads into this machine: only with root /"
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(RealSystemRefused):
        install.plan_install(tmp_path / ".." / ".." / ".." / ".." / ".." / ".." / "..", rules.Options())
    assert install.load_commands(installing=True, with_units=True)[-2:] == [
        ["augenrules", "--load"], ["systemctl", "enable", "--now", units.WATCHDOG_UNIT, units.COLLECTOR_UNIT]]


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        missing_tool(f"{name} not installed (Debian package systemd)")
    assert path is not None
    return path


@pytest.mark.parametrize(("unit", "max_exposure"), [(WATCHDOG, 3.0), (COLLECTOR, 2.0)])
def test_units_verify_and_are_hardened(tmp_path: Path, capsys: pytest.CaptureFixture[str], unit: Path,
                                       max_exposure: float) -> None:
    _install(capsys, tmp_path, "--textfile-dir", str(tmp_path / "textfile"))
    path = tmp_path / unit
    text = path.read_text()
    for directive in ("NoNewPrivileges=yes", "ProtectSystem=strict", f"ReadWritePaths={tmp_path / 'textfile'}"):
        assert directive in text
    analyze = _tool("systemd-analyze")
    p = subprocess.run([analyze, "verify", str(path)], capture_output=True, text=True, timeout=60, check=False)
    assert p.returncode == 0 and not p.stderr.strip(), p.stderr
    p = subprocess.run([analyze, "security", "--offline=yes", str(path)], capture_output=True, text=True,
                       timeout=60, check=False)
    m = re.search(r"Overall exposure level for \S+: ([\d.]+)", p.stdout)
    assert m, p.stdout + p.stderr
    assert float(m.group(1)) <= max_exposure, p.stdout
    exec_start = next(ln for ln in text.splitlines() if ln.startswith("ExecStart="))[len("ExecStart="):]
    argv = shlex.split(exec_start)
    assert argv[0] == SENTINEL
    build_parser().parse_args(argv[1:])  # the unit runs a valid sentinel command line


def test_the_capability_sets() -> None:
    assert units.WATCHDOG_HARDENING["CapabilityBoundingSet"].split() == ["CAP_AUDIT_CONTROL", "CAP_AUDIT_READ",
                                                                         "CAP_KILL"]
    assert units.COLLECTOR_HARDENING["CapabilityBoundingSet"] == ""
    assert units.COLLECTOR_HARDENING["PrivateNetwork"] == "yes"


def test_render_rules_cli(capsys: pytest.CaptureFixture[str]) -> None:
    assert sentinel_main(["host", "render-rules", "--extra", "tmp-exec"]) == 0
    assert capsys.readouterr().out == rules.render_audit_rules(rules.Options(extras=("tmp-exec",)))
    assert sentinel_main(["host", "render-rules", "--platform", "nixos", "--format", "json", "--all-extras",
                          "--auditd-exe", "/nix/store/x-audit/bin/auditd"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out == rules.nixos_rules(rules.Options(extras=rules.EXTRA_SETS,
                                            paths=rules.nixos_paths("/nix/store/x-audit/bin/auditd")))
    assert sentinel_main(["host", "render-rules", "--platform", "nixos", "--format", "rules"]) == 2


def test_collect_processes_cli(tmp_path: Path) -> None:
    assert sentinel_main(["host", "collect-processes", "--textfile-dir", str(tmp_path), "--top", "3"]) == 0
    series = textfile.families_by_name((tmp_path / procmem.FILE_NAME).read_text())[procmem.MEMORY_METRIC]
    assert 1 <= len(series) <= 6
