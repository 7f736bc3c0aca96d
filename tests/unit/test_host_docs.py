"""docs/host-security.md and the README's Host security section name every rule set and key."""

from __future__ import annotations

from pathlib import Path

from sentinel.host import rules


def test_the_docs_name_every_set_and_key() -> None:
    repo = Path(__file__).resolve().parents[2]
    doc = (repo / "docs" / "host-security.md").read_text()
    readme = (repo / "README.md").read_text().split("## Host security\n", 1)[1].split("\n## ", 1)[0]
    for name in rules.RULE_SETS:
        assert f"`{name}`" in doc and f"`{name}`" in readme, name
    for key in rules.ALL_KEYS:
        assert f"`{key}`" in doc, key
    for req in (*rules.PTRACE_INJECTION.values(), *rules.PTRACE_ATTACH.values()):
        assert hex(req) in doc
