"""The README's walk-through, run as written, right after the demo, in a throwaway workspace.

The fenced block under "## Walk-through" is taken from README.md itself, so the test fails the
day the README and the tool drift apart."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from tests.support.cli import REPO_ROOT, CliWorkspace, make_workspace

# The Makefile's demo password: the README exports the same one to continue the demo's ledger.
DEMO_PASSWORD = "medmeter-demo-only"


def walkthrough_block() -> str:
    readme = (REPO_ROOT / "README.md").read_text()
    section = readme[readme.index("## Walk-through") :]
    match = re.search(r"```bash\n(.*?)```", section, re.S)
    assert match, "README.md has no ```bash block under ## Walk-through"
    return match.group(1)


def test_the_makefile_demo_password_is_the_one_the_readme_exports() -> None:
    makefile = (REPO_ROOT / "Makefile").read_text()
    assert f"MEDMETER_KEYSTORE_PASSWORD ?= {DEMO_PASSWORD}" in makefile
    assert f"export MEDMETER_KEYSTORE_PASSWORD={DEMO_PASSWORD}" in walkthrough_block()


@pytest.fixture
def demo_ws(tmp_path: Path) -> CliWorkspace:
    cli = make_workspace(tmp_path / "ws")
    # What a checkout has that the walk-through uses: the venv it activates and the sample payloads.
    for name in (".venv", "samples"):
        (cli.root / name).symlink_to(REPO_ROOT / name)
    return cli


def test_the_readme_walkthrough_works_as_written_after_the_demo(demo_ws: CliWorkspace) -> None:
    ws = demo_ws
    try:
        ws.run("demo", "--count", 60, env={"MEDMETER_KEYSTORE_PASSWORD": DEMO_PASSWORD})
        demo_deployment = ws.deployment()
        demo_operator = (ws.state_dir / "keystores" / "operator.json").read_bytes()
        script = "set -euxo pipefail\n" + walkthrough_block()
        completed = subprocess.run(
            ["bash", "-c", script],
            cwd=ws.root,
            env=ws.env(MEDMETER_KEYSTORE_PASSWORD=None),
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        described = f"--- stdout\n{completed.stdout}\n--- stderr\n{completed.stderr}"
        assert completed.returncode == 0, described
        assert "Traceback" not in completed.stderr, described
        # It continued the demo's ledger: same deployment, same operator key, nothing replaced.
        assert ws.deployment()["address"] == demo_deployment["address"], described
        assert (ws.state_dir / "keystores" / "operator.json").read_bytes() == demo_operator
        assert "kept it" in completed.stdout, described
        assert "closed period 2" in completed.stdout, described
        assert "statement statement-a.json verifies" in completed.stdout, described
        statement = json.loads((ws.root / "statement-a.json").read_text())
        assert statement["code"] == "PCI-0101" and statement["period"] == 2
        # The demo's period-1 reports are still there, beside period 2's.
        assert (ws.root / "reports" / "settlement-1.csv").is_file()
        assert (ws.root / "reports" / "settlement-2.csv").is_file()
        # The demo's roles are on the keys samples/roles.json names, so deploy kept its ledger.
        assert "kept it; its roles already are as roles.json says" in completed.stdout, described
        # `devnet down` ended the block.
        assert "stopped anvil" in completed.stdout, described
    finally:
        ws.close()


def test_the_walkthrough_hands_out_the_roles_as_the_demo_does() -> None:
    """The walk-through continues the demo's ledger with `deploy --roles samples/roles.json`, which keeps
    it only if its roles already are as the file says: the file and the demo must name the same keys."""
    from medmeter.app.operations import DEMO_ROLE_WALLETS

    assert json.loads((REPO_ROOT / "samples" / "roles.json").read_text()) == DEMO_ROLE_WALLETS
    assert "deploy --roles samples/roles.json" in walkthrough_block()
