"""The README's Repository section is the map of the package: every module must be on it."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _repository_block() -> str:
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Repository") :]
    return section[: section.index("\n## ", 4)]


def test_every_module_and_contract_is_on_the_map():
    block = _repository_block()
    missing = [
        str(path.relative_to(ROOT / "src" / "medmeter"))
        for path in sorted((ROOT / "src" / "medmeter").rglob("*.py"))
        if path.name != "__init__.py"
        and str(path.relative_to(ROOT / "src" / "medmeter")) not in block
        and not (path.parent.name == "cli" and path.name != "root.py")  # cli/*.py: one line for the group
        and path.name not in ("fileio.py", "workspace.py")
    ]
    assert not missing, f"add these to the README's Repository section: {missing}"
    assert "fileio.py, workspace.py" in block
    for contract in (ROOT / "contracts").glob("*.sol"):
        assert f"contracts/{contract.name}" in block, contract.name
