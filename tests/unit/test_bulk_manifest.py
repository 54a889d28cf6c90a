"""Bulk Data manifests in: one candidate per output file, counts as the manifest states them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from medmeter.errors import InputError
from medmeter.intake.bulk_manifest import parse_bulk_manifest, read_bulk_manifest

SAMPLE = Path(__file__).resolve().parents[2] / "samples" / "bulk-manifest.json"
INSTITUTIONS = {"PCI-0001": "0x" + "01" * 20, "PCI-0002": "0x" + "02" * 20}


def read(**kwargs):
    options = {"kind": "fetch", "institution": "PCI-0002", "institutions": INSTITUTIONS} | kwargs
    return read_bulk_manifest(SAMPLE, **options)


def parse(manifest: dict, **kwargs):
    options = {"kind": "fetch", "institution": "PCI-0002", "institutions": INSTITUTIONS} | kwargs
    return parse_bulk_manifest(json.dumps(manifest).encode(), "m.json", **options)


def test_one_candidate_per_output_with_the_manifest_counts():
    candidates = read()
    assert [(c.kind, c.institution, c.category, c.records) for c in candidates] == [
        ("fetch", "PCI-0002", "laboratory", 1250),
        ("fetch", "PCI-0002", "condition", 310),
        ("fetch", "PCI-0002", "document", 42),
    ]
    assert len({c.data_hash for c in candidates}) == 3
    assert len({c.nonce for c in candidates}) == 3


def test_exchange_names_the_provider_and_sync_has_none():
    assert {c.counterparty for c in read(kind="exchange", counterparty="PCI-0001")} == {"PCI-0001"}
    assert {c.counterparty for c in read(kind="sync")} == {None}


def test_rereading_gives_identical_candidates_and_reformatting_keeps_the_nonces():
    assert read() == read()
    reformatted = parse(json.loads(SAMPLE.read_text()))  # same manifest, other bytes
    assert [c.nonce for c in reformatted] == [c.nonce for c in read()]


def test_refuses_an_output_without_a_count():
    manifest = json.loads(SAMPLE.read_text())
    del manifest["output"][1]["count"]
    with pytest.raises(InputError, match=r"output\[1\] \(Condition\) has no count"):
        parse(manifest)


@pytest.mark.parametrize("count", [0, -3, "12", 2**32, True])
def test_refuses_a_count_that_is_not_a_record_count(count):
    manifest = json.loads(SAMPLE.read_text())
    manifest["output"][0]["count"] = count
    with pytest.raises(InputError):
        parse(manifest)


def test_refuses_a_resource_type_without_category_unless_mapped():
    manifest = json.loads(SAMPLE.read_text())
    manifest["output"][0]["type"] = "Patient"
    with pytest.raises(InputError, match="no data category"):
        parse(manifest)
    assert parse(manifest, category_overrides={"Patient": "encounter"})[0].category == "encounter"


@pytest.mark.parametrize(
    "options",
    [
        {"kind": "gift"},
        {"institution": "PCI-0999"},
        {"kind": "exchange"},
        {"kind": "fetch", "counterparty": "PCI-0001"},
    ],
)
def test_refuses_bad_direction_or_parties(options):
    with pytest.raises(InputError):
        read(**options)


@pytest.mark.parametrize("payload", [b"", b"not json", b"[]", b'{"resourceType": "Bundle"}', b'{"output": []}'])
def test_refuses_what_is_not_a_manifest(payload: bytes):
    with pytest.raises(InputError):
        parse_bulk_manifest(payload, "m.json", kind="sync", institution="PCI-0001", institutions=INSTITUTIONS)
