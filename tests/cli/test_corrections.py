"""Scheduled tariffs, reversals and disputes through the real console script, on a real anvil:
`tariff set/fee --next-period`, `tariff show`, `reverse`, `institution record-reversal`, `dispute`
and what `report` writes about them."""

from __future__ import annotations

import csv
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from eth_utils import keccak
from web3 import Web3

from medmeter.signing.consent import reversal, write_message_file
from medmeter.signing.interaction import Domain
from tests.support.cli import CliWorkspace, assert_clean_error, craft, deployed_workspace, write_items

LABORATORY = 2


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CliWorkspace]:
    cli = deployed_workspace(
        tmp_path_factory.mktemp("corrections") / "ws", [("clinic-a", "COR-A", 5_000), ("clinic-b", "COR-B", 5_000)]
    )
    yield cli
    cli.close()


def address(ws: CliWorkspace, wallet: str) -> str:
    return ws.account(wallet).address


def relay(ws: CliWorkspace, name: str, *items: dict[str, Any]) -> list[dict[str, Any]]:
    """Relay `items`; returns their InteractionRecorded events' tx hash and log index, in order."""
    path = ws.root / f"{name}.jsonl"
    write_items(path, list(items))
    ws.run("relay", path)
    ledger = ws.ledger()
    found = []
    for item in items:
        logs = ledger.events.InteractionRecorded().get_logs(
            from_block=ws.deployment()["block"], argument_filters={"institution": item["institution"]}
        )
        [log] = [entry for entry in logs if entry["args"]["nonce"] == item["nonce"]]
        found.append({"tx": log["transactionHash"].to_0x_hex(), "log_index": log["logIndex"], "args": log["args"]})
    return found


def counters_and_position(ws: CliWorkspace, who: str) -> tuple[Any, ...]:
    ledger = ws.ledger()
    return (
        tuple(ledger.functions.countersOf(who).call()),
        ledger.functions.balanceOf(who).call(),
        ledger.functions.debtOf(who).call(),
    )


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


# ---------------------------------------------------------------------------------- tariff --next-period


def test_a_scheduled_rate_and_fee_are_shown_beside_the_current_ones_and_apply_only_at_the_close(
    ws: CliWorkspace,
) -> None:
    ledger = ws.ledger()
    now = tuple(ledger.functions.rateOf(LABORATORY).call()[:2])
    fee_now = ledger.functions.platformFeeBps().call()
    period = ledger.functions.currentPeriod().call()[0]
    out = ws.run("tariff", "set", "laboratory", "--sync", now[0] + 4, "--fetch", now[1] + 6, "--next-period").stdout
    assert f"from period {period + 1} (scheduled; applies when period {period} closes)" in out
    assert f"from period {period + 1}" in ws.run("tariff", "fee", fee_now + 50, "--next-period").stdout
    # nothing changed yet: an interaction signed at today's price is still recorded
    assert tuple(ledger.functions.rateOf(LABORATORY).call()[:2]) == now
    assert ledger.functions.platformFeeBps().call() == fee_now
    shown = ws.run("tariff", "show").stdout
    current, scheduled = shown.split(f"scheduled from period {period + 1}")
    assert re.search(rf"^laboratory\s+2\s+{now[0]}\s+{now[1]}$", current, re.M), shown
    assert re.search(rf"^laboratory\s+2\s+{now[0] + 4}\s+{now[1] + 6}\s+{now[0]}, {now[1]}$", scheduled, re.M), shown
    assert f"platform fee from period {period + 1}: {fee_now + 50} bps (now {fee_now} bps)" in scheduled
    relay(ws, "before-close", craft(ws, "clinic-a", "sync", nonce=70_000, category=LABORATORY))

    ws.run("period", "close")
    assert tuple(ledger.functions.rateOf(LABORATORY).call()[:2]) == (now[0] + 4, now[1] + 6)
    assert ledger.functions.platformFeeBps().call() == fee_now + 50
    assert "scheduled from" not in ws.run("tariff", "show").stdout
    # and back to the default tariff for the other tests, at once
    ws.run("tariff", "default")


def test_scheduling_needs_the_tariff_role(ws: CliWorkspace) -> None:
    ws.run("wallet", "new", "stranger")
    result = ws.run(
        "tariff", "set", "laboratory", "--sync", 1, "--fetch", 1, "--next-period", "--operator", "stranger", expect=1
    )
    assert_clean_error(result, "AccessControlUnauthorizedAccount", "medmeter roles grant")
    assert "scheduled from" not in ws.run("tariff", "show").stdout


# ---------------------------------------------------------------------------------- reversals, disputes, report


