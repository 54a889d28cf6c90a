"""AuditEvents out: one valid, patient-free R4 AuditEvent per recorded interaction, figures as recorded."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from fhir.resources.R4B.auditevent import AuditEvent
from fhir.resources.R4B.bundle import Bundle

from medmeter.errors import InputError
from medmeter.export.fhir_audit import audit_events, write_audit_events

TX = "0x" + "ab" * 32


def frame(with_time: bool = True) -> pd.DataFrame:
    rows = [
        {"kind": "sync", "institution": "0x" + "01" * 20, "code": "PCI-0001", "counterparty": None,
         "counterparty_code": None, "category": 7, "category_name": "document", "records": 2, "units": 6, "fee": 0},
        {"kind": "fetch", "institution": "0x" + "03" * 20, "code": "PCI-0003", "counterparty": None,
         "counterparty_code": None, "category": 2, "category_name": "laboratory", "records": 1, "units": 2, "fee": 0},
        {"kind": "exchange", "institution": "0x" + "02" * 20, "code": "PCI-0002", "counterparty": "0x" + "01" * 20,
         "counterparty_code": "PCI-0001", "category": 7, "category_name": "document", "records": 1, "units": 4,
         "fee": 1},
    ]  # fmt: skip
    for index, row in enumerate(rows):
        row |= {
            "tx_hash": TX,
            "log_index": index,
            "block_number": 40,
            "data_hash": "0x" + "cd" * 32,
            "nonce": str(7 + index),
        }
        if with_time:
            row["block_time"] = pd.Timestamp("2025-03-03T02:00:00Z")
    return pd.DataFrame(rows)


def detail(event: dict, name: str) -> str:
    [entity] = event["entity"]
    return next(d["valueString"] for d in entity["detail"] if d["type"] == name)


def test_each_row_becomes_a_valid_audit_event_with_its_figures():
    events = audit_events(frame())
    assert len(events) == 3
    for event in events:
        AuditEvent.model_validate(event)
    assert [(detail(e, "kind"), detail(e, "records"), detail(e, "units"), detail(e, "category")) for e in events] == [
        ("sync", "2", "6", "document"),
        ("fetch", "1", "2", "laboratory"),
        ("exchange", "1", "4", "document"),
    ]
    assert [e["entity"][0]["what"]["identifier"]["value"] for e in events] == [f"{TX}:0", f"{TX}:1", f"{TX}:2"]
    assert events[0]["recorded"] == "2025-03-03T02:00:00.000Z"


def test_agents_are_the_institution_the_platform_and_an_exchanges_provider():
    events = audit_events(frame())
    codes = [[a["who"]["identifier"]["value"] for a in e["agent"]] for e in events]
    assert codes == [
        ["PCI-0001", "HIP-PLATFORM"],
        ["PCI-0003", "HIP-PLATFORM"],
        ["PCI-0002", "HIP-PLATFORM", "PCI-0001"],
    ]
    assert [a["requestor"] for a in events[2]["agent"]] == [True, False, False]


def test_no_patient_data_in_the_output():
    text = json.dumps(audit_events(frame()))
    assert "Patient" not in text and "patient" not in text


def test_units_total_equals_the_input():
    events = audit_events(frame())
    assert sum(int(detail(e, "units")) for e in events) == int(frame()["units"].sum()) == 12


def test_bundle_and_ndjson_files(tmp_path: Path):
    assert write_audit_events(frame(), tmp_path / "out.json") == 3
    document = json.loads((tmp_path / "out.json").read_text())
    Bundle.model_validate(document)
    assert document["type"] == "collection" and len(document["entry"]) == 3
    assert write_audit_events(frame(), tmp_path / "out.ndjson", fmt="ndjson") == 3
    lines = (tmp_path / "out.ndjson").read_text().splitlines()
    assert [json.loads(line)["id"] for line in lines] == [e["resource"]["id"] for e in document["entry"]]


def test_deterministic_ids_and_export_column_names():
    renamed = frame().rename(columns={"code": "institution_code", "block_time": "block_timestamp"})
    assert [e["id"] for e in audit_events(renamed)] == [e["id"] for e in audit_events(frame())]


def test_rows_without_block_time_take_the_fallback():
    from datetime import UTC, datetime

    events = audit_events(frame(with_time=False), recorded_fallback=datetime(2025, 4, 1, tzinfo=UTC))
    assert {e["recorded"] for e in events} == {"2025-04-01T00:00:00.000Z"}


def test_refuses_frames_missing_columns_and_bad_formats(tmp_path: Path):
    with pytest.raises(InputError, match="units"):
        audit_events(frame().drop(columns=["units"]))
    with pytest.raises(InputError):
        write_audit_events(frame(), tmp_path / "x", fmt="xml")
