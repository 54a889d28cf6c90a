"""The bad-input catalogue (docs/bad-input.md), proved through the real console script.

Each bad input must give one `error:` line on stderr that says what is wrong and what to do, a
non-zero exit, no Python traceback, and leave no half-written output behind."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from web3 import Web3

from tests.support.cli import (
    CliWorkspace,
    assert_clean_error,
    craft,
    deployed_workspace,
    make_workspace,
    read_items,
    snapshot,
    write_items,
)

CHAIN_ID = 31337


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CliWorkspace]:
    cli = deployed_workspace(
        tmp_path_factory.mktemp("bad-input") / "ws", [("clinic-a", "BAD-A", 1_000), ("clinic-b", "BAD-B", 1_000)]
    )
    yield cli
    cli.close()


def guarded(ws: CliWorkspace, *outputs: Path) -> dict[Path, bytes | None]:
    """The files a failed command must leave as they were: its outputs, the nonce book, the deployment."""
    return snapshot([*outputs, ws.state_dir / "nonces.json", ws.root / "deployments" / f"{CHAIN_ID}.json"])


def nonce_used(ws: CliWorkspace, item: dict[str, Any]) -> bool:
    return bool(ws.ledger().functions.isNonceUsed(item["institution"], item["nonce"]).call())


def relay_refusal(ws: CliWorkspace, path: Path, reason: str) -> None:
    """Relay `path` (one item); the ledger or the relay refuses it: exit 3, the item named with `reason`."""
    rejected = path.with_suffix(".rejected.jsonl")
    result = ws.run("relay", path, "--rejected", rejected, expect=3)
    assert_clean_error(result, "1 of 1 interaction(s) refused", exit_code=3)
    [line] = [line for line in result.stderr.splitlines() if line.startswith("item ")]
    assert line.startswith("item 0 (nonce ") and reason in line, result.describe()
    assert "recorded 0," in result.stdout
    assert read_items(rejected) == read_items(path)  # the refused item is handed back, whole
    assert not any(nonce_used(ws, item) for item in read_items(path))


# ---------------------------------------------------------------------------------- JSON lines


def good_item(ws: CliWorkspace, nonce: int) -> dict[str, Any]:
    return craft(ws, "clinic-a", "sync", nonce=nonce)


MALFORMED_LINES = {
    "bad-json": (lambda item: '{"kind": "sync", "institution": ', "not valid JSON"),
    "not-an-object": (lambda item: "[1, 2, 3]", "expected a JSON object, got list"),
    "missing-fields": (
        lambda item: {k: v for k, v in item.items() if k not in ("signature", "nonce")},
        "missing field(s) nonce, signature",
    ),
    "records-not-a-number": (lambda item: item | {"records": "five"}, "field records must be an integer"),
    "records-negative": (lambda item: item | {"records": -1}, "field records must be an integer in 0..2^32-1"),
    "nonce-is-a-float": (lambda item: item | {"nonce": 1.5}, "field nonce must be an integer"),
    "institution-not-an-address": (lambda item: item | {"institution": 12345}, "field institution is not an address"),
    "unknown-kind": (lambda item: item | {"kind": "donate"}, "interaction kind 'donate' is unknown"),
    "data-hash-not-hex": (lambda item: item | {"data_hash": "0xzz"}, "field data_hash is not valid hex"),
    "data-hash-too-short": (lambda item: item | {"data_hash": "0xabcd"}, "field data_hash must be 32 bytes, got 2"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED_LINES))
def test_malformed_json_lines_are_refused_before_anything_is_sent(ws: CliWorkspace, case: str) -> None:
    make_bad, message = MALFORMED_LINES[case]
    nonce = 70_000 + 2 * sorted(MALFORMED_LINES).index(case)
    first, second = good_item(ws, nonce), good_item(ws, nonce + 1)
    path = ws.root / f"malformed-{case}.jsonl"
    write_items(path, [first, make_bad(second)])
    rejected = ws.root / f"malformed-{case}.rejected.jsonl"
    files = guarded(ws, rejected)

    result = ws.run("relay", path, "--rejected", rejected, expect=1)
    assert_clean_error(result, f"{path}:2: ", message)
    assert not nonce_used(ws, first)  # the file is refused whole: line 1 was not sent either
    assert guarded(ws, rejected) == files


def test_a_missing_interactions_file(ws: CliWorkspace) -> None:
    missing = ws.root / "no-such-file.jsonl"
    assert_clean_error(ws.run("relay", missing, expect=1), f"{missing} does not exist")


# ---------------------------------------------------------------------------------- FHIR payloads

BAD_PAYLOADS = {
    "truncated-json": (b'{"resourceType": "Bundle", "entry": [', "is not JSON"),
    "binary": (bytes(range(128, 256)), "is not JSON"),
    "invalid-bundle": (
        {"resourceType": "Bundle", "type": "collection", "entry": "oops"},
        "is not a valid FHIR R4 Bundle: entry: Input should be a valid list",
    ),
    "invalid-resource": (
        {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": {"resourceType": "Observation"}}]},
        "is not a valid FHIR R4 Bundle: entry.0.resource.",
    ),
    "empty-bundle": ({"resourceType": "Bundle", "type": "collection", "entry": []}, "holds no clinical resources"),
    "only-a-patient": (
        {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": {"resourceType": "Patient"}}]},
        "holds no clinical resources (entries: 1)",
    ),
    "not-a-bundle": ({"resourceType": "Patient", "id": "p1"}, "is a Patient, not a FHIR Bundle"),
    "a-json-list": ([{"resourceType": "Bundle"}], "is a list, not a FHIR Bundle"),
    "no-known-category": (
        {
            "resourceType": "Bundle",
            "type": "collection",
            "entry": [{"resource": {"resourceType": "Basic", "code": {"text": "synthetic"}}}],
        },
        "cannot infer a category from resource types ['Basic']: pass --category",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_PAYLOADS))
def test_bad_fhir_payloads_are_refused_before_signing(ws: CliWorkspace, case: str) -> None:
    content, message = BAD_PAYLOADS[case]
    payload = ws.root / f"payload-{case}.json"
    payload.write_bytes(content if isinstance(content, bytes) else json.dumps(content).encode())
    out = ws.root / f"payload-{case}.jsonl"
    files = guarded(ws, out)
    result = ws.run("sign", payload, "--wallet", "clinic-a", "--kind", "sync", "-o", out, expect=1)
    assert_clean_error(result, str(payload), message)
    assert guarded(ws, out) == files


def test_a_missing_payload(ws: CliWorkspace) -> None:
    out = ws.root / "missing-payload.jsonl"
    result = ws.run("sign", ws.root / "nope.json", "--wallet", "clinic-a", "--kind", "sync", "-o", out, expect=1)
    assert_clean_error(result, "does not exist or is not a file")
    assert not out.exists()


# ---------------------------------------------------------------------------------- categories, record counts


def sign_file(
    ws: CliWorkspace, out: Path, *options: object, wallet: str = "clinic-a", expect: int = 0, **run: Any
) -> Any:
    """`medmeter sign --any-file` of an opaque payload, as `wallet`."""
    payload = ws.root / "opaque.bin"
    payload.write_bytes(b"an opaque payload that is not FHIR")
    return ws.run(
        "sign", payload, "--any-file", "--wallet", wallet, "--kind", "sync", "-o", out, *options, expect=expect, **run
    )


@pytest.mark.parametrize(
    ("category", "message"),
    [
        ("radiology", "unknown category 'radiology': use one of encounter, laboratory"),
        ("0", "category id 0 is outside"),
    ],
)
def test_an_unknown_category_is_refused_client_side(ws: CliWorkspace, category: str, message: str) -> None:
    out = ws.root / f"category-{category}.jsonl"
    files = guarded(ws, out)
    assert_clean_error(sign_file(ws, out, "--category", category, "--records", 2, expect=1), message)
    assert guarded(ws, out) == files
    tariff = ws.run("tariff", "set", category, "--sync", 1, "--fetch", 1, expect=1)
    assert_clean_error(tariff, message)


def test_a_category_without_a_tariff_is_refused_on_chain(ws: CliWorkspace) -> None:
    out = ws.root / "category-99.jsonl"
    files = guarded(ws, out)
    # `sign` prices from the tariff on chain, so it refuses first and changes nothing ...
    result = sign_file(ws, out, "--category", 99, "--records", 2, expect=1)
    assert_clean_error(result, "category 99 has no tariff on this ledger", "medmeter tariff set")
    assert guarded(ws, out) == files
    # ... and an item signed elsewhere for such a category is refused by the ledger itself.
    write_items(out, [craft(ws, "clinic-a", "sync", nonce=70_099, category=99)])
    relay_refusal(ws, out, "UnknownCategory: category 99 has no tariff")


@pytest.mark.parametrize("records", [0, -3, 2**32, 10**15])
def test_absurd_record_counts_are_refused_client_side(ws: CliWorkspace, records: int) -> None:
    out = ws.root / f"records-{records}.jsonl"
    files = guarded(ws, out)
    result = sign_file(ws, out, "--category", "laboratory", "--records", records, expect=1)
    assert_clean_error(result, f"record count must be 1 to {2**32 - 1}", f"got {records}")
    assert guarded(ws, out) == files


@pytest.mark.parametrize("records", [0, 1_000_001])
def test_record_counts_the_ledger_refuses(ws: CliWorkspace, records: int) -> None:
    path = ws.root / f"records-on-chain-{records}.jsonl"
    write_items(path, [craft(ws, "clinic-b", "sync", nonce=71_000 + records, records=records)])
    relay_refusal(ws, path, f"RecordsOutOfRange: record count {records} is outside 1..1000000")


# ---------------------------------------------------------------------------------- keystores


def test_a_keystore_with_the_wrong_password(ws: CliWorkspace) -> None:
    out = ws.root / "wrong-password.jsonl"
    files = guarded(ws, out)
    wrong = {"MEDMETER_KEYSTORE_PASSWORD": "not-the-password"}
    result = sign_file(ws, out, "--category", "laboratory", "--records", 1, expect=1, env=wrong)
    keystore = ws.state_dir / "keystores" / "clinic-a.json"
    assert_clean_error(result, f"cannot unlock keystore {keystore}: wrong password", "MEDMETER_KEYSTORE_PASSWORD")
    assert_clean_error(ws.run("deploy", "--new", expect=1, env=wrong), "operator.json: wrong password")
    assert guarded(ws, out) == files


def _truncate(data: dict[str, Any], raw: str) -> str:
    return raw[: len(raw) // 2]


def _no_crypto(data: dict[str, Any], raw: str) -> str:
    return json.dumps({"address": data["address"], "version": 3})


def _no_salt(data: dict[str, Any], raw: str) -> str:
    del data["crypto"]["kdfparams"]["salt"]
    return json.dumps(data)


def _bad_ciphertext(data: dict[str, Any], raw: str) -> str:
    data["crypto"]["ciphertext"] = "not hex at all"
    return json.dumps(data)


CORRUPTIONS = {
    "truncated": (_truncate, "is not valid JSON"),
    "no-crypto-section": (_no_crypto, "is not an Ethereum keystore"),
    "kdf-parameter-missing": (_no_salt, "is damaged (KeyError"),
    "ciphertext-not-hex": (_bad_ciphertext, "is damaged"),
}


@pytest.mark.parametrize("case", sorted(CORRUPTIONS))
def test_a_corrupted_keystore_file(ws: CliWorkspace, case: str) -> None:
    wallet = f"damaged-{case}"
    ws.run("wallet", "new", wallet)
    keystore = ws.state_dir / "keystores" / f"{wallet}.json"
    corrupt, message = CORRUPTIONS[case]
    keystore.write_text(corrupt(json.loads(keystore.read_text()), keystore.read_text()))
    out = ws.root / f"{wallet}.jsonl"
    files = guarded(ws, out, keystore)
    result = sign_file(ws, out, "--category", "laboratory", "--records", 1, wallet=wallet, expect=1)
    assert_clean_error(result, str(keystore), message, "restore it from a backup")
    assert guarded(ws, out, keystore) == files


# ---------------------------------------------------------------------------------- deployments, endpoints


def test_a_missing_deployment_file(ws: CliWorkspace, tmp_path: Path) -> None:
    missing = tmp_path / "missing.json"
    result = ws.run("--deployment", missing, "period", "list", expect=1)
    assert_clean_error(result, f"no deployment for chain {CHAIN_ID} ({missing} is missing)", "medmeter deploy")

    # A workspace that never deployed, pointed at a live node.
    empty = make_workspace(tmp_path / "never-deployed")
    result = empty.run("--rpc-url", ws.rpc_url(), "balances", expect=1)
    assert_clean_error(result, f"no deployment for chain {CHAIN_ID}", "run `medmeter deploy` first")
    assert not (empty.root / "deployments").exists()


def test_a_damaged_or_foreign_deployment_file(ws: CliWorkspace, tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.json"
    garbage.write_text('{"chain_id": 31337, "address": ')
    assert_clean_error(ws.run("--deployment", garbage, "period", "list", expect=1), "is not a medmeter deployment")
    other_chain = tmp_path / "chain-1.json"
    other_chain.write_text(json.dumps(ws.deployment() | {"chain_id": 1}))
    result = ws.run("--deployment", other_chain, "period", "list", expect=1)
    assert_clean_error(result, f"is for chain 1 but the node is chain {CHAIN_ID}")


def test_a_wrong_rpc_url(ws: CliWorkspace) -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{sock.getsockname()[1]}"
    files = guarded(ws)
    result = ws.run("--rpc-url", dead, "tariff", "show", expect=1)
    assert_clean_error(result, f"cannot reach the JSON-RPC endpoint {dead}", "medmeter devnet up", "--rpc-url")
    assert guarded(ws) == files


def _deploy_runtime(w3: Web3, runtime: bytes) -> str:
    """Deploy `runtime` as a contract's code, from the node's unlocked dev account."""
    init = bytes([0x60, len(runtime), 0x60, 0x0C, 0x60, 0x00, 0x39, 0x60, len(runtime), 0x60, 0x00, 0xF3]) + runtime
    tx = w3.eth.send_transaction({"from": w3.eth.accounts[0], "data": init})  # type: ignore[typeddict-item]
    address = w3.eth.wait_for_transaction_receipt(tx, timeout=60)["contractAddress"]
    assert w3.eth.get_code(address) == runtime
    return str(address)


NOT_THE_LEDGER = {
    "stops": (bytes([0x00]), "is not a MeteringLedger (BadFunctionCallOutput)"),
    "reverts": (bytes([0x60, 0x00, 0x60, 0x00, 0xFD]), "is not a MeteringLedger (ContractLogicError)"),
    "returns-another-id": (
        bytes([0x7F]) + b"\x11" * 32 + bytes([0x60, 0x00, 0x52, 0x60, 0x20, 0x60, 0x00, 0xF3]),
        "is not a MeteringLedger v2",
    ),
    "no-code": (b"", "no contract at"),
}


@pytest.mark.parametrize("case", sorted(NOT_THE_LEDGER))
def test_a_contract_that_is_not_the_ledger(ws: CliWorkspace, tmp_path: Path, case: str) -> None:
    runtime, message = NOT_THE_LEDGER[case]
    w3 = ws.w3()
    address = _deploy_runtime(w3, runtime) if runtime else Web3.to_checksum_address("0x" + "42" * 20)
    fake = tmp_path / "fake-deployment.json"
    fake.write_text(json.dumps(ws.deployment() | {"address": address}))
    signed = tmp_path / "signed.jsonl"
    write_items(signed, [good_item(ws, 72_000)])
    operator_nonce = w3.eth.get_transaction_count(ws.account("operator").address)

    assert_clean_error(ws.run("--deployment", fake, "period", "list", expect=1), address, message)
    assert_clean_error(ws.run("--deployment", fake, "relay", signed, expect=1), address, message)
    assert w3.eth.get_transaction_count(ws.account("operator").address) == operator_nonce  # nothing was sent


# ---------------------------------------------------------------------------------- periods


def test_a_period_that_does_not_exist(ws: CliWorkspace) -> None:
    current = int(ws.run("period", "list").lines[-1].split()[1].rstrip(":"))
    assert_clean_error(
        ws.run("period", "show", 99, expect=1), "period 99 does not exist yet", f"open period is {current}"
    )
    assert_clean_error(ws.run("period", "show", current, expect=1), f"period {current} is still open")
    reports = ws.root / "reports"
    before = sorted(reports.rglob("*")) if reports.exists() else []
    assert_clean_error(ws.run("report", "--period", 99, expect=1), "period 99 does not exist")
    assert (sorted(reports.rglob("*")) if reports.exists() else []) == before


# ---------------------------------------------------------------------------------- signatures, domains


def test_a_truncated_signature(ws: CliWorkspace) -> None:
    item = good_item(ws, 73_000)
    path = ws.root / "truncated-signature.jsonl"
    write_items(path, [item | {"signature": item["signature"][:-4]}])
    assert_clean_error(
        ws.run("relay", path, expect=1),
        f"{path}:1: field signature must be 65 bytes, got 63",
        "(truncated or corrupted)",
        "sign the interaction again",
    )
    assert not nonce_used(ws, item)

    bad_v = item | {"signature": item["signature"][:-2] + "1f"}
    write_items(path, [bad_v])
    assert_clean_error(ws.run("relay", path, expect=1), f"{path}:1: signature of nonce 73000 has v=31")
    assert not nonce_used(ws, item)


def test_an_interaction_signed_for_another_chain(ws: CliWorkspace) -> None:
    foreign = craft(ws, "clinic-b", "sync", nonce=74_000, chain_id=1)
    path = ws.root / "chain-1.jsonl"
    write_items(path, [foreign])
    relay_refusal(ws, path, "signed for chain 1 ledger")

    # The same signature passed off as one for this chain: the ledger recovers another signer.
    disguised = ws.root / "chain-1-disguised.jsonl"
    write_items(disguised, [foreign | {"chain_id": CHAIN_ID}])
    relay_refusal(ws, disguised, "InvalidSigner: the signature recovers to")
