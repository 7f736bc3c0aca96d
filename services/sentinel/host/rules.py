"""Sentinel's auditd rule sets as data: one source for ``audit.rules`` and NixOS.

The same :class:`Rule` objects render to

* the lines of ``/etc/audit/rules.d/sentinel.rules`` on a Debian-style host (augenrules, with the
  buffer settings ``-D``/``-b``/``-f``): :func:`render_audit_rules`;
* the list of strings for the NixOS option ``security.audit.rules`` (the module writes ``-D``,
  ``-b``, ``-f``, ``-r`` and ``-e`` itself, so those are left out): :func:`nixos_rules`.

**Rule sets.** Base sets are always on: ``exec-watchdog`` (every execve/execveat, keyed
``exec-watchdog`` for logged-in users and ``exec-service`` for service accounts, whose auid is
unset), ``file-watchdog`` (open-family calls failing with EACCES or EPERM) and ``ptrace-watchdog``
(code injection and attach requests keyed ``ptrace-injection``/``ptrace-attach`` before the
generic ``ptrace-watchdog`` rule). Extra sets are switched on by name: ``etc-change``,
``shadow-access``, ``passwd-access``, ``tmp-exec``, ``kmod-change`` (:data:`EXTRA_SETS`). Each set
says what it catches and what it costs (:attr:`RuleSet.cost`; docs/host-security.md has the
table).

**How the kernel picks the rule (and the key) for an event.** At syscall exit the kernel runs two
filters (``__audit_syscall_exit`` in kernel/auditsc.c): first the exit list, where the *first*
matching rule decides record/skip and sets the key, then the inode list (rules with a ``path=``
field, including ``-w`` on a file), where the first matching rule for any of the event's names
decides again and overrides the key. Hence the render order:

1. control lines, then global exclusions (``never``) so noise is dropped before anything else;
2. *specific* rules (``tier="specific"``), e.g. ptrace with ``a0=PTRACE_POKETEXT``, exec from
   ``/tmp``;
3. *generic* rules (``tier="generic"``), e.g. any ptrace, any exec.

A generic rule placed before a specific one with the same syscalls would take every event (the
bug in upstream ``42-injection.rules``, where the b64 generic ptrace rule comes first);
:func:`lint` refuses such shadowing by evaluating each rule's own witness event with
:func:`first_match`, a small model of those two filters.

Every syscall rule is rendered as an ``arch=b32`` line followed by its ``arch=b64`` twin
(x86-64 with the i386 compat ABI; the syscall names of each arch are listed explicitly, e.g. the
i386 ``chown32``). Service accounts that exec a lot can be left out of ``exec-service`` by uid
(``quiet_uids``): that is a ``uid!=`` filter on that one rule, not a global ``never`` rule, so the
same account executing from ``/tmp`` is still caught by ``tmp-exec``.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Final, Literal

__all__ = [
    "ALL_KEYS",
    "BASE_SETS",
    "DEBIAN",
    "EXTRA_SETS",
    "RULE_SETS",
    "Event",
    "Field",
    "HostPaths",
    "Line",
    "Options",
    "Rule",
    "RuleSet",
    "build",
    "expected_keys",
    "first_match",
    "keys_in_text",
    "lint",
    "nixos_paths",
    "nixos_rules",
    "options_line",
    "parse_options_line",
    "render_audit_rules",
    "witness",
]

Arch = Literal["b32", "b64"]
ARCHES: Final[tuple[Arch, Arch]] = ("b32", "b64")
#: auid of a task that never logged in (daemons, systemd services): (uint32)-1.
AUID_UNSET: Final = 4294967295

#: Buffer settings (upstream 10-base-config / CIS): 8192 queued events, wait up to 60000 ticks
#: when the queue is full before dropping, failure mode 1 = printk (never panic a server for
#: audit). NixOS takes these through security.audit.backlogLimit / failureMode (issue 8).
BACKLOG_LIMIT: Final = 8192
BACKLOG_WAIT_TIME: Final = 60000
FAILURE_MODE: Final = 1

# ptrace(2) requests (linux/ptrace.h; the same numbers on i386 and x86-64).
PTRACE_INJECTION: Final = {"PTRACE_POKETEXT": 0x4, "PTRACE_POKEDATA": 0x5, "PTRACE_POKEUSER": 0x6,
                           "PTRACE_SETREGS": 0xD, "PTRACE_SETREGSET": 0x4205}
PTRACE_ATTACH: Final = {"PTRACE_ATTACH": 0x10, "PTRACE_SEIZE": 0x4206}

_OPEN_B64: Final = ("open", "creat", "openat", "openat2", "open_by_handle_at", "truncate", "ftruncate")
_OPEN_B32: Final = (*_OPEN_B64, "truncate64", "ftruncate64")
_ATTR_B64: Final = ("chmod", "fchmod", "fchmodat", "chown", "fchown", "fchownat", "lchown",
                    "setxattr", "lsetxattr", "fsetxattr", "removexattr", "lremovexattr", "fremovexattr")
_ATTR_B32: Final = (*_ATTR_B64, "chown32", "fchown32", "lchown32")
_EXEC: Final = ("execve", "execveat")
_KMOD: Final = ("init_module", "finit_module", "delete_module")
TMP_DIRS: Final = ("/tmp", "/var/tmp", "/dev/shm")  # noqa: S108 (watched, not used)


@dataclass(frozen=True)
class Field:
    """One ``-F name<op>value`` filter."""

    name: str
    op: Literal["=", "!=", ">=", "<=", ">", "<"]
    value: str

    def render(self) -> str:
        return f"-F {self.name}{self.op}{self.value}"


@dataclass(frozen=True)
class Rule:
    """One rule: a syscall rule (``syscalls``, rendered once per arch), a filesystem rule
    (``fields`` with ``path=``/``dir=`` and ``perm=``, no syscalls, one line for both ABIs), a
    file watch (``watch``, ``-w PATH -p PERM``) or an exclude-list rule (``filter="exclude"``).
    """

    key: str | None
    tier: Literal["exclude", "specific", "generic"]
    syscalls: tuple[str, ...] = ()
    b32_syscalls: tuple[str, ...] | None = None  # when the i386 names differ
    fields: tuple[Field, ...] = ()
    action: Literal["always", "never"] = "always"
    filter: Literal["exit", "exclude"] = "exit"
    watch: str | None = None
    perm: str = ""
    why: str = ""

    def syscalls_for(self, arch: Arch) -> tuple[str, ...]:
        return self.b32_syscalls if arch == "b32" and self.b32_syscalls is not None else self.syscalls


@dataclass(frozen=True)
class RuleSet:
    name: str
    base: bool
    summary: str
    cost: str
    rules: tuple[Rule, ...]

    @property
    def keys(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(r.key for r in self.rules if r.key))


@dataclass(frozen=True)
class HostPaths:
    """Where the binaries a rule names live on the target.

    ``-F exe=`` and ``-w`` match the inode of the named file *without following a final symlink*
    (the kernel resolves the path with ``kern_path_locked``), so they need the real file: on
    NixOS that is a store path (``${pkgs.kmod}/bin/kmod``) that only the module knows, and the
    ``/run/current-system/sw/bin`` names are symlinks. The kmod syscall rules do not depend on
    paths and are the reliable part of ``kmod-change``.
    """

    platform: Literal["debian", "nixos"]
    auditd_exe: str | None
    kmod_tools: tuple[str, ...]


DEBIAN: Final = HostPaths("debian", "/usr/sbin/auditd",
                          ("/usr/bin/kmod", "/usr/sbin/modprobe", "/usr/sbin/insmod", "/usr/sbin/rmmod"))
NIXOS_TOOL_DIRS: Final = ("/run/current-system/sw/bin", "/run/wrappers/bin")


def nixos_paths(auditd_exe: str | None = None, kmod_bin: str | None = None) -> HostPaths:
    """NixOS paths: pass the store paths from the module (``"${cfg.package}/bin/auditd"``,
    ``"${pkgs.kmod}/bin"``) so the exe exclusion and the kmod watches name real files.

    Without ``auditd_exe`` the exe exclusion is left out (the kernel never audits the registered
    audit daemon anyway, see ``auditd_test_task``); without ``kmod_bin`` the watches name the
    ``/run/current-system/sw/bin`` tools (symlinks: best effort) and ``/run/wrappers/bin`` (real
    files, for a host that wraps them).
    """
    tools = ("kmod", "modprobe", "insmod", "rmmod")
    dirs = (kmod_bin, *NIXOS_TOOL_DIRS) if kmod_bin else NIXOS_TOOL_DIRS
    return HostPaths("nixos", auditd_exe, tuple(f"{d}/{t}" for d in dirs for t in tools))


@dataclass(frozen=True)
class Options:
    """What to render: which extra sets, for which host, and the knobs."""

    extras: tuple[str, ...] = ()
    paths: HostPaths = DEBIAN
    quiet_uids: tuple[int, ...] = ()
    immutable: bool = False
    backlog_limit: int = BACKLOG_LIMIT
    backlog_wait_time: int = BACKLOG_WAIT_TIME
    failure_mode: int = FAILURE_MODE

    def __post_init__(self) -> None:
        names = [s.name for s in _extra_sets(self.paths)]
        unknown = sorted(set(self.extras) - set(names))
        if unknown:
            raise ValueError(f"unknown rule set(s) {', '.join(unknown)}; extras are {', '.join(names)}")
        if any(u < 0 or u >= AUID_UNSET for u in self.quiet_uids):
            raise ValueError("quiet uids must be real uids")
        if self.failure_mode not in (0, 1, 2):
            raise ValueError("failure mode is 0 (silent), 1 (printk) or 2 (panic)")


def _sys(key: str, tier: Literal["specific", "generic"], syscalls: tuple[str, ...], *fields: Field,
         b32: tuple[str, ...] | None = None, why: str = "") -> Rule:
    return Rule(key=key, tier=tier, syscalls=syscalls, b32_syscalls=b32, fields=fields, why=why)


def _exec_rules(quiet_uids: Sequence[int]) -> tuple[Rule, ...]:
    quiet = tuple(Field("uid", "!=", str(u)) for u in quiet_uids)
    return (
        _sys("exec-watchdog", "generic", _EXEC, Field("auid", "!=", "unset"),
             why="every program a logged-in user (or anything in their session, sudo included) runs"),
        _sys("exec-service", "generic", _EXEC, Field("auid", "=", "unset"), *quiet,
             why="every program a service account runs (auid unset): a compromised daemon spawning a "
                 "shell; the login-uid filters of the usual rule sets miss exactly this"),
    )


def _base_sets(quiet_uids: Sequence[int]) -> tuple[RuleSet, ...]:
    ptrace_specific = tuple(
        _sys(key, "specific", ("ptrace",), Field("a0", "=", hex(req)), why=f"ptrace({name})")
        for key, requests in (("ptrace-injection", PTRACE_INJECTION), ("ptrace-attach", PTRACE_ATTACH))
        for name, req in requests.items())
    return (
        RuleSet("exec-watchdog", True, "every execve/execveat: users (exec-watchdog) and service accounts "
                "(exec-service)",
                "the dominant cost: one event of 6-7 records per program started, about 1.3 KB of log "
                "(tests/data/audit/exec-watchdog.log, a curl with three arguments, is 1,294 bytes; long "
                "command lines make it larger). An idle server starts a few programs a second (a few KB/s); "
                "a build or CI host can start hundreds (0.5-1 MB/s) and needs the backlog. Leaving out a "
                "service account that forks helpers (quiet_uids) saves its exec rate times about 1.3 KB; "
                "sentinel_audit_events_total{key=\"exec-service\"} shows the rate before and after.",
                _exec_rules(quiet_uids)),
        RuleSet("file-watchdog", True, "open-family calls that fail with EACCES or EPERM",
                "only failures are recorded, normally a handful an hour; the rule is checked on every "
                "open-family syscall (a bitmask test and one integer compare). A program that probes "
                "files it may not read (some agents, shells with unreadable rc files) can produce bursts; "
                "exclude it by uid on this rule if it does.",
                (_sys("file-watchdog", "generic", _OPEN_B64, Field("exit", "=", "-EACCES"), b32=_OPEN_B32,
                      why="permission denied by mode bits or ACLs"),
                 _sys("file-watchdog", "generic", _OPEN_B64, Field("exit", "=", "-EPERM"), b32=_OPEN_B32,
                      why="refused by capabilities, immutable files or an LSM"))),
        RuleSet("ptrace-watchdog", True, "ptrace: code injection (POKETEXT/POKEDATA/POKEUSER/SETREGS/"
                "SETREGSET) and attach (ATTACH/SEIZE) keyed before any other request",
                "negligible: ptrace is rare outside debuggers and strace; every event is worth reading.",
                (*ptrace_specific,
                 _sys("ptrace-watchdog", "generic", ("ptrace",), why="any other ptrace request"))),
    )


def _extra_sets(paths: HostPaths) -> tuple[RuleSet, ...]:
    def path_rule(key: str, path: str) -> Rule:
        return Rule(key=key, tier="specific", fields=(Field("path", "=", path), Field("perm", "=", "rwa"),
                                                       Field("success", "=", "0")),
                    why=f"failed read, write or attribute change of {path}")

    return (
        RuleSet("etc-change", False, "permission, owner and xattr changes under /etc",
                "small: only the chmod/chown/xattr family is checked, and only under /etc is recorded. "
                "Package upgrades, and on NixOS every activation (nixos-rebuild switch), produce a burst.",
                (_sys("etc-change", "specific", _ATTR_B64, Field("dir", "=", "/etc"), b32=_ATTR_B32,
                      why="chmod/chown/setxattr family on anything below /etc"),)),
        RuleSet("shadow-access", False, "failed access to /etc/shadow and /etc/gshadow",
                "none measurable: a path rule is only evaluated for syscalls that touch that inode, and "
                "only failures are recorded.",
                (path_rule("shadow-access", "/etc/shadow"), path_rule("shadow-access", "/etc/gshadow"))),
        RuleSet("passwd-access", False, "failed access to /etc/passwd",
                "none measurable (as shadow-access); every process reads /etc/passwd, but reads succeed.",
                (path_rule("passwd-access", "/etc/passwd"),)),
        RuleSet("tmp-exec", False, "programs executed from /tmp, /var/tmp and /dev/shm",
                "one tree lookup per exec on top of exec-watchdog; events are rare on a server (a few "
                "installers unpack to /tmp). A script run as 'sh /tmp/x' records only the shell: "
                "mount these noexec to prevent what this rule detects.",
                tuple(_sys("tmp-exec", "specific", _EXEC, Field("dir", "=", d), why=f"exec below {d}")
                      for d in TMP_DIRS)),
        RuleSet("kmod-change", False, "kernel module load and unload (init_module/finit_module/"
                "delete_module) and runs of the kmod tools",
                "negligible: module syscalls are rare after boot (systemd-modules-load at boot).",
                (_sys("kmod-change", "specific", _KMOD, why="module load/unload, whichever tool does it"),
                 *(Rule(key="kmod-change", tier="specific", watch=p, perm="x",
                        why=f"{p} executed (a watch names the real file, see HostPaths)")
                   for p in paths.kmod_tools))),
    )


def _sets(options: Options) -> tuple[RuleSet, ...]:
    return (*_base_sets(options.quiet_uids), *_extra_sets(options.paths))


#: Every rule set by name, with default options (docs and the CLI list them from here).
RULE_SETS: Final = {s.name: s for s in _sets(Options())}
BASE_SETS: Final = tuple(n for n, s in RULE_SETS.items() if s.base)
EXTRA_SETS: Final = tuple(n for n, s in RULE_SETS.items() if not s.base)
ALL_KEYS: Final = tuple(dict.fromkeys(k for s in RULE_SETS.values() for k in s.keys))


def expected_keys(extras: Iterable[str] = ()) -> tuple[str, ...]:
    """The keys that must be loaded for the base sets plus ``extras`` (the watchdog checks these)."""
    names = (*BASE_SETS, *extras)
    return tuple(dict.fromkeys(k for n in names for k in RULE_SETS[n].keys))


# ---------------------------------------------------------------------------------------------
# Rendering


@dataclass(frozen=True)
class Line:
    """One rendered line and where it came from (``rule`` is None for control lines)."""

    text: str
    kind: Literal["control", "rule"]
    rule: Rule | None = None
    arch: Arch | None = None
    rule_set: str | None = None

    @property
    def args(self) -> list[str]:
        return shlex.split(self.text)


def _exclusions(options: Options, watched: Sequence[Rule]) -> list[Rule]:
    out = [Rule(key=None, tier="exclude", action="never", filter="exclude",
                fields=(Field("msgtype", "=", "CRYPTO_KEY_USER"),),
                why="sshd writes one per session key destroyed: pure noise")]
    if options.paths.auditd_exe:
        # Restricted to the syscalls the rule set watches: a never rule with -S all would be
        # evaluated (an exe compare) on every syscall of every task.
        b64 = tuple(dict.fromkeys(s for r in watched for s in r.syscalls_for("b64")))
        b32 = tuple(dict.fromkeys(s for r in watched for s in r.syscalls_for("b32")))
        out.append(Rule(key=None, tier="exclude", action="never", syscalls=b64, b32_syscalls=b32,
                        fields=(Field("exe", "=", options.paths.auditd_exe),),
                        why="the audit daemon itself (the kernel skips the registered daemon already; "
                            "this also covers a kernel without that check)"))
    return out


def _rule_lines(rule: Rule, rule_set: str | None) -> list[Line]:
    key = f" -k {rule.key}" if rule.key else ""
    if rule.watch:
        return [Line(f"-w {rule.watch} -p {rule.perm}{key}", "rule", rule, None, rule_set)]
    head = f"-a {rule.action},{rule.filter}"
    fields = "".join(f" {f.render()}" for f in rule.fields)
    if not rule.syscalls:
        return [Line(f"{head}{fields}{key}", "rule", rule, None, rule_set)]
    return [Line(f"{head} -F arch={arch} -S {','.join(rule.syscalls_for(arch))}{fields}{key}", "rule", rule,
                 arch, rule_set) for arch in ARCHES]


def build(options: Options = Options(), *, nixos: bool = False) -> list[Line]:
    """Every line in order: control lines, exclusions, specific rules, generic rules (, ``-e 2``)."""
    sets = [s for s in _sets(options) if s.base or s.name in options.extras]
    lines: list[Line] = []
    if not nixos:  # the NixOS module writes -D, -b, -f (and -r, -e) itself
        lines += [Line("-D", "control"), Line(f"-b {options.backlog_limit}", "control"),
                  Line(f"-f {options.failure_mode}", "control")]
    lines += [Line(f"--backlog_wait_time {options.backlog_wait_time}", "control"),
              Line("--loginuid-immutable", "control"),
              Line("-c", "control")]  # continue past a bad line (and report it) instead of dropping the rest
    watched = [r for s in sets for r in s.rules if r.syscalls]
    for rule in _exclusions(options, watched):
        lines += _rule_lines(rule, None)
    for tier in ("specific", "generic"):
        for s in sets:
            for rule in s.rules:
                if rule.tier == tier:
                    lines += _rule_lines(rule, s.name)
    if options.immutable and not nixos:
        lines.append(Line("-e 2", "control"))
    return lines


def render_audit_rules(options: Options = Options()) -> str:
    """The ``rules.d/sentinel.rules`` file: commented, one rule per line, augenrules-ready."""
    sets = [s for s in _sets(options) if s.base or s.name in options.extras]
    out = ["## Sentinel audit rules: generated by `sentinel host install-audit-rules` from",
           "## sentinel.host.rules; edits here are overwritten. Do not edit, re-run the installer.",
           f"## Rule sets: {', '.join(s.name for s in sets)}.",
           "## Order matters: the first matching exit rule sets the key, so exclusions come first,",
           "## then specific rules, then generic ones; each syscall rule is a b32/b64 pair.",
           "## Immutable: -e 2 is the last line, so no rule can change until the next reboot."
           if options.immutable else
           "## Not immutable (no -e 2): rules can be reloaded; install with --immutable to lock them.",
           options_line(options), ""]
    section = None
    for line in build(options):
        title = ("control" if line.kind == "control" else
                 "exclusions" if line.rule and line.rule.tier == "exclude" else
                 f"{line.rule.tier} rules" if line.rule else "control")
        if title != section:
            out.append(f"## --- {title}")
            section = title
        if line.rule and line.rule.why and (line.arch in (None, "b32")):
            out.append(f"## {line.rule_set or 'exclusion'}: {line.rule.why}")
        out.append(line.text)
    return "\n".join(out) + "\n"


OPTIONS_PREFIX: Final = "## sentinel-options: "


def options_line(options: Options) -> str:
    """A machine-readable header line: what the file was rendered from (read by
    :func:`parse_options_line`, so ``sentinel host status`` can tell whether it is current)."""
    return (f"{OPTIONS_PREFIX}extras={','.join(options.extras) or '-'} "
            f"quiet-uids={','.join(map(str, options.quiet_uids)) or '-'} "
            f"immutable={'yes' if options.immutable else 'no'} platform={options.paths.platform}")


def parse_options_line(text: str) -> Options | None:
    """The :class:`Options` a rendered file names in its header, or None (not ours, or damaged)."""
    for line in text.splitlines():
        if line.startswith(OPTIONS_PREFIX):
            try:
                kv = dict(item.split("=", 1) for item in line[len(OPTIONS_PREFIX):].split())
                extras = tuple(e for e in kv["extras"].split(",") if e and e != "-")
                uids = tuple(int(u) for u in kv["quiet-uids"].split(",") if u and u != "-")
                if kv.get("platform", "debian") != "debian":
                    return None
                return Options(extras=extras, quiet_uids=uids, immutable=kv["immutable"] == "yes")
            except (KeyError, ValueError):
                return None
    return None


def nixos_rules(options: Options | None = None) -> list[str]:
    """The strings for ``security.audit.rules`` (no ``-D``/``-b``/``-f``/``-e``: the module's)."""
    opts = options or Options(paths=nixos_paths())
    return [line.text for line in build(replace(opts, immutable=False), nixos=True)]


_KEY_RE = re.compile(r"(?:-k\s+|-F\s+key=|\bkey=)\"?([A-Za-z0-9_.:-]+)\"?")


def keys_in_text(text: str) -> set[str]:
    """Keys named in rules text: an audit.rules file or ``auditctl -l`` output (``-k K``/``key=K``)."""
    return {m.group(1) for line in text.splitlines() if not line.lstrip().startswith("#")
            for m in _KEY_RE.finditer(line)}


# ---------------------------------------------------------------------------------------------
# A model of the kernel's two filters, for the lint and the tests


@dataclass(frozen=True)
class Event:
    """A syscall as the exit filters see it."""

    arch: Arch
    syscall: str
    exit: int = 0  # the return value; negative errno on failure
    a0: int = 0
    auid: int = 1000
    uid: int = 1000
    exe: str = "/usr/bin/true"
    paths: tuple[str, ...] = ()
    flags: int = 0  # open flags (O_ACCMODE decides the perm class of open/openat)

    @property
    def success(self) -> bool:
        return self.exit >= 0


_ERRNO: Final = {"EPERM": 1, "ENOENT": 2, "EACCES": 13}
_ATTR_CLASS: Final = frozenset(_ATTR_B32)
_WRITE_CLASS: Final = frozenset(("creat", "truncate", "ftruncate", "truncate64", "ftruncate64"))
_OPEN_CLASS: Final = frozenset(("open", "openat", "openat2"))


def _perm_of(event: Event) -> set[str]:
    """The perm classes of a syscall, as audit_match_perm() computes them."""
    if event.syscall in _EXEC:
        return {"x"}
    if event.syscall in _OPEN_CLASS:
        return {0: {"r"}, 1: {"w"}, 2: {"r", "w"}}.get(event.flags & 3, {"r", "w"})
    if event.syscall in _ATTR_CLASS:
        return {"a"}
    if event.syscall in _WRITE_CLASS:
        return {"w"}
    return set()


def _under(path: str, directory: str) -> bool:
    return path == directory or path.startswith(directory.rstrip("/") + "/")


def _compare(actual: int, op: str, wanted: int) -> bool:
    return {"=": actual == wanted, "!=": actual != wanted, ">=": actual >= wanted, "<=": actual <= wanted,
            ">": actual > wanted, "<": actual < wanted}[op]


def _int_value(name: str, value: str) -> int:
    if value in ("unset", "-1") and name in ("auid", "uid"):
        return AUID_UNSET
    if value.startswith("-") and value[1:] in _ERRNO:
        return -_ERRNO[value[1:]]
    return int(value, 0)


def _field_matches(f: Field, event: Event, name: str | None) -> bool:
    if f.name == "arch":
        return event.arch == f.value
    if f.name in ("auid", "uid", "a0", "exit"):
        actual = {"auid": event.auid, "uid": event.uid, "a0": event.a0, "exit": event.exit}[f.name]
        return _compare(actual, f.op, _int_value(f.name, f.value))
    if f.name == "success":
        return _compare(int(event.success), f.op, int(f.value))
    if f.name == "exe":
        return (event.exe == f.value) == (f.op == "=")
    if f.name == "dir":
        return any(_under(p, f.value) for p in event.paths) == (f.op == "=")
    if f.name == "path":
        return name == f.value
    if f.name == "perm":
        return bool(_perm_of(event) & set(f.value))
    raise ValueError(f"the model does not know field {f.name}")


def _matches(line: Line, event: Event, name: str | None = None) -> bool:
    rule = line.rule
    assert rule is not None
    if line.arch and line.arch != event.arch:
        return False
    if rule.syscalls and event.syscall not in rule.syscalls_for(line.arch or event.arch):
        return False
    if rule.watch:
        return name == rule.watch and bool(_perm_of(event) & set(rule.perm))
    return all(_field_matches(f, event, name) for f in rule.fields)


def _inode_rule(line: Line) -> bool:
    r = line.rule
    return r is not None and (r.watch is not None or any(f.name == "path" for f in r.fields))


def first_match(lines: Sequence[Line], event: Event) -> Line | None:
    """The rule that decides ``event``: the first match of the exit list, overridden by the first
    inode-list match for any of its names (audit_filter_syscall, then audit_filter_inodes).

    Returns the deciding line (a ``never`` line means "not recorded"), or None when no rule
    matches.
    """
    rules = [ln for ln in lines if ln.rule is not None and ln.rule.filter == "exit"]
    decided = next((ln for ln in rules if not _inode_rule(ln) and _matches(ln, event)), None)
    for name in event.paths:
        hit = next((ln for ln in rules if _inode_rule(ln) and _matches(ln, event, name)), None)
        if hit is not None:
            return hit
    return decided


def witness(line: Line) -> Event:
    """An event the line is written for: matches every one of its fields."""
    rule = line.rule
    assert rule is not None and rule.filter == "exit"
    arch = line.arch or "b64"
    syscall = rule.syscalls_for(arch)[0] if rule.syscalls else "openat"
    kw: dict[str, object] = {}
    paths: list[str] = []
    for f in rule.fields:
        if f.name in ("auid", "uid"):
            value = _int_value(f.name, f.value)
            kw[f.name] = value if f.op in ("=", ">=", "<=") else (1000 if value != 1000 else 1001)
        elif f.name in ("a0", "exit"):
            kw[f.name] = _int_value(f.name, f.value)
        elif f.name == "success" and f.value == "0":
            kw.setdefault("exit", -_ERRNO["EACCES"])
        elif f.name == "exe":
            kw["exe"] = f.value
        elif f.name == "dir":
            paths.append(f"{f.value.rstrip('/')}/witness")
        elif f.name == "path":
            paths.append(f.value)
    if rule.watch:
        paths.append(rule.watch)
        syscall = "execve" if "x" in rule.perm else syscall
    if "uid" not in kw and kw.get("auid") == AUID_UNSET:
        kw["uid"] = 998  # a service account
    return Event(arch=arch, syscall=syscall, paths=tuple(paths), **kw)  # type: ignore[arg-type]


def lint(lines: Sequence[Line]) -> list[str]:
    """Problems with a rendered rule list (empty when it is sound)."""
    problems: list[str] = []
    seen_rule = seen_always = False
    for i, line in enumerate(lines):
        rule = line.rule
        if line.text.startswith("-e "):
            if i != len(lines) - 1:
                problems.append(f"{line.text!r} must be the last line")
            continue
        if rule is None:
            if seen_rule and line.text.split()[0] in ("-D", "-b", "-f"):
                problems.append(f"{line.text!r} after the first rule")
            continue
        if rule.action == "never" and seen_always:
            problems.append(f"exclusion after an always rule: {line.text}")
        seen_rule = True
        seen_always = seen_always or rule.action == "always"
        if rule.syscalls and line.arch is None:
            problems.append(f"syscall rule without arch: {line.text}")
        if rule.action == "always" and not rule.key:
            problems.append(f"rule without a key: {line.text}")
        if rule.key and rule.key not in ALL_KEYS:
            problems.append(f"key {rule.key!r} is not one of Sentinel's keys: {line.text}")
    always = [ln for ln in lines if ln.rule is not None and ln.rule.action == "always"]
    for ln in always:
        if ln.rule is not None and ln.rule.syscalls and ln.arch == "b64":
            twin = [o for o in lines if o.rule is ln.rule and o.arch == "b32"]
            if not twin or lines.index(twin[0]) != lines.index(ln) - 1:
                problems.append(f"b64 rule without its b32 twin right before it: {ln.text}")
    for ln in always:
        if ln.rule is None or ln.rule.filter != "exit":
            continue
        hit = first_match(lines, witness(ln))
        if hit is None or hit.rule is None or hit.rule.key != ln.rule.key:
            got = hit.text if hit else "nothing"
            problems.append(f"unreachable: {ln.text} (its own event is decided by {got})")
    return problems