def forged_reversal(ws: CliWorkspace, path: Path, institution: str, original: bytes, units: int) -> None:
    """A reversal of `institution`'s interaction signed by the operator's key instead of the institution's."""
    deployment = ws.deployment()
    domain = Domain(deployment["chain_id"], Web3.to_checksum_address(deployment["address"]))
    reason = "the operator says so"
    deadline = int(time.time()) + 3600
    signature = reversal(institution, original, units, keccak(text=reason), deadline, domain, ws.account("operator"))
    message = {
        "institution": institution,
        "originalDigest": original,
        "units": units,
        "reasonHash": keccak(text=reason),
        "deadline": deadline,
    }
    write_message_file(path, "Reversal", message, domain, {"institution": signature}, {"reason": reason})


def test_a_clinic_reverses_its_own_interactions_the_settler_records_them_and_report_lists_them(
    ws: CliWorkspace,
) -> None:
    a, b = address(ws, "clinic-a"), address(ws, "clinic-b")
    fetch = craft(ws, "clinic-a", "fetch", nonce=71_000, records=3, category=LABORATORY)
    sync = craft(ws, "clinic-a", "sync", nonce=71_001, records=4, category=LABORATORY)
    exchange = craft(ws, "clinic-b", "exchange", nonce=71_002, records=5, category=LABORATORY, counterparty=a)
    fetch_log, _sync_log, exchange_log = relay(ws, "to-reverse", fetch, sync, exchange)
    before = (counters_and_position(ws, a), counters_and_position(ws, b))
    period = ws.ledger().functions.currentPeriod().call()[0]

    # clinic-a names its fetch by nonce; the settler records it
    out = ws.run(
        "reverse", "--wallet", "clinic-a", "--nonce", 71_000, "--reason", "fetched twice", "-o", "rev-fetch.json"
    )
    digest = re.search(r"digest (0x[0-9a-f]{64})", out.stdout).group(1)  # type: ignore[union-attr]
    recorded = ws.run("institution", "record-reversal", "rev-fetch.json").stdout
    assert f"recorded the reversal of {fetch['units']} units of fetch" in recorded
    [event] = ws.ledger().events.ReversalRecorded().get_logs(from_block=ws.deployment()["block"])
    assert event["args"]["institution"] == a and "0x" + event["args"]["originalDigest"].hex() == digest
    assert event["args"]["units"] == fetch["units"] and event["args"]["period"] == period
    assert ws.ledger().functions.interactionDigest(_as_tuple(fetch)).call().hex() == digest[2:]

    # clinic-b reverses part of its exchange, named by transaction and log index
    half = exchange["units"] // 2
    ws.run(
        "reverse", "--wallet", "clinic-b", "--tx", exchange_log["tx"], "--log-index", exchange_log["log_index"],
        "--units", half, "--reason", "half of it was never delivered", "-o", "rev-exchange.json",
    )  # fmt: skip
    ws.run("institution", "record-reversal", "rev-exchange.json")

    # no units moved on chain, and nothing in the originals' counters changed
    assert (counters_and_position(ws, a), counters_and_position(ws, b)) == before

    # recording the same reversal again is the contract's refusal, said in one sentence
    assert_clean_error(ws.run("institution", "record-reversal", "rev-fetch.json", expect=1), "AlreadyReversed")
    assert_clean_error(
        ws.run("reverse", "--wallet", "clinic-a", "--nonce", 71_000, "--reason", "x", "-o", "again.json", expect=1),
        "already has a reversal",
    )
    # disputes of the open period: one of an interaction, one of the statement
    ws.run("dispute", "--wallet", "clinic-a", "--period", period, "--interaction", digest, "--reason", "never asked")
    ws.run("dispute", "--wallet", "clinic-b", "--period", period, "--reason", "statement is wrong")
    # the provider disputes the exchange that credited it, named by its transaction and log index
    ws.run(
        "dispute", "--wallet", "clinic-a", "--period", period, "--tx", exchange_log["tx"],
        "--log-index", exchange_log["log_index"], "--reason", "we never delivered this",
    )  # fmt: skip
    exchange_digest = "0x" + ws.ledger().functions.interactionDigest(_as_tuple(exchange)).call().hex()

    ws.run("period", "close")
    report = ws.run("report", "--period", period, "--no-charts")
    assert "reconciled with the contract" in report.stdout
    assert f"disputes of period {period}: 3" in report.stdout
    assert f"reversals recorded in period {period}: 2" in report.stdout

    reports = ws.root / "reports"
    lines = read_csv(reports / f"settlement-{period}-reversals.csv")
    by_side = {line["side"]: line for line in lines}
    assert set(by_side) == {"fetch", "exchange_out", "exchange_in"}
    assert by_side["fetch"]["institution"] == a and int(by_side["fetch"]["adjustment_units"]) == fetch["units"]
    assert by_side["fetch"]["original_digest"] == digest and by_side["fetch"]["status"] == "applied"
    assert by_side["fetch"]["original_tx_hash"] == fetch_log["tx"]
    assert int(by_side["fetch"]["original_log_index"]) == fetch_log["log_index"]
    fee = exchange_log["args"]["fee"] * half // exchange["units"]
    assert int(by_side["exchange_out"]["adjustment_units"]) == half and by_side["exchange_out"]["institution"] == b
    assert by_side["exchange_in"]["institution"] == a
    assert int(by_side["exchange_in"]["adjustment_units"]) == -(half - fee)
    assert int(by_side["exchange_in"]["fee_units"]) == fee

    # the original rows are unchanged: the settlement still counts the reversed fetch and exchange
    rows = {row["institution"]: row for row in read_csv(reports / f"settlement-{period}.csv")}
    assert int(rows[a]["fetch_count"]) == 1 and int(rows[a]["fetch_units"]) == fetch["units"]
    assert int(rows[b]["exchange_out_units"]) == exchange["units"]

    disputes = read_csv(reports / f"settlement-{period}-disputes.csv")
    assert {(d["institution"], d["subject"], d["interaction_digest"]) for d in disputes} == {
        (a, "interaction", digest),
        (b, "statement", ""),
        (a, "interaction", exchange_digest),
    }
    assert all(d["reason_hash"].startswith("0x") and int(d["period"]) == period for d in disputes)


