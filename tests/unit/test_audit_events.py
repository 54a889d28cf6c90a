"""AuditEvents in: mapping rules, refusals, dedupe and determinism, checked against the samples by hand."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from medmeter.errors import InputError
from medmeter.intake.audit_events import (
    FAILED_OUTCOME,
    MALFORMED,
    NO_RULE,
    PARTIES,
    PATIENT_IDENTIFIER,
    UNKNOWN_ORGANISATION,
    CategoryTable,
    load_rules,
    parse_audit_events,
    read_audit_events,
)

SAMPLES = Path(__file__).resolve().parents[2] / "samples"
INSTITUTIONS = {"PCI-0001": "0x" + "01" * 20, "PCI-0002": "0x" + "02" * 20, "PCI-0003": "0x" + "03" * 20}
# The patient the samples name: none of these may reach anything medmeter signs.
PATIENT_VALUES = ("MRN-FAKE-424242", "ex-patient-7f3a", "Patient/ex-patient-7f3a")
IHE = "urn:ihe:event-type-code"

# (kind, institution, counterparty, category, records, rule, event ids merged), read off samples/audit-events.json.
EXPECTED = [
    (
        "sync",
        "PCI-0001",
        None,
        "document",
        2,
        "mhd-iti65-provide-document-bundle",
        ("iti65-src-0001", "iti65-rcp-0001"),
    ),
    ("fetch", "PCI-0003", None, "document", 1, "mhd-iti68-retrieve-document", ("iti68-fetch-0003",)),
    ("exchange", "PCI-0002", "PCI-0001", "document", 1, "mhd-iti68-retrieve-document", ("iti68-exch-0002",)),
    ("fetch", "PCI-0002", None, "laboratory", 1, "balp-read", ("balp-read-client-0002", "balp-read-server-0002")),
    ("sync", "PCI-0003", None, "condition", 1, "balp-create", ("balp-create-0003",)),
]


def summary(intake):
    return [
        (c.kind, c.institution, c.counterparty, c.category, c.records, c.rule, c.event_ids) for c in intake.candidates
    ]


def sample_events() -> list[dict]:
    bundle = json.loads((SAMPLES / "audit-events.json").read_text())
    return [entry["resource"] for entry in bundle["entry"]]


def by_id(event_id: str) -> dict:
    return copy.deepcopy(next(e for e in sample_events() if e["id"] == event_id))


def parse(*events: dict, **kwargs):
    payload = "".join(json.dumps(e) + "\n" for e in events).encode()
    return parse_audit_events(payload, "test.ndjson", institutions=INSTITUTIONS, **kwargs)


def reasons(intake) -> list[str]:
    return [s.reason for s in intake.skipped]


def test_sample_bundle_meters_what_the_events_describe():
    intake = read_audit_events(SAMPLES / "audit-events.json", institutions=INSTITUTIONS)
    assert summary(intake) == EXPECTED
    assert {(s.event_id, s.reason) for s in intake.skipped} == {
        ("iti68-failed-0003", FAILED_OUTCOME),
        ("login-0001", NO_RULE),
        ("iti65-unknown-0999", UNKNOWN_ORGANISATION),
    }
    assert intake.rules_version == "2025.1"


def test_ndjson_sample_gives_the_same_interactions_as_the_bundle():
    bundle = read_audit_events(SAMPLES / "audit-events.json", institutions=INSTITUTIONS)
    ndjson = read_audit_events(SAMPLES / "audit-events.ndjson", institutions=INSTITUTIONS)
    assert [c.signed_fields() for c in ndjson.candidates] == [c.signed_fields() for c in bundle.candidates]


def test_reading_the_same_log_twice_gives_identical_candidates():
    first = read_audit_events(SAMPLES / "audit-events.json", institutions=INSTITUTIONS)
    second = read_audit_events(SAMPLES / "audit-events.json", institutions=INSTITUTIONS)
    assert first.candidates == second.candidates
    assert len({c.nonce for c in first.candidates}) == len(first.candidates)
    assert all(c.nonce >= 2**255 and c.nonce < 2**256 for c in first.candidates)
    assert all(len(c.data_hash) == 66 and c.data_hash.startswith("0x") for c in first.candidates)


def test_file_order_does_not_change_what_is_metered():
    events = sample_events()
    forward = parse(*events)
    backward = parse(*reversed(events))
    assert sorted(c.signed_fields()["nonce"] for c in forward.candidates) == sorted(
        c.signed_fields()["nonce"] for c in backward.candidates
    )
    assert {c.data_hash for c in forward.candidates} == {c.data_hash for c in backward.candidates}


def test_client_and_server_copies_meter_once():
    intake = read_audit_events(SAMPLES / "audit-events.json", institutions=INSTITUTIONS)
    assert sorted(d.event_id for d in intake.duplicates) == ["balp-read-server-0002", "iti65-rcp-0001"]
    assert len(intake.candidates) == 5


def test_correlated_copies_in_different_files_get_the_same_nonce():
    # The X-Request-Id and the submission set id are shared by both copies: the nonce, hence the chain's
    # replay check, catches the second copy even when it arrives in another file.
    for client, server in (("balp-read-client-0002", "balp-read-server-0002"), ("iti65-src-0001", "iti65-rcp-0001")):
        assert parse(by_id(client)).candidates[0].nonce == parse(by_id(server)).candidates[0].nonce


def test_uncorrelated_copies_merge_only_across_observers_within_the_window():
    client, server = by_id("balp-read-client-0002"), by_id("balp-read-server-0002")
    for event in (client, server):
        event["entity"] = [e for e in event["entity"] if e.get("type", {}).get("code") != "XrequestId"]
    assert len(parse(client, server).candidates) == 1
    later = copy.deepcopy(server)
    later["recorded"] = "2025-03-03T11:00:30.000+08:00"  # 30 s later: beyond the 5 s window
    assert len(parse(client, later).candidates) == 2
    same_observer = copy.deepcopy(client)
    same_observer["id"] = "balp-read-client-0002-b"
    same_observer["recorded"] = "2025-03-03T11:00:01.000+08:00"
    assert len(parse(client, same_observer).candidates) == 2  # two reads logged by one client are two reads


def test_rule_iti41_provide_and_register_is_a_sync():
    event = by_id("iti65-src-0001")
    event["subtype"] = [{"system": IHE, "code": "ITI-41"}]
    [candidate] = parse(event).candidates
    assert (candidate.kind, candidate.institution, candidate.category, candidate.records, candidate.rule) == (
        "sync", "PCI-0001", "document", 2, "xds-iti41-provide-and-register",
    )  # fmt: skip


def test_rule_iti43_retrieve_document_set_is_a_fetch():
    event = by_id("iti68-fetch-0003")
    event["subtype"] = [{"system": IHE, "code": "ITI-43"}]
    [candidate] = parse(event).candidates
    assert (candidate.kind, candidate.institution, candidate.counterparty, candidate.records, candidate.rule) == (
        "fetch", "PCI-0003", None, 1, "xds-iti43-retrieve-document-set",
    )  # fmt: skip


def test_rule_balp_query_counts_the_stated_results_and_takes_the_category_from_the_query():
    event = by_id("balp-read-client-0002")
    event["subtype"] = [{"system": "http://hl7.org/fhir/restful-interaction", "code": "search-type"}]
    event["action"] = "E"
    query = {
        "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-entity-type", "code": "2"},
        "role": {"system": "http://terminology.hl7.org/CodeSystem/object-role", "code": "24"},
        "query": "T2JzZXJ2YXRpb24/Y29kZT03MTgtNw==",  # base64 of "Observation?code=718-7"
        "detail": [{"type": "result-count", "valueString": "7"}],
    }
    event["entity"] = [e for e in event["entity"] if "Observation/" not in json.dumps(e)] + [query]
    [candidate] = parse(event).candidates
    assert (candidate.kind, candidate.category, candidate.records, candidate.rule) == (
        "fetch", "laboratory", 7, "balp-query",
    )  # fmt: skip


def test_rule_balp_create_is_a_sync_and_balp_read_a_fetch():
    [create] = parse(by_id("balp-create-0003")).candidates
    [read] = parse(by_id("balp-read-server-0002")).candidates
    assert (create.kind, create.category, read.kind, read.category) == ("sync", "condition", "fetch", "laboratory")


def test_rule_retrieve_of_another_institutions_data_is_an_exchange():
    [candidate] = parse(by_id("iti68-exch-0002")).candidates
    assert (candidate.kind, candidate.institution, candidate.counterparty) == ("exchange", "PCI-0002", "PCI-0001")


def test_refuses_failed_outcome():
    event = by_id("balp-create-0003")
    event["outcome"] = "4"
    assert reasons(parse(event)) == [FAILED_OUTCOME]
    del event["outcome"]
    assert reasons(parse(event)) == [FAILED_OUTCOME]


def test_refuses_event_no_rule_matches():
    assert reasons(parse(by_id("login-0001"))) == [NO_RULE]


def test_refuses_unknown_organisation():
    assert reasons(parse(by_id("iti65-unknown-0999"))) == [UNKNOWN_ORGANISATION]


def test_refuses_malformed_resources_and_keeps_the_rest():
    no_agent = by_id("balp-create-0003")
    del no_agent["agent"]
    bad_outcome = by_id("balp-create-0003")
    bad_outcome["recorded"] = "yesterday"
    patient = {"resourceType": "Patient", "id": "p"}
    payload = (
        "\n".join(json.dumps(e) for e in (no_agent, bad_outcome, patient))
        + "\n{not json\n"
        + json.dumps(by_id("balp-create-0003"))
    ).encode()
    intake = parse_audit_events(payload, "mixed.ndjson", institutions=INSTITUTIONS)
    assert reasons(intake) == [MALFORMED] * 4
    assert [c.rule for c in intake.candidates] == ["balp-create"]


def test_refuses_a_patient_identifier_that_would_reach_a_signed_field():
    event = by_id("balp-read-client-0002")
    for entity in event["entity"]:
        if entity.get("type", {}).get("code") == "XrequestId":
            entity["what"]["identifier"]["value"] = "req-ex-patient-7f3a"  # the patient entity's id
    assert reasons(parse(event)) == [PATIENT_IDENTIFIER]
    search = by_id("balp-create-0003")
    search["entity"][0]["what"]["reference"] = "Condition?patient=ex-patient-7f3a"
    assert reasons(parse(search)) == [PATIENT_IDENTIFIER]


def test_refuses_an_event_the_platform_is_not_party_to():
    event = by_id("balp-create-0003")
    event["agent"] = [a for a in event["agent"] if a["who"]["identifier"]["value"] != "HIP-PLATFORM"]
    assert reasons(parse(event)) == [PARTIES]


def test_no_patient_identifier_in_anything_signed_or_hashed():
    intake = read_audit_events(SAMPLES / "audit-events.json", institutions=INSTITUTIONS)
    for candidate in intake.candidates:
        exposed = json.dumps(candidate.signed_fields()) + candidate.preimage
        assert not any(value in exposed for value in PATIENT_VALUES)


def test_the_patient_does_not_change_the_hash_or_nonce():
    original = parse(*sample_events()).candidates
    text = json.dumps(sample_events()).replace("MRN-FAKE-424242", "MRN-OTHER-1").replace("ex-patient-7f3a", "other-9")
    changed = parse(*json.loads(text)).candidates
    assert [c.signed_fields() for c in changed] == [c.signed_fields() for c in original]


def test_operator_rules_merge_over_the_shipped_table(tmp_path: Path):
    rules_file = tmp_path / "rules.toml"
    rules_file.write_text(
        'schema_version = 1\nrules_version = "site-1"\n'
        "[[rules]]\n"
        'name = "balp-create"\n'
        'type = ["http://terminology.hl7.org/CodeSystem/audit-event-type|rest"]\n'
        'subtype = ["http://hl7.org/fhir/restful-interaction|create"]\n'
        'kind = "sync"\nrecords = [5]\ncategory = ["encounter"]\n'
    )
    rules = load_rules(rules_file)
    [candidate] = parse(by_id("balp-create-0003"), rules=rules).candidates
    assert (candidate.records, candidate.category, rules.rules_version) == (5, "encounter", "site-1")
    assert len(rules.rules) == len(load_rules().rules)


@pytest.mark.parametrize(
    "text",
    [
        "schema_version = 2\n",
        "schema_version = 1\n[[rules]]\nname = 'x'\nkind = 'gift'"
        "\nsubtype = ['a|b']\nrecords = [1]\ncategory = ['document']\n",
        "schema_version = 1\n[[rules]]\nname = 'x'\nkind = 'sync'\nrecords = [1]\ncategory = ['document']\n",
        "not toml [",
    ],
)
def test_refuses_a_bad_rules_file(tmp_path: Path, text: str):
    path = tmp_path / "rules.toml"
    path.write_text(text)
    with pytest.raises(InputError):
        load_rules(path)


def test_refuses_a_rule_naming_an_unknown_category():
    with pytest.raises(InputError, match="does not know"):
        parse(by_id("balp-create-0003"), categories=CategoryTable(("laboratory",), {"Observation": "laboratory"}))


@pytest.mark.parametrize(
    "payload", [b"", b"\xff\xfe\x00", b'{"resourceType": "Patient"}', b"[1, 2]", b'{"resourceType": "Bundle"}', b"zz"]
)
def test_refuses_files_that_hold_no_audit_events(payload: bytes):
    with pytest.raises(InputError):
        parse_audit_events(payload, "x.json", institutions=INSTITUTIONS)
