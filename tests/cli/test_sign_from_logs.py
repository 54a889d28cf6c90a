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


def test_audit_events_out_carry_the_settlements_counts_and_units(ws: CliWorkspace) -> None:
    """The round trip: AuditEvents in -> recorded -> AuditEvents out, whose counts and units are the
    settlement's, validated as FHIR and with no patient data."""
    import json

    import pandas as pd
    from fhir.resources.R4B.bundle import Bundle

    # its own traffic, so it holds whichever worker runs it
    own = ws.root / "round-trip.jsonl"
    ws.run(
        "sign", "--bulk-manifest", SAMPLES / "bulk-manifest.json", "--kind", "sync", "--wallet", "clinic-2", "-o", own
    )
    ws.run("relay", own)
    ws.run("period", "close")
    report = ws.run("report", "--period", "last", "--no-charts")
    assert "reconciled" in report.stdout
    out = ws.root / "audit-out.json"
    ws.run("audit-events", "--period", "last", "-o", out)
    bundle = json.loads(out.read_text())
    Bundle.model_validate(bundle)  # raises unless every entry is a valid R4 AuditEvent
    events = [entry["resource"] for entry in bundle["entry"]]
    assert len(events) >= 3
    period = report.stdout.split("period ", 1)[1].split(" ", 1)[0]
    settlement = pd.read_csv(ws.root / "reports" / f"settlement-{period}.csv")
    institutions = settlement[settlement["code"] != "TOTAL"]
    assert len(events) == int(institutions[["sync_count", "fetch_count", "exchange_out_count"]].sum().sum())
    text = out.read_text()
    assert "Patient" not in text and "Testy Fakename" not in text
    # every event names its transaction on chain and its units; together they are the period's units
    units = sum(
        int(detail["valueString"])
        for event in events
        for entity in event["entity"]
        for detail in entity.get("detail", [])
        if detail["type"] == "units"
    )
    assert units == int(institutions[["sync_units", "fetch_units", "exchange_out_units"]].sum().sum())
