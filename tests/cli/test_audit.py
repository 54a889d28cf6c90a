"""`medmeter audit`: an institution's receipts against the chain, through the real console script."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from tests.support.cli import CliWorkspace, assert_clean_error, craft, deployed_workspace, read_items, write_items


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CliWorkspace]:
    cli = deployed_workspace(
        tmp_path_factory.mktemp("audit") / "ws", [("clinic-a", "AUD-A", 1_000), ("clinic-b", "AUD-B", 1_000)]
    )
    yield cli
    cli.close()


def test_audit_matches_receipts_and_names_every_planted_discrepancy(ws: CliWorkspace) -> None:
    receipts = ws.root / "receipts-a.jsonl"
    signed = [craft(ws, "clinic-a", "sync", nonce=50_000 + i, records=2 + i) for i in range(3)]
    write_items(receipts, signed)
    ws.run("relay", receipts)
    clean = ws.run("audit", "--institution", "AUD-A", "--receipts", receipts)
    assert "3 match field for field" in clean.stdout and "no discrepancy" in clean.stdout
    assert "InstitutionRegistered" in clean.stdout  # its registry history is listed

    # not yet relayed: a note (it can still be relayed or cancelled), not a discrepancy
    pending = craft(ws, "clinic-a", "fetch", nonce=50_100)
    write_items(receipts, [*signed, pending])
    noted = ws.run("audit", "--institution", "AUD-A", "--receipts", receipts)
    assert "receipt nonce 50100" in noted.stdout and "medmeter cancel --nonce 50100" in noted.stdout

    # recorded for clinic-a with its key, but missing from its receipts
    unknown = ws.root / "not-in-receipts.jsonl"
    write_items(unknown, [craft(ws, "clinic-a", "sync", nonce=50_200, records=4)])
    ws.run("relay", unknown)
    # and a receipt whose record count is not what was recorded under its nonce
    edited = [dict(item) for item in read_items(receipts)]
    edited[0]["records"] += 1
    edited_path = ws.root / "receipts-edited.jsonl"
    write_items(edited_path, edited)
    result = ws.run("audit", "--institution", "AUD-A", "--receipts", edited_path, expect=1)
    assert "nonce 50200" in result.stdout and "no receipt of yours has this nonce" in result.stdout
    assert f"records signed {edited[0]['records']}, recorded {signed[0]['records']}" in result.stdout
    assert_clean_error(result, "2 discrepancy(ies)")


def test_audit_refuses_a_receipts_file_that_is_not_json_lines(ws: CliWorkspace) -> None:
    bad = ws.root / "bad.jsonl"
    bad.write_text(json.dumps({"not": "an interaction"}) + "\n")
    assert_clean_error(ws.run("audit", "--institution", "AUD-A", "--receipts", bad, expect=1), "bad.jsonl")
