"""`medmeter sign --audit-events` and `--bulk-manifest` end to end: the shipped samples (shaped like the
IHE and HL7 examples) metered on a real ledger, and a log read twice metering nothing twice."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.cli import CliWorkspace, deployed_workspace, read_items

SAMPLES = Path(__file__).resolve().parents[2] / "samples"
# The samples' organisations are PCI-0001..PCI-0003 (samples/README.md).
CLINICS = [("clinic-1", "PCI-0001", 100_000), ("clinic-2", "PCI-0002", 100_000), ("clinic-3", "PCI-0003", 100_000)]


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CliWorkspace]:
    cli = deployed_workspace(tmp_path_factory.mktemp("logs") / "ws", CLINICS)
    yield cli
    cli.close()


def test_audit_events_meter_five_interactions_once(ws: CliWorkspace) -> None:
    out = ws.root / "from-audit.jsonl"
    for wallet, _, _ in CLINICS:
        ws.run("sign", "--audit-events", SAMPLES / "audit-events.json", "--wallet", wallet, "-o", out)
    items = read_items(out)
    assert len(items) == 5  # samples/README.md: five of the ten events meter
    assert "Testy Fakename" not in out.read_text() and "Patient/" not in out.read_text()
    assert "recorded 5," in ws.run("relay", out).stdout
    # the same log again (and its NDJSON twin): every nonce is used, nothing new is signed
    again = ws.root / "again.jsonl"
    for source in ("audit-events.json", "audit-events.ndjson"):
        for wallet, _, _ in CLINICS:
            result = ws.run("sign", "--audit-events", SAMPLES / source, "--wallet", wallet, "-o", again)
            assert result.stdout.startswith("signed 0 interaction(s)"), result.describe()
    assert not again.exists()


def test_a_bulk_manifest_meters_one_interaction_per_output_with_its_count(ws: CliWorkspace) -> None:
    out = ws.root / "from-bulk.jsonl"
    ws.run(
        "sign", "--bulk-manifest", SAMPLES / "bulk-manifest.json", "--kind", "sync", "--wallet", "clinic-1", "-o", out
    )
    items = read_items(out)
    assert sorted(item["records"] for item in items) == [42, 310, 1_250]  # output[].count of the manifest
    assert {item["kind"] for item in items} == {"sync"}
    assert "recorded 3," in ws.run("relay", out).stdout
