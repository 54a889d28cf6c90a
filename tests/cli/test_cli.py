"""End to end through the real `medmeter` console script, against a real anvil devnet."""

from __future__ import annotations

import json
import random
import re
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import pytest
import requests
from web3 import Web3

from medmeter.cli import cli as cli_root
from medmeter.intake.categories import CATEGORIES, DEFAULT_PLATFORM_FEE_BPS, category_by_name
from medmeter.intake.payload import content_hash
from medmeter.intake.synthetic import synthetic_bundle
from medmeter.signing.interaction import recover_signer
from tests.support.cli import (
    RPC_URL_LINE,
    CliWorkspace,
    assert_clean_error,
    craft,
    deployed_workspace,
    make_workspace,
    parsed,
    pid_alive,
    read_items,
    register,
    write_items,
)

CHAIN_ID = 31337


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CliWorkspace]:
    """One devnet and ledger for the module: clinic-a and clinic-b registered, default tariff.

    Tests here do not depend on each other's order: each works on its own wallets and nonces, or
    restores what it changes."""
    cli = deployed_workspace(
        tmp_path_factory.mktemp("cli") / "ws", [("clinic-a", "CLI-A", 1_000), ("clinic-b", "CLI-B", 1_000)]
    )
    yield cli
    cli.close()


@pytest.fixture
def fresh(tmp_path: Path) -> Iterator[CliWorkspace]:
    cli = make_workspace(tmp_path / "ws")
    yield cli
    cli.close()


def rates(ws: CliWorkspace, category: int) -> tuple[int, int]:
    sync, fetch, defined = ws.ledger().functions.rateOf(category).call()
    assert defined
    return sync, fetch


def position(ws: CliWorkspace, address: str) -> tuple[int, int]:
    ledger = ws.ledger()
    return ledger.functions.balanceOf(address).call(), ledger.functions.debtOf(address).call()


# ---------------------------------------------------------------------------------- --help