def _as_tuple(item: dict[str, Any]) -> tuple[Any, ...]:
    from medmeter.signing.interaction import Kind

    return (
        int(Kind.parse(item["kind"])),
        item["institution"],
        item["counterparty"],
        item["category"],
        item["records"],
        item["units"],
        bytes.fromhex(item["data_hash"][2:]),
        item["nonce"],
        item["deadline"],
    )


def test_the_settler_cannot_record_a_reversal_the_institution_did_not_sign(ws: CliWorkspace) -> None:
    a = address(ws, "clinic-a")
    item = craft(ws, "clinic-a", "fetch", nonce=72_000, category=LABORATORY)
    relay(ws, "forged-target", item)
    ledger = ws.ledger()
    original = ledger.functions.interactionDigest(_as_tuple(item)).call()
    before = ledger.events.ReversalRecorded().get_logs(from_block=ws.deployment()["block"])
    forged = ws.root / "forged.json"
    forged_reversal(ws, forged, a, original, item["units"])
    result = ws.run("institution", "record-reversal", forged, expect=1)
    assert_clean_error(result, "InvalidMessageSigner", a, address(ws, "operator"))
    assert ledger.events.ReversalRecorded().get_logs(from_block=ws.deployment()["block"]) == before


def test_a_reversal_must_name_an_interaction_the_institution_itself_signed(ws: CliWorkspace) -> None:
    a = address(ws, "clinic-a")
    item = craft(ws, "clinic-a", "fetch", nonce=73_000, category=LABORATORY)
    [log] = relay(ws, "not-yours", item)
    # clinic-b cannot reverse clinic-a's fetch
    result = ws.run(
        "reverse", "--wallet", "clinic-b", "--tx", log["tx"], "--log-index", log["log_index"],
        "--reason", "not mine", "-o", "nope.json", expect=1,
    )  # fmt: skip
    assert_clean_error(result, "only the institution that signed an interaction can reverse it")
    assert not (ws.root / "nope.json").exists()
    # a digest of nothing recorded, more units than the original, two ways at once, a log that is no interaction
    missing = "0x" + "11" * 32
    result = ws.run(
        "reverse", "--wallet", "clinic-a", "--interaction", missing, "--reason", "x", "-o", "n.json", expect=1
    )
    assert_clean_error(result, "no interaction recorded for", missing)
    result = ws.run(
        "reverse", "--wallet", "clinic-a", "--nonce", 73_000, "--units", item["units"] + 1, "--reason", "x",
        "-o", "n.json", expect=1,
    )  # fmt: skip
    assert_clean_error(result, "more than the original's")
    result = ws.run("reverse", "--wallet", "clinic-a", "--nonce", 73_000, "--tx", log["tx"], "--reason", "x",
                    "-o", "n.json", expect=1)  # fmt: skip
    assert_clean_error(result, "name the interaction one way")
    result = ws.run(
        "reverse", "--wallet", "clinic-a", "--tx", log["tx"], "--log-index", log["log_index"] + 1_000,
        "--reason", "x", "-o", "n.json", expect=1,
    )  # fmt: skip
    assert_clean_error(result, "is not an interaction recorded by ledger")
    result = ws.run(
        "reverse", "--wallet", "clinic-a", "--tx", "0x5d", "--log-index", 0, "--reason", "x", "-o", "n.json", expect=1
    )  # fmt: skip
    assert_clean_error(result, "is not a 32-byte hex transaction hash")
    # a file for an interaction that does not exist is refused before anything is sent
    forged = ws.root / "phantom.json"
    forged_reversal(ws, forged, a, b"\x22" * 32, 1)
    assert_clean_error(ws.run("institution", "record-reversal", forged, expect=1), "no interaction recorded for")
