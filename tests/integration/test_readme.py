"""The README's "Using the API" shell examples, run as written against the test stack.

Only the address changes (``localhost:8000`` → the stack's Envoy port) and the admin
credentials come from the stack instead of the ``export`` line a reader fills in by hand.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.support import missing_tool

pytestmark = pytest.mark.integration

README = Path(__file__).resolve().parents[2] / "README.md"


def examples(heading: str, at_least: int) -> str:
    text = README.read_text()
    section = text.split(f"## {heading}\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```sh\n(.*?)```", section, flags=re.S)
    assert len(blocks) >= at_least, f"the README's {heading} section lost its examples"
    return "\n".join(blocks)


def api_examples() -> str:
    return examples("Using the API", 5)


def outputs_of(text: str, chunks: list[str], needle: str) -> str:
    """The output of the (first) README command containing ``needle``."""
    outputs = dict(re.findall(r"^=== (\d+)\n(.*?)(?=^=== |\Z)", text, flags=re.M | re.S))
    return outputs[str(next(i for i, c in enumerate(chunks) if needle in c))]


def test_readme_api_examples_work_as_written(stack: Any, tmp_path: Path) -> None:
    if shutil.which("curl") is None:
        missing_tool("curl is needed to run the README examples")
    # The API walk, then the audit trail walk through what it left in acme's trail.
    script = api_examples() + "\n" + examples("Audit trail", 1) + "\n" + examples("Background jobs", 2)
    assert "export ADMIN_EMAIL=" in script
    script = re.sub(r"^export ADMIN_EMAIL=.*$", "", script, flags=re.M)
    script = script.replace("localhost:8000", stack.rest_url.removeprefix("http://"))
    script = script.replace(".venv/bin/sentinel", f"{sys.executable} -m sentinel")
    # Tag every command's output so the assertions below can find it.
    chunks = re.split(r"\n(?=\S)", script)
    lines = [f"echo '=== {i}'\n{chunk}\necho" for i, chunk in enumerate(chunks)]
    out = subprocess.run(["bash", "-euo", "pipefail", "-c", "\n".join(lines)], capture_output=True, text=True,
                         env={"PATH": "/usr/bin:/bin", "ADMIN_EMAIL": stack.admin_email,
                              "ADMIN_PASSWORD": stack.admin_password}, timeout=120, check=False,
                         cwd=tmp_path)
    assert out.returncode == 0, f"README examples failed:\n{out.stdout}\n{out.stderr}"
    text = out.stdout
    assert '"slug":"acme"' in text and '"display_name":"Acme Corporation"' in text
    assert '"email":"dev@acme.example"' in text
    assert "HTTP/1.1 404" in text  # the owner asking for the platform tenant
    # The session walk: /users/me, a refresh, a logout that ends the session.
    assert '"email":"dev@acme.example"' in outputs_of(text, chunks, 'users/me -H "authorization: Bearer $DEV"')
    assert "session has ended" in outputs_of(text, chunks, "# 401: the session has ended")
    # The lifecycle walk: suspended (the owner is refused, with the reason), pending deletion, restored.
    assert '"state":"TENANT_STATE_SUSPENDED"' in text
    assert "your tenant is suspended (invoice 2026-117 overdue)" in text
    assert '"state":"TENANT_STATE_PENDING_DELETION"' in text
    restored = outputs_of(text, chunks, ":restore")
    assert '"state":"TENANT_STATE_ACTIVE"' in restored and "purge_time" not in restored
    assert '"keys":[' in text and '"status"' in text
    # acme's own service levels, and the platform's ranking of tenants by capacity used.
    level = json.loads(outputs_of(text, chunks, "/service-level"))["service_level"]
    assert level["tenant_id"] in text and {o["name"] for o in level["objectives"]} == \
        {"availability", "error-rate", "latency"}
    assert all(o["budget_state"] in {"green", "caution", "warning", "critical", "unknown"} for o in level["objectives"])
    ranking = json.loads(outputs_of(text, chunks, "/tenant-usage"))
    assert "start_time" in ranking and len(ranking.get("tenants", [])) <= 5
    # An invitation accepted with its token made a user with the invited role.
    accepted = outputs_of(text, chunks, "invitations:accept")
    assert '"email":"new@acme.example"' in accepted and '"role":"ROLE_MEMBER"' in accepted
    # A service account's key lists users, and the key list shows its prefix, never the secret.
    assert '"users":[' in outputs_of(text, chunks, '-H "x-api-key: $KEY"')
    keys = outputs_of(text, chunks, "# no secrets")
    assert '"prefix":"snt_' in keys and '"secret"' not in keys
    # The owner's tenant list holds acme only.
    owner_list = outputs_of(text, chunks, "# only acme")
    assert '"slug":"acme"' in owner_list and '"slug":"platform"' not in owner_list
    # The audit walk: the suspension is in acme's trail with its reason; the chain verifies in
    # the service and offline; one edited byte of the export breaks it at the first event.
    assert "invoice 2026-117 overdue" in outputs_of(text, chunks, "filter.action=tenant.suspend")
    assert '"valid":true' in outputs_of(text, chunks, "audit:verify")
    verified = outputs_of(text, chunks, "sentinel audit verify acme-audit.ndjson        #")
    assert verified.startswith("OK: ") and "chain head" in verified
    assert "BROKEN at sequence 1" in outputs_of(text, chunks, "|| true")
    # The jobs walk: a tenant export ran, is listed, downloaded; a finished job cannot be cancelled.
    assert '"state":"JOB_STATE_SUCCEEDED"' in outputs_of(text, chunks, "?state=JOB_STATE_SUCCEEDED")
    exported = json.loads((tmp_path / "acme.json").read_text())
    assert exported["tenant"]["slug"] == "acme" and "password_hash" not in json.dumps(exported)
    assert "cannot be cancelled" in outputs_of(text, chunks, ":cancel")
