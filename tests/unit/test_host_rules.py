"""The audit rule sets (sentinel.host.rules) against their rules, the real parser and sample logs.

* Render order: control lines, then exclusions, then specific rules, then generic ones; every
  syscall rule is a b32 line directly followed by its b64 twin; ``-e 2`` only when immutable and
  last; the NixOS list has none of the lines the module writes itself. The lint finds each kind
  of mistake it exists for (shadowing, a lone b64 rule, an exclusion after a rule, ``-e`` early).
* Every rendered line goes through the real ``auditctl`` parser in a user namespace, where the
  kernel refuses the netlink socket, so nothing can be loaded: ``unshare -Ur auditctl <args>``
  prints only "The audit system is disabled" for a line it parsed (FACTS.md; auditctl 3.0.9).
  A known-bad line proves the check can fail.
* Recorded sample logs (tests/data/audit/<key>.log, the raw ENRICHED format auditd 3.0.9 writes,
  with their EXECVE/CWD/PATH/PROCTITLE records) prove with ``ausearch -if`` that each key finds
  exactly its events and nothing else, and, through the model of the kernel's two filters
  (:func:`rules.first_match`), that the rendered rules give each sample event exactly that key.

Without ``auditctl``/``unshare``/``ausearch`` (Debian ``auditd``) those tests skip, and fail
under CI=true.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from functools import cache
from pathlib import Path

import pytest
from sentinel.host import rules
from sentinel.host.rules import Event, Options

from tests.support import missing_tool

DATA = Path(__file__).resolve().parents[1] / "data" / "audit"
SAMPLES = sorted(p for p in DATA.glob("*.log") if p.stem != "noise")
ALL = Options(extras=rules.EXTRA_SETS)
NIXOS_STORE = rules.nixos_paths("/nix/store/0123456789abcdfghijklmnpqrsvwxyz-audit-4.0.3/bin/auditd",
                                "/nix/store/0123456789abcdfghijklmnpqrsvwxyz-kmod-31/bin")
VARIANTS = {
    "debian-base": Options(),
    "debian-all": ALL,
    "debian-all-quiet-immutable": Options(extras=rules.EXTRA_SETS, quiet_uids=(998, 999), immutable=True),
    **{f"debian-{x}": Options(extras=(x,)) for x in rules.EXTRA_SETS},
    "nixos-all": Options(extras=rules.EXTRA_SETS, paths=rules.nixos_paths()),
    "nixos-all-store": Options(extras=rules.EXTRA_SETS, paths=NIXOS_STORE),
}


def _tool(name: str) -> str:
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")
    if path is None:
        missing_tool(f"{name} not installed (Debian package auditd / util-linux)")
    assert path is not None
    return path


# ---------------------------------------------------------------------------------------------
# Render order and the lint


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_render_order_and_lint(variant: str) -> None:
    opts = VARIANTS[variant]
    nixos = opts.paths.platform == "nixos"
    lines = rules.build(opts, nixos=nixos)
    assert rules.lint(lines) == []
    kinds = [("control" if ln.rule is None else ln.rule.tier) for ln in lines]
    if opts.immutable:
        assert lines[-1].text == "-e 2" and kinds.pop() == "control"
    order = {"control": 0, "exclude": 1, "specific": 2, "generic": 3}
    assert [order[k] for k in kinds] == sorted(order[k] for k in kinds), "control, exclusions, specific, generic"
    assert sum(1 for ln in lines if ln.text.startswith("-e")) == (1 if opts.immutable and not nixos else 0)
    for i, ln in enumerate(lines):
        if ln.rule is not None and ln.rule.syscalls:
            assert ln.arch is not None, ln.text
            twin = lines[i + 1] if ln.arch == "b32" else lines[i - 1]
            assert twin.rule is ln.rule and {ln.arch, twin.arch} == {"b32", "b64"}, ln.text
            assert f"-F arch={ln.arch} -S " in ln.text
    keys = {ln.rule.key for ln in lines if ln.rule is not None and ln.rule.key}
    assert keys == set(rules.expected_keys(opts.extras))
    if nixos:
        assert not [ln.text for ln in lines if ln.text.split()[0] in ("-D", "-b", "-f", "-e", "-r")]
        assert rules.nixos_rules(opts) == [ln.text for ln in lines]
        json.dumps(rules.nixos_rules(opts))  # a plain list of strings for security.audit.rules


def test_specific_rules_come_before_the_generic_rules_they_overlap() -> None:
    texts = [ln.text for ln in rules.build(ALL)]

    def first(pattern: str) -> int:
        return next(i for i, t in enumerate(texts) if re.search(pattern, t))

    generic_ptrace = first(r"-S ptrace -k ptrace-watchdog$")
    for req in (*rules.PTRACE_INJECTION.values(), *rules.PTRACE_ATTACH.values()):
        assert first(rf"-S ptrace -F a0={hex(req)} ") < generic_ptrace
    assert max(i for i, t in enumerate(texts) if "tmp-exec" in t) < first("exec-watchdog")
    assert max(i for i, t in enumerate(texts) if t.startswith("-a never")) < first("-a always")
    assert texts.index("--loginuid-immutable") < first("-a ")
    assert any("-F auid=unset" in t and "exec-service" in t for t in texts), "a rule set for service accounts"


def test_the_lint_catches_what_it_is_for() -> None:
    good = rules.build(ALL)
    generic = [i for i, ln in enumerate(good) if ln.rule is not None and ln.rule.key == "ptrace-watchdog"]
    first_specific = next(i for i, ln in enumerate(good) if ln.rule is not None and ln.rule.key == "ptrace-injection")
    shadowed = good[:first_specific] + [good[i] for i in generic] + [
        ln for i, ln in enumerate(good[first_specific:], first_specific) if i not in generic]
    problems = rules.lint(shadowed)
    assert any(p.startswith("unreachable") and "ptrace-injection" in p for p in problems), problems
    assert any("ptrace-attach" in p for p in problems)

    lone = [ln for ln in good if not (ln.rule is not None and ln.rule.key == "file-watchdog" and ln.arch == "b32")]
    assert any("without its b32 twin" in p for p in rules.lint(lone))

    exclusion = next(ln for ln in good if ln.rule is not None and ln.rule.action == "never")
    assert any("exclusion after" in p for p in rules.lint([*good, exclusion]))

    locked = rules.build(Options(immutable=True))
    assert any("must be the last" in p for p in rules.lint([locked[-1], *locked[:-1]]))

    tmp_exec = [i for i, ln in enumerate(good) if ln.rule is not None and ln.rule.key == "tmp-exec"]
    exec_generic = [i for i, ln in enumerate(good) if ln.rule is not None and ln.rule.key == "exec-service"]
    moved = [ln for i, ln in enumerate(good) if i not in tmp_exec] + [good[i] for i in tmp_exec]
    assert exec_generic and any("unreachable" in p and "tmp-exec" in p for p in rules.lint(moved))


def test_keys_are_distinct_under_ausearch_substring_matching() -> None:
    # `ausearch -k exec` also finds exec-watchdog, exec-service and tmp-exec (a substring match):
    # no key may be a substring of another, or searching one would find the other's events.
    for a in rules.ALL_KEYS:
        for b in rules.ALL_KEYS:
            assert a == b or a not in b, (a, b)
        assert len(a) < 32 and re.fullmatch(r"[a-z]+(-[a-z]+)+", a)


def test_options_refuse_unknown_sets_and_bad_uids() -> None:
    with pytest.raises(ValueError, match="unknown rule set"):
        Options(extras=("etc-chnage",))
    with pytest.raises(ValueError, match="real uids"):
        Options(quiet_uids=(4294967295,))


def test_quiet_uids_thin_exec_service_only() -> None:
    lines = rules.build(Options(extras=("tmp-exec",), quiet_uids=(998,)))
    quiet = [ln.text for ln in lines if "-F uid!=998" in ln.text]
    assert len(quiet) == 2 and all("-k exec-service" in t for t in quiet)
    # The quiet account is still caught executing from /tmp, and its other execs are not recorded.
    from_tmp = Event("b64", "execve", auid=rules.AUID_UNSET, uid=998, paths=("/tmp/x",))
    hit = rules.first_match(lines, from_tmp)
    assert hit is not None and hit.rule is not None and hit.rule.key == "tmp-exec"
    assert rules.first_match(lines, Event("b64", "execve", auid=rules.AUID_UNSET, uid=998,
                                          paths=("/usr/bin/curl",))) is None


def test_rules_file_names_its_options_and_keys() -> None:
    opts = Options(extras=("tmp-exec", "kmod-change"), quiet_uids=(998,), immutable=True)
    text = rules.render_audit_rules(opts)
    assert rules.parse_options_line(text) == opts
    assert rules.keys_in_text(text) == set(rules.expected_keys(opts.extras))
    assert text.rstrip().endswith("-e 2") and "Immutable" in text
    assert not [ln for ln in rules.render_audit_rules(Options()).splitlines() if ln.startswith("-e")]
    # auditctl -l prints syscall rules with -F key= and watches with -k.
    listed = ("-a always,exit -F arch=b64 -S execve,execveat -F auid!=-1 -F key=exec-watchdog\n"
              "-w /usr/bin/kmod -p x -k kmod-change\n")
    assert rules.keys_in_text(listed) == {"exec-watchdog", "kmod-change"}


# ---------------------------------------------------------------------------------------------
# The real parser, in a user namespace (nothing reaches the kernel)

DISABLED = "The audit system is disabled"
# auditctl probes the kernel for the exe field, which a user namespace cannot reach (FACTS.md);
# the rest of such a line is checked with path= in its place (same value syntax).
KERNEL_PROBE = "Field option not supported by kernel: exe"


def _auditctl(args: list[str]) -> list[str]:
    p = subprocess.run([_tool("unshare"), "-Ur", _tool("auditctl"), *args], capture_output=True, text=True,
                       timeout=30, check=False)
    return [ln for ln in (p.stdout + p.stderr).splitlines() if ln.strip() and ln.strip() != DISABLED]


def _parse_problems(text: str) -> list[str]:
    args = rules.Line(text, "rule").args
    out = _auditctl(args)
    if any(a.startswith("exe=") for a in args):
        if out != [KERNEL_PROBE]:
            return out
        out = _auditctl([("path=" + a[4:]) if a.startswith("exe=") else a for a in args])
    return out


@cache
def _every_line() -> tuple[str, ...]:
    texts = {ln.text for opts in VARIANTS.values() for ln in rules.build(opts, nixos=opts.paths.platform == "nixos")}
    return tuple(sorted(texts))


def test_every_rendered_line_passes_the_real_auditctl_parser() -> None:
    _tool("unshare"), _tool("auditctl")
    with ThreadPoolExecutor(8) as pool:
        results = dict(zip(_every_line(), pool.map(_parse_problems, _every_line()), strict=True))
    bad = {line: out for line, out in results.items() if out}
    assert not bad, "\n".join(f"{line}\n  -> {out}" for line, out in bad.items())
    assert len(results) > 60


@pytest.mark.parametrize(("line", "error"), [
    ("-a always,exit -F arch=b64 -S execvee -k exec-watchdog", "Syscall name unknown"),
    ("-a always,exit -F arch=b64 -S chown32 -k etc-change", "Syscall name unknown"),  # i386 only
    ("-a always,exit -F arch=b64 -S ptrace -F bogus=1 -k ptrace-watchdog", "unknown field"),
    ("-w /etc/shadow -p q -k shadow-access", "isn't supported"),
    ("-f 5", "Failure must be"),
    ("-a never,exit -F arch=b64 -S execve -F exe=/usr/sbin/auditd -F bogus=1", "unknown field"),
])
def test_the_parser_check_fails_bad_lines(line: str, error: str) -> None:
    out = _parse_problems(line)
    assert out and error in " ".join(out), out


# ---------------------------------------------------------------------------------------------
# Recorded sample logs: ausearch, and the model of the kernel's filters

_SERIAL = re.compile(r"msg=audit\(\d+\.\d+:(\d+)\)")


def _serials(text: str, record: str = "SYSCALL") -> list[str]:
    return [m.group(1) for line in text.split("\n") if line.startswith(f"type={record} ")
            for m in [_SERIAL.search(line)] if m]


def test_every_key_has_a_sample() -> None:
    assert {p.stem for p in SAMPLES} == set(rules.ALL_KEYS)
    for path in SAMPLES:
        assert set(re.findall(r' key="([^"]+)"', path.read_text())) == {path.stem}, path


def test_ausearch_finds_exactly_each_keys_events(tmp_path: Path) -> None:
    ausearch = _tool("ausearch")
    combined = tmp_path / "audit.log"
    combined.write_text("".join(p.read_text() for p in (*SAMPLES, DATA / "noise.log")))

    def search(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([ausearch, "-if", str(combined), "--format", "raw", *args], capture_output=True,
                              text=True, timeout=30, check=False)

    def found(key: str) -> list[str]:
        p = search("-k", key, "-m", "SYSCALL")
        assert p.returncode in (0, 1), p.stderr
        return sorted(set(_serials(p.stdout)))

    with ThreadPoolExecutor(8) as pool:
        results = dict(zip(rules.ALL_KEYS, pool.map(found, rules.ALL_KEYS), strict=True))
    for path in SAMPLES:
        expected = sorted(_serials(path.read_text()))
        assert expected, path
        assert results[path.stem] == expected, f"ausearch -k {path.stem}"
    # Rule loads write CONFIG_CHANGE records that carry the key: ausearch -k finds them too
    # (without -m), which is why the watchdog counts SYSCALL records only.
    loads = search("-k", "tmp-exec", "-m", "CONFIG_CHANGE")
    assert _serials(loads.stdout, "CONFIG_CHANGE") == ["1004"]
    assert search("-k", "no-such-key").returncode == 1


def _event(block: list[str]) -> tuple[Event, str]:
    """The Event and key of one sample event (its SYSCALL and PATH records)."""
    syscall = next(ln for ln in block if ln.startswith("type=SYSCALL "))
    raw = syscall.split("\x1d")[0]
    fields = dict(re.findall(r'(\w+)=("[^"]*"|\S+)', raw))
    arch = {"c000003e": "b64", "40000003": "b32"}[fields["arch"]]
    name = _syscall_name(arch, int(fields["syscall"]))
    paths = tuple(m.group(1) for ln in block if ln.startswith("type=PATH ")
                  for m in [re.search(r' name="([^"]+)"', ln)] if m)
    flags_arg = {"open": "a1", "openat": "a2", "openat2": "a2"}.get(name)
    event = Event(arch=arch, syscall=name, exit=int(fields["exit"]), a0=int(fields["a0"], 16),
                  auid=int(fields["auid"]), uid=int(fields["uid"]), exe=fields["exe"].strip('"'), paths=paths,
                  flags=int(fields[flags_arg], 16) if flags_arg else 0)
    return event, fields["key"].strip('"')


@cache
def _syscall_table(arch: str) -> dict[int, str]:
    machine = {"b64": "x86_64", "b32": "i386"}[arch]
    out = subprocess.run([_tool("ausyscall"), machine, "--dump"], capture_output=True, text=True, timeout=30,
                         check=True).stdout
    return {int(n): s for n, s in (ln.split("\t") for ln in out.splitlines()[1:])}


def _syscall_name(arch: str, number: int) -> str:
    return _syscall_table(arch)[number]


@pytest.mark.parametrize("sample", SAMPLES, ids=[p.stem for p in SAMPLES])
def test_the_rules_give_each_sample_event_its_key(sample: Path) -> None:
    by_serial: dict[str, list[str]] = {}
    for line in sample.read_text().split("\n"):  # not splitlines(): it splits at \x1d too
        m = _SERIAL.search(line)
        if m:
            by_serial.setdefault(m.group(1), []).append(line)
    lines = rules.build(ALL)
    for serial, block in by_serial.items():
        event, key = _event(block)
        hit = rules.first_match(lines, event)
        assert hit is not None and hit.rule is not None and hit.rule.action == "always", (serial, event)
        assert hit.rule.key == key, f"event {serial} ({event.syscall}) would be keyed {hit.rule.key} by {hit.text}"


def test_the_model_follows_the_kernels_two_filters() -> None:
    lines = rules.build(ALL)

    def key(event: Event) -> str | None:
        hit = rules.first_match(lines, event)
        return None if hit is None or hit.rule is None else hit.rule.key

    # A failed open of /etc/shadow matches file-watchdog in the exit list, then shadow-access in the
    # inode list, which overrides the key (audit_filter_inodes runs after audit_filter_syscall).
    assert key(Event("b64", "openat", exit=-13, paths=("/etc/shadow",))) == "shadow-access"
    assert key(Event("b64", "openat", exit=-13, paths=("/etc/hosts",))) == "file-watchdog"
    assert key(Event("b64", "openat", exit=0, paths=("/etc/shadow",))) is None  # success: not recorded
    assert key(Event("b32", "ptrace", a0=0x4206)) == "ptrace-attach"
    assert key(Event("b32", "ptrace", a0=0x3)) == "ptrace-watchdog"
    assert key(Event("b64", "fchmodat", paths=("/etc/sudoers",))) == "etc-change"
    assert key(Event("b64", "fchmodat", paths=("/srv/x",))) is None
    assert key(Event("b64", "execve", exe="/usr/sbin/auditd", auid=rules.AUID_UNSET, uid=0)) is None  # excluded