def command_paths(command: click.Command, prefix: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    yield prefix, command
    if isinstance(command, click.Group):
        for name, sub in sorted(command.commands.items()):
            yield from command_paths(sub, (*prefix, name))


def test_help_works_for_every_command_and_subcommand(tmp_path: Path) -> None:
    outside = CliWorkspace(tmp_path)  # an empty folder: help needs no project and no node
    paths = list(command_paths(cli_root))
    assert len(paths) > 20, "the command tree looks truncated"
    for path, command in paths:
        result = outside.run(*path, "--help")
        assert result.stdout.startswith(f"Usage: medmeter {' '.join(path)}".rstrip()), result.describe()
        summary = (command.help or "").strip().splitlines()
        if summary:
            first_words = " ".join(summary[0].split()[:3])
            assert first_words in " ".join(result.stdout.split()), result.describe()
        if isinstance(command, click.Group):
            for name in command.commands:
                assert re.search(rf"^\s+{re.escape(name)}\b", result.stdout, re.M), result.describe()
    assert outside.run("-h").stdout == outside.run("--help").stdout


# ---------------------------------------------------------------------------------- devnet


def test_devnet_up_status_down_and_the_ledger_survives(fresh: CliWorkspace) -> None:
    status = fresh.run("devnet", "status", expect=1)
    assert "not running" in status.stdout

    started = fresh.run("devnet", "up")
    url = started.lines[-1]
    assert RPC_URL_LINE.match(url), started.describe()
    pid = int(re.search(r"started anvil \(pid (\d+)\)", started.stdout).group(1))  # type: ignore[union-attr]
    assert fresh.devnet_info()["pid"] == pid
    assert fresh.devnet_info()["rpc_url"] == url

    reused = fresh.run("devnet", "up")
    assert f"reusing anvil (pid {pid})" in reused.stdout
    assert reused.lines[-1] == url

    status = fresh.run("devnet", "status")
    assert re.match(rf"running: pid {pid}, chain {CHAIN_ID}, block \d+$", status.lines[0]), status.describe()
    assert status.lines[-1] == url

    fresh.run("wallet", "new", "operator")
    fresh.run("deploy")
    register(fresh, "clinic-x", "DV-1", "Devnet Clinic", 77)
    fresh.run("tariff", "default")
    fresh.run("tariff", "fee", 250)
    deployment = fresh.deployment()
    institutions_before = fresh.run("institution", "list").stdout
    tariff_before = fresh.run("tariff", "show").stdout

    stopped = fresh.run("devnet", "down")
    assert f"stopped anvil (pid {pid})" in stopped.stdout
    assert not pid_alive(pid)
    assert (fresh.state_dir / "devnet" / "state.json").stat().st_size > 0
    assert "not running" in fresh.run("devnet", "status", expect=1).stdout
    assert "not running" in fresh.run("devnet", "down").stdout

    restarted = fresh.run("devnet", "up")
    assert "started anvil" in restarted.stdout
    assert RPC_URL_LINE.match(restarted.lines[-1])
    w3 = fresh.w3()
    assert len(w3.eth.get_code(deployment["address"])) > 0
    assert fresh.run("institution", "list").stdout == institutions_before
    assert "DV-1" in institutions_before and "line       77" in institutions_before
    assert fresh.run("tariff", "show").stdout == tariff_before
    assert "platform fee on exchanges: 250 bps" in tariff_before


# ---------------------------------------------------------------------------------- wallets, deploy


def test_wallet_new_and_list(ws: CliWorkspace) -> None:
    created = ws.run("wallet", "new", "wallet-one")
    name, address = created.stdout.strip().split(": ")
    assert name == "wallet-one" and Web3.is_checksum_address(address)
    listed = {line.split()[0]: line.split()[1] for line in ws.run("wallet", "list").lines}
    assert listed["wallet-one"] == address
    assert {"operator", "clinic-a", "clinic-b"} <= set(listed)

    keystore = ws.state_dir / "keystores" / "wallet-one.json"
    assert stat.S_IMODE(keystore.stat().st_mode) == 0o600
    assert ws.account("wallet-one").key.hex().removeprefix("0x") not in keystore.read_text()
    assert ws.account("wallet-one").address == address

    before = keystore.read_bytes()
    # An existing keystore is kept, not overwritten, and `wallet new` succeeds (the walk-through after the demo).
    again = ws.run("wallet", "new", "wallet-one")
    assert again.stdout.startswith(f"wallet-one: {address} (keystore ") and "kept it, nothing created" in again.stdout
    assert keystore.read_bytes() == before
    assert_clean_error(ws.run("wallet", "new", "Not Allowed", expect=1), "is not allowed")


def test_deploy_writes_the_deployment_file(ws: CliWorkspace) -> None:
    deployment = ws.deployment(CHAIN_ID)
    assert deployment["chain_id"] == CHAIN_ID
    assert Web3.is_checksum_address(deployment["address"])
    assert isinstance(deployment["block"], int) and deployment["block"] >= 1
    names = {entry.get("name") for entry in deployment["abi"]}
    assert {"recordBatch", "InteractionRecorded", "closePeriod"} <= names
    w3 = ws.w3()
    receipt = w3.eth.get_transaction_receipt(deployment["tx_hash"])
    assert receipt["contractAddress"] == deployment["address"]
    assert receipt["blockNumber"] == deployment["block"]
    ledger = ws.ledger(w3)
    assert ledger.functions.LEDGER_ID().call() == Web3.keccak(text="medmeter.MeteringLedger.v2")
    operator = ws.account("operator").address
    assert ledger.functions.hasRole(Web3.keccak(text="RELAYER_ROLE"), operator).call()


# ---------------------------------------------------------------------------------- institutions, tariff


def institution_rows(ws: CliWorkspace) -> dict[str, list[str]]:
    return {line.split()[0]: line.split() for line in ws.run("institution", "list").lines}


def test_institution_register_list_suspend_reinstate_rotate_credit_line(ws: CliWorkspace) -> None:
    registered = register(ws, "inst-life", "LIFE-1", "Lifecycle Clinic", 100)
    address = ws.account("inst-life").address
    assert f"registered Lifecycle Clinic (LIFE-1) at {address}" in registered.stdout
    row = institution_rows(ws)["LIFE-1"]
    assert row[1] == address and row[2] == "active" and row[4] == "100"
    ledger = ws.ledger()

    assert f"suspended {address}" in ws.run("institution", "suspend", "inst-life").stdout
    assert institution_rows(ws)["LIFE-1"][2] == "suspended"
    assert ledger.functions.institution(address).call()[3] == 2
    assert_clean_error(ws.run("institution", "suspend", "inst-life", expect=1), "InstitutionStatusUnchanged")

    assert f"reinstated {address}" in ws.run("institution", "reinstate", address).stdout
    assert institution_rows(ws)["LIFE-1"][2] == "active"

    ws.run("institution", "credit-line", "inst-life", 250)
    assert institution_rows(ws)["LIFE-1"][4] == "250"
    assert ledger.functions.institution(address).call()[4] == 250

    ws.run("wallet", "new", "inst-life-key2")  # the clinic makes its new key on its own machine
    rotation = ws.root / "rotation-life.json"
    ws.run("rotate-key", "--wallet", "inst-life", "--new-wallet", "inst-life-key2", "-o", rotation)
    rotated = ws.run("institution", "rotate", rotation)
    new_signer = ws.account("inst-life-key2").address
    assert f"{address} now signs with {new_signer}" in rotated.stdout
    assert ledger.functions.institution(address).call()[2] == new_signer

    payload = ws.root / "rotation.bin"
    payload.write_bytes(b"after rotation")
    out = ws.root / "rotation.jsonl"
    sign = ("sign", payload, "--any-file", "--category", "laboratory", "--records", 1, "--kind", "sync", "-o", out)
    assert_clean_error(ws.run(*sign, "--wallet", "inst-life", expect=1), "is not the signer")
    assert not out.exists()
    ws.run(*sign, "--wallet", "inst-life-key2")
    [item] = read_items(out)
    assert item["institution"] == address  # the institution keeps its address; only the key changed
    assert recover_signer(parsed(item)) == new_signer
    assert "recorded 1," in ws.run("relay", out).stdout
    assert position(ws, address)[0] == rates(ws, 2)[0]


def test_tariff_default_set_fee_show(ws: CliWorkspace) -> None:
    try:
        assert (
            "laboratory: sync 3, fetch 5 units per record"
            in ws.run("tariff", "set", "laboratory", "--sync", 3, "--fetch", 5).stdout
        )
        assert "imaging: sync 9, fetch 13" in ws.run("tariff", "set", "3", "--sync", 9, "--fetch", 13).stdout
        assert "platform fee is now 125 bps" in ws.run("tariff", "fee", 125).stdout
        shown = ws.run("tariff", "show").stdout
        assert re.search(r"^laboratory\s+2\s+3\s+5$", shown, re.M), shown
        assert re.search(r"^imaging\s+3\s+9\s+13$", shown, re.M), shown
        assert "platform fee on exchanges: 125 bps" in shown
        assert rates(ws, 2) == (3, 5)
        assert ws.ledger().functions.platformFeeBps().call() == 125
    finally:
        restored = ws.run("tariff", "default").stdout
    for category in CATEGORIES:
        line = (
            rf"^{category.name}\s+{category.id}\s+{category.default_sync_units_per_record}\s+"
            rf"{category.default_fetch_units_per_record}$"
        )
        assert re.search(line, restored, re.M), restored
        assert rates(ws, category.id) == (
            category.default_sync_units_per_record,
            category.default_fetch_units_per_record,
        )
    assert f"platform fee on exchanges: {DEFAULT_PLATFORM_FEE_BPS} bps" in restored
    assert ws.run("tariff", "show").stdout == restored


# ---------------------------------------------------------------------------------- sign, relay


def test_sign_a_fhir_bundle_and_any_file_then_relay(ws: CliWorkspace) -> None:
    bundle = ws.root / "bundle.json"
    bundle.write_bytes(synthetic_bundle(random.Random(20260101), category_by_name("laboratory"), 4))
    blob = ws.root / "scan.dcm"
    blob.write_bytes(bytes(range(256)) * 8)
    out = ws.root / "signed.jsonl"
    clinic = ws.account("clinic-a").address

    first = ws.run("sign", bundle, "--wallet", "clinic-a", "--kind", "sync", "-o", out)
    assert "signed sync of 4 record(s), category 2" in first.stdout
    second = ws.run(
        "sign", blob, "--any-file", "--category", "imaging", "--records", 3, "--wallet", "clinic-a", "--kind", "sync",
        "-o", out,
    )  # fmt: skip
    assert "signed sync of 3 record(s), category 3" in second.stdout

    items = read_items(out)
    assert len(items) == 2
    for item, payload, category, records in ((items[0], bundle, 2, 4), (items[1], blob, 3, 3)):
        assert item["data_hash"] == content_hash(payload.read_bytes())
        assert (item["kind"], item["category"], item["records"]) == ("sync", category, records)
        assert item["institution"] == clinic
        assert item["chain_id"] == CHAIN_ID and item["verifying_contract"] == ws.deployment()["address"]
        assert recover_signer(parsed(item)) == clinic
    assert items[1]["nonce"] == items[0]["nonce"] + 1
    assert "Synthetic" not in out.read_text() and "Patient" not in out.read_text()  # only hashes leave

    before = position(ws, clinic)
    relayed = ws.run("relay", out)
    assert "recorded 2, already recorded 0, refused 0 in 1 transaction(s)" in relayed.stdout
    expected_credit = 4 * rates(ws, 2)[0] + 3 * rates(ws, 3)[0]
    after = position(ws, clinic)
    assert after[0] - after[1] - (before[0] - before[1]) == expected_credit


def test_relay_refuses_one_bad_item_records_the_others_and_a_rerun_skips_them(ws: CliWorkspace) -> None:
    items = [craft(ws, "clinic-b", "sync", nonce=10_000 + i, records=1 + i) for i in range(4)]
    items[2]["records"] += 1  # changed after signing: the signature no longer matches
    batch = ws.root / "batch-with-bad-item.jsonl"
    rejected = ws.root / "rejected.jsonl"
    write_items(batch, items)

    result = ws.run("relay", batch, "--rejected", rejected, expect=3)
    assert "recorded 3, already recorded 0, refused 1" in result.stdout
    refusal = [line for line in result.stderr.splitlines() if line.startswith("item ")]
    assert len(refusal) == 1, result.describe()
    assert refusal[0].startswith("item 2 (nonce 10002) refused: InvalidSigner:"), result.describe()
    assert_clean_error(result, "1 of 4 interaction(s) refused", str(rejected), exit_code=3)
    assert read_items(rejected) == [items[2]]

    ledger = ws.ledger()
    clinic = ws.account("clinic-b").address
    used = [ledger.functions.isNonceUsed(clinic, 10_000 + i).call() for i in range(4)]
    assert used == [True, True, False, True]

    rerun = ws.run("relay", batch, expect=3)
    assert "recorded 0, already recorded 3, refused 1" in rerun.stdout
    assert "item 2 (nonce 10002) refused: InvalidSigner" in rerun.stderr

    good = ws.root / "batch-good.jsonl"
    write_items(good, [items[0], items[1], items[3]])
    assert "recorded 0, already recorded 3, refused 0" in ws.run("relay", good).stdout
    assert [ledger.functions.isNonceUsed(clinic, 10_000 + i).call() for i in range(4)] == used


# ---------------------------------------------------------------------------------- periods, balances


def test_period_close_list_and_show(ws: CliWorkspace) -> None:
    w3 = ws.w3()
    w3.provider.make_request("evm_mine", [])  # type: ignore[arg-type]
    open_line = ws.run("period", "list").lines[-1]
    number, start = map(int, re.fullmatch(r"period (\d+): from block (\d+) \(open\)", open_line).groups())  # type: ignore[union-attr]

    closed = ws.run("period", "close").stdout.strip()
    first, last = map(int, re.fullmatch(rf"closed period {number}: blocks (\d+)\.\.(\d+)", closed).groups())  # type: ignore[union-attr]
    assert first == start and last >= first
    assert tuple(ws.ledger(w3).functions.periodRange(number).call()) == (first, last)

    listed = ws.run("period", "list").lines
    assert f"period {number}: blocks {first}..{last} (closed)" in listed
    assert listed[-1] == f"period {number + 1}: from block {last + 1} (open)"
    assert len(listed) == number + 1
    assert ws.run("period", "show", number).stdout.strip() == f"period {number}: blocks {first}..{last} (closed)"


def test_balances_table_and_json_agree_with_the_contract(ws: CliWorkspace) -> None:
    a, b = ws.account("clinic-a").address, ws.account("clinic-b").address
    traffic = [
        craft(ws, "clinic-a", "sync", nonce=20_000, records=9, category=3),
        craft(ws, "clinic-b", "fetch", nonce=20_000, records=2, category=1),
        craft(ws, "clinic-b", "exchange", nonce=20_001, records=5, category=2, counterparty=a),
    ]
    path = ws.root / "traffic.jsonl"
    write_items(path, traffic)
    ws.run("relay", path)

    answer = json.loads(ws.run("balances", "--json").stdout)
    assert answer["block"] <= ws.w3().eth.block_number
    rows = {row["institution"]: row for row in answer["institutions"]}
    ledger = ws.ledger()
    events = ws.recorded()
    assert {a, b} <= set(rows)
    for address, row in rows.items():
        assert (row["balance"], row["debt"]) == position(ws, address)
        mine = [e for e in events if e["institution"] == address]
        credited = sum(e["units"] for e in mine if e["kind"] == 0) + sum(
            e["units"] - e["fee"] for e in events if e["kind"] == 2 and e["counterparty"] == address
        )
        debited = sum(e["units"] for e in mine if e["kind"] in (1, 2))
        assert (row["credited"], row["debited"]) == (credited, debited)
        assert row["counts"] == {
            k: sum(1 for e in mine if e["kind"] == i) for i, k in enumerate(("sync", "fetch", "exchange"))
        }
        assert row["balance"] - row["debt"] == credited - debited
        code, name, _, status, _ = ledger.functions.institution(address).call()
        assert row["code"] == code.rstrip(b"\0").decode() and row["name"] == name
        assert row["status"] == {1: "active", 2: "suspended"}[status]
    assert rows[b]["counts"]["fetch"] >= 1 and rows[b]["counts"]["exchange"] >= 1

    heading, *table = ws.run("balances").lines
    assert heading == f"at block {answer['block']}:"
    assert table[0].split()[:4] == ["code", "institution", "status", "balance"]
    for row in rows.values():
        [line] = [line for line in table[2:] if line.split()[0] == row["code"]]
        numbers = line.split()[-8:-1]
        assert numbers == [str(row[k]) for k in ("balance", "debt", "credited", "debited")] + [
            str(row["counts"][k]) for k in ("sync", "fetch", "exchange")
        ], line
        assert line.endswith("yes")


# ---------------------------------------------------------------------------------- simulate, demo


def test_simulate_is_reproducible_for_a_seed(ws: CliWorkspace) -> None:
    def traffic(seed: int, name: str) -> list[tuple[Any, ...]]:
        out = ws.root / name
        result = ws.run(
            "simulate", "--count", 25, "--seed", seed, "--wallet", "clinic-a", "--wallet", "clinic-b", "-o", out
        )
        assert "wrote 25 signed interactions from 2 institutions" in result.stdout
        items = read_items(out)
        assert len(items) == 25
        for item in items:
            assert recover_signer(parsed(item)) == item["institution"]
        return [
            (i["kind"], i["institution"], i["counterparty"], i["category"], i["records"], i["data_hash"]) for i in items
        ]

    first, second = traffic(41, "sim-a.jsonl"), traffic(41, "sim-b.jsonl")
    assert first == second
    assert len({t[0] for t in first}) >= 2 and len({t[5] for t in first}) == 25
    assert traffic(42, "sim-c.jsonl") != first
    # The second run signs the same traffic with fresh nonces from the nonce book: both can be relayed.
    both = read_items(ws.root / "sim-a.jsonl") + read_items(ws.root / "sim-b.jsonl")
    assert len({(i["institution"], i["nonce"]) for i in both}) == 50


def test_demo_runs_end_to_end(fresh: CliWorkspace) -> None:
    result = fresh.run("demo", "--count", 200)
    steps = re.findall(r"^\[(\d+)/(\d+)\] ", result.stdout, re.M)
    total = int(steps[-1][1])
    assert [(int(k), int(n)) for k, n in steps] == [(k, total) for k in range(1, total + 1)], result.describe()
    # The relay step goes through the platform service: each institution posts its own items over HTTP.
    posted = re.search(
        r"posted 200 interactions to the platform service at (http://127\.0\.0\.1:\d+) in (\d+) requests; "
        r"it recorded 200 in (\d+) batches of up to 100",
        result.stdout,
    )
    assert posted, result.describe()
    assert int(posted[2]) >= 6 and int(posted[3]) >= 2, result.describe()
    with pytest.raises(requests.ConnectionError):  # the demo stops the service it started
        requests.get(posted[1] + "/healthz", timeout=5)
    client_outboxes = sorted((fresh.state_dir / "clients").glob("*/*/submit-outbox.jsonl"))
    assert len(client_outboxes) == 6 and all(p.read_text() == "" for p in client_outboxes)
    assert "closed period 1: blocks" in result.stdout
    tally = re.findall(r"^PCI-\d{4} .*$", result.stdout, re.M)
    assert len(tally) == 6 and all(line.rstrip().endswith("yes") for line in tally), result.describe()

    events = fresh.recorded()
    assert len(events) == 200
    assert len({(e["institution"], e["nonce"]) for e in events}) == 200
    traffic = read_items(fresh.state_dir / "demo-interactions.jsonl")
    assert sorted(i["data_hash"] for i in traffic) == sorted("0x" + e["dataHash"].hex() for e in events)
    rows = json.loads(fresh.run("balances", "--json").stdout)["institutions"]
    assert sum(sum(r["counts"].values()) for r in rows) == 200
    for row in rows:
        assert (row["balance"], row["debt"]) == position(fresh, row["institution"])
    assert fresh.run("period", "list").lines[0].startswith("period 1: blocks ")
    # The demo's reports include the period's disputes and reversals, as `report` writes them: none here.
    for name in ("disputes", "reversals"):
        path = fresh.root / "reports" / f"settlement-1-{name}.csv"
        assert f"{name}:" in result.stdout and f"{path} (none)" in result.stdout, result.describe()
        assert len(path.read_text().splitlines()) == 1, path.read_text()  # the header only
    # Each operating role is on its own key: the operator (the deployer) keeps admin and pauser only.
    contract = fresh.ledger()
    operator = fresh.account("operator").address
    for role in ("registrar", "tariff", "relayer", "settler"):
        role_id = Web3.keccak(text=f"{role.upper()}_ROLE")
        assert contract.functions.hasRole(role_id, fresh.account(role).address).call(), role
        assert not contract.functions.hasRole(role_id, operator).call(), f"the operator still holds {role}"
    assert contract.functions.hasRole(Web3.keccak(text="PAUSER_ROLE"), operator).call()
    assert contract.functions.defaultAdmin().call() == operator
