"""``sentinel host ...``: render and install the audit rules and the units, status, the process
collector (``sentinel watchdog`` is :mod:`sentinel.watchdog.cli`)."""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import sys
import time
from pathlib import Path

from sentinel.host import rules, units

__all__ = ["add_arguments"]


def _default_bin() -> str:
    beside = Path(sys.executable).parent / "sentinel"
    return str(beside) if beside.exists() else shutil.which("sentinel") or "/usr/local/bin/sentinel"


def _options(ns: argparse.Namespace, platform: str = "debian") -> rules.Options:
    extras = tuple(rules.EXTRA_SETS) if ns.all_extras else tuple(dict.fromkeys(ns.extra))
    paths = rules.DEBIAN if platform == "debian" else rules.nixos_paths(ns.auditd_exe, ns.kmod_bin)
    return rules.Options(extras=extras, paths=paths, quiet_uids=tuple(ns.quiet_uid), immutable=ns.immutable)


def _rule_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--extra", action="append", default=[], choices=rules.EXTRA_SETS, metavar="NAME",
                   help=f"switch on an extra rule set (repeat): {', '.join(rules.EXTRA_SETS)}")
    p.add_argument("--all-extras", action="store_true", help="switch on every extra rule set")
    p.add_argument("--quiet-uid", action="append", type=int, default=[], metavar="UID",
                   help="leave this service account's execs out of exec-service (repeat)")
    p.add_argument("--immutable", action="store_true",
                   help="end with -e 2: no rule can change until reboot (opt-in; not for NixOS, use enable = \"lock\")")


def _render(ns: argparse.Namespace) -> int:
    opts = _options(ns, ns.platform)
    if ns.format == "rules":
        if ns.platform == "nixos":
            print("sentinel host render-rules: NixOS takes a list (--format json or nix)", file=sys.stderr)
            return 2
        sys.stdout.write(rules.render_audit_rules(opts))
        return 0
    lines = rules.nixos_rules(opts) if ns.platform == "nixos" else [ln.text for ln in rules.build(opts)]
    if ns.format == "json":
        print(json.dumps(lines, indent=2))
    else:  # a Nix list literal for security.audit.rules
        print("[")
        for line in lines:
            print(f"  {json.dumps(line)}")
        print("]")
    return 0


def _install(ns: argparse.Namespace) -> int:
    from sentinel.host import install
    from sentinel.host.safety import RealSystemRefused

    try:
        changes = install.plan_install(ns.root, _options(ns), with_units=not ns.no_units, sentinel_bin=ns.sentinel_bin,
                                       textfile_dir=ns.textfile_dir, load=ns.load)
    except (ValueError, RealSystemRefused) as e:
        print(f"sentinel host install-audit-rules: {e}", file=sys.stderr)
        return 2
    changed = install.apply(changes, dry_run=ns.dry_run, out=sys.stdout)
    if ns.load and not ns.dry_run:
        return _run_all(install.load_commands(installing=True, with_units=not ns.no_units))
    if changed and not ns.dry_run:
        print("not loaded: run `augenrules --load` and `systemctl daemon-reload` (or re-run with --load)")
    return 0


def _remove(ns: argparse.Namespace) -> int:
    from sentinel.host import install
    from sentinel.host.safety import RealSystemRefused

    try:
        changes = install.plan_remove(ns.root, force=ns.force, load=ns.load)
    except (ValueError, RealSystemRefused) as e:
        print(f"sentinel host remove-audit-rules: {e}", file=sys.stderr)
        return 2
    install.apply(changes, dry_run=ns.dry_run, out=sys.stdout)
    if ns.load and not ns.dry_run:
        return _run_all(install.load_commands(installing=False, with_units=True))
    return 0


def _run_all(commands: list[list[str]]) -> int:
    from sentinel.watchdog.auditd import run_command

    status = 0
    for argv in commands:
        rc, out = run_command(argv, 120)
        print(f"$ {' '.join(argv)} -> {rc}{': ' + out if out else ''}")
        status = status or rc
    return status


def _status(ns: argparse.Namespace) -> int:
    from sentinel.host import install
    from sentinel.host.safety import RealSystemRefused
    from sentinel.watchdog.auditd import run_command

    live = ns.root.resolve() == Path("/")
    try:
        lines = install.status(ns.root, runner=run_command if live else None, textfile_dir=ns.textfile_dir,
                               now=time.time())
    except RealSystemRefused as e:
        print(f"sentinel host status: {e}", file=sys.stderr)
        return 2
    print("\n".join(lines))
    return 0


def _collect(ns: argparse.Namespace) -> int:
    from sentinel.host.procmem import Collector
    from sentinel.platform import logging as json_logging

    json_logging.configure("procmem")
    with contextlib.suppress(KeyboardInterrupt):
        Collector(ns.textfile_dir, ns.top, ns.proc).run(ns.interval)
    return 0


def add_arguments(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``host`` and its subcommands to the ``sentinel`` parser."""
    host = sub.add_parser("host", help="host security: audit rules, their install, the process collector")
    hsub = host.add_subparsers(dest="host", required=True)

    p = hsub.add_parser("render-rules", help="print the audit rules (audit.rules, or a list for NixOS)")
    _rule_args(p)
    p.add_argument("--platform", choices=("debian", "nixos"), default="debian")
    p.add_argument("--format", choices=("rules", "json", "nix"), default="rules")
    p.add_argument("--auditd-exe", default=None, help="NixOS: the real auditd binary (a store path)")
    p.add_argument("--kmod-bin", default=None, help="NixOS: the kmod package's bin directory (a store path)")
    p.set_defaults(func=_render)

    p = hsub.add_parser("install-audit-rules", help="install the rules (rules.d/sentinel.rules) and the agents' units")
    _rule_args(p)
    p.add_argument("--root", type=Path, default=Path("/"), help="install under this directory (default /)")
    p.add_argument("--dry-run", action="store_true", help="print the diff of what would change, change nothing")
    p.add_argument("--load", action="store_true",
                   help="then load: augenrules --load, systemctl daemon-reload, enable --now the units (root / only)")
    p.add_argument("--no-units", action="store_true", help="rules only, no systemd units")
    p.add_argument("--textfile-dir", default=units.DEFAULT_TEXTFILE_DIR, help="the node exporter's textfile directory")
    p.add_argument("--sentinel-bin", default=_default_bin(),
                   help="the sentinel executable the units run (default: the one next to this Python)")
    p.set_defaults(func=_install, auditd_exe=None, kmod_bin=None)

    p = hsub.add_parser("remove-audit-rules", help="remove what install-audit-rules wrote")
    p.add_argument("--root", type=Path, default=Path("/"))
    p.add_argument("--dry-run", action="store_true")
    p.add_argument("--load", action="store_true",
                   help="then: disable --now the units, daemon-reload, augenrules --load (root / only)")
    p.add_argument("--force", action="store_true", help="remove the files even without sentinel's marker")
    p.set_defaults(func=_remove)

    p = hsub.add_parser("status", help="installed files; for root /, auditd and the loaded rule keys")
    p.add_argument("--root", type=Path, default=Path("/"))
    p.add_argument("--textfile-dir", type=Path, default=Path(units.DEFAULT_TEXTFILE_DIR))
    p.set_defaults(func=_status)

    p = hsub.add_parser("collect-processes", help="write the top processes by memory and CPU as textfile metrics")
    p.add_argument("--textfile-dir", type=Path, required=True)
    p.add_argument("--top", type=int, default=10, help="processes by memory, and by CPU (default 10 each)")
    p.add_argument("--interval", type=float, default=None, help="repeat every S seconds (default: once)")
    p.add_argument("--proc", type=Path, default=Path("/proc"), help=argparse.SUPPRESS)
    p.set_defaults(func=_collect)
