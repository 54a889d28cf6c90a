"""Verifiable statements: leaf encoding, Merkle proofs, anchoring, and verification in Python and on chain."""

from __future__ import annotations

import json
import random
from dataclasses import replace

import pytest
from click.testing import CliRunner
from eth_utils import function_abi_to_4byte_selector, keccak

from medmeter.cli import cli
from medmeter.export.exporter import Exporter
from medmeter.export.reading import read_export
from medmeter.settlement.period import settle_period
from medmeter.statement.merkle import MerkleTree, process_proof, verify_proof
from medmeter.statement.statements import (
    LEAF_ENCODING,
    VERIFIER_ABI,
    SettlementLeaf,
    StatementError,
    anchor_settlement,
    build_statements,
    settlement_tree,
    verify_statement,
)
from tests.support.reports import CliWorkspace, record_traffic


@pytest.fixture
def settled(env, tmp_path):
    """Period 1 closed with random traffic among the env's institutions, and its settlement."""
    record_traffic(env, 45, seed=17, batch=9)
    env.ledger.close_period()
    out = tmp_path / "export"
    Exporter(env.ledger, out).run()
    return env, settle_period(env.ledger, read_export(out).to_pandas(), 1)


def contract_verifies(env, leaf: SettlementLeaf, proof: list[bytes], version: int = 1) -> bool:
    fn = env.ledger.contract.functions.verifySettlementRowAt(leaf.as_contract_arg(), version, proof)
    return bool(env.ledger.call(fn))


@pytest.mark.parametrize("size", [1, 2, 3, 5, 8, 13])
def test_merkle_proofs_verify_for_every_leaf(size):
    rng = random.Random(size)
    leaves = [keccak(rng.randbytes(40)) for _ in range(size)]
    tree = MerkleTree(leaves)
    for leaf in leaves:
        proof = tree.proof(leaf)
        assert verify_proof(proof, tree.root, leaf)
        assert len(proof) <= size.bit_length()
    other = keccak(b"not a leaf")
    assert not verify_proof(tree.proof(leaves[0]), tree.root, other)
    if size == 1:
        assert tree.root == leaves[0] and tree.proof(leaves[0]) == []


def test_leaf_is_the_double_hashed_abi_encoding():
    leaf = SettlementLeaf(3, "0x00000000000000000000000000000000000000aA", 10, 4, 6, 0, 2, 1, 1, 1)
    encoded = leaf.encoded()
    assert len(encoded) == 10 * 32
    assert encoded[:32] == (3).to_bytes(32, "big")
    assert encoded[32:64] == bytes(12) + bytes.fromhex("00000000000000000000000000000000000000aa")
    assert leaf.hash() == keccak(keccak(encoded))
    assert "abi.encode(uint256 period, address institution, uint256 credited" in LEAF_ENCODING


def test_verifier_abi_matches_the_compiled_contract(artifact):
    compiled = {e["name"]: e for e in artifact.abi if e.get("type") == "function"}
    for entry in VERIFIER_ABI:
        assert function_abi_to_4byte_selector(entry) == function_abi_to_4byte_selector(compiled[entry["name"]])


def test_anchored_statements_verify_in_python_and_on_chain(settled):
    env, settlement = settled
    anchored = anchor_settlement(env.ledger, settlement)
    assert anchored.tx_hash is not None and anchored.institution_count == 3
    statements = build_statements(settlement, env.ledger)
    assert len(statements) == 3
    for statement in statements.values():
        leaf = SettlementLeaf.from_json(statement["row"])
        proof = [bytes.fromhex(p[2:]) for p in statement["proof"]]
        assert process_proof(proof, leaf.hash()).hex() == statement["root"][2:]
        assert contract_verifies(env, leaf, proof)
        result = verify_statement(env.w3, statement)
        assert result.ok, [c for c in result.checks if not c.ok]
        assert {c.name for c in result.checks} >= {
            "leaf",
            "proof",
            "anchored root",
            "contract view",
            "closing position",
        }


def test_a_changed_row_fails_in_python_and_on_chain(settled):
    env, settlement = settled
    anchor_settlement(env.ledger, settlement)
    statement = next(iter(build_statements(settlement, env.ledger).values()))
    leaf = SettlementLeaf.from_json(statement["row"])
    proof = [bytes.fromhex(p[2:]) for p in statement["proof"]]
    root = bytes.fromhex(statement["root"][2:])

    changed = replace(leaf, credited=leaf.credited + 1)
    assert not verify_proof(proof, root, changed.hash())
    assert not contract_verifies(env, changed, proof)
    assert contract_verifies(env, leaf, proof)  # the untouched row still does

    # A forger who also recomputes the leaf hash is still caught by the proof and the contract.
    forged = json.loads(json.dumps(statement))
    forged["row"]["credited"] += 1
    forged["leaf"] = "0x" + changed.hash().hex()
    result = verify_statement(env.w3, forged)
    assert not result.ok
    failed = {c.name for c in result.failures()}
    assert {"proof", "contract view"} <= failed
    assert "leaf" not in failed

    # Changing the closing balance is also caught against the contract's own state.
    forged = json.loads(json.dumps(statement))
    forged["row"]["closing_balance"] += 5
    assert "closing position" in {c.name for c in verify_statement(env.w3, forged).failures()}


def test_a_statement_for_another_period_root_fails(settled):
    env, settlement = settled
    anchor_settlement(env.ledger, settlement)
    statement = next(iter(build_statements(settlement, env.ledger).values()))
    forged = json.loads(json.dumps(statement))
    forged["root"] = "0x" + "11" * 32
    failed = {c.name for c in verify_statement(env.w3, forged).failures()}
    assert {"proof", "anchored root"} <= failed


def test_anchoring_is_idempotent_and_refuses_another_root(settled):
    env, settlement = settled
    first = anchor_settlement(env.ledger, settlement)
    again = anchor_settlement(env.ledger, settlement)
    assert again.tx_hash is None and again.root == first.root
    rows = settlement.rows.copy()
    rows.loc[0, "credited_units"] += 1
    with pytest.raises(StatementError, match="already anchored with root"):
        anchor_settlement(env.ledger, replace(settlement, rows=rows))


def test_statements_need_an_anchored_root(settled):
    env, settlement = settled
    with pytest.raises(StatementError, match="anchor it first"):
        build_statements(settlement, env.ledger)
    assert settlement_tree(settlement)[1].root != b"\0" * 32


def test_cli_statement_and_verify(settled, cli_workspace: CliWorkspace, tmp_path, monkeypatch):
    env, _ = settled
    runner = CliRunner()
    unanchored = runner.invoke(cli, ["statement", "--institution", "TEST-001", "--period", "1"])
    assert unanchored.exit_code != 0 and "anchor it first" in str(unanchored.exception)

    anchored = runner.invoke(cli, ["anchor", "--period", "1"])
    assert anchored.exit_code == 0, anchored.output
    assert "anchored period 1" in anchored.output
    assert "already anchored" in runner.invoke(cli, ["anchor", "--period", "1"]).output

    made = runner.invoke(cli, ["statement", "--institution", "TEST-001", "--period", "1"])
    assert made.exit_code == 0, made.output
    path = next((cli_workspace.reports / "statements").glob("statement-1-TEST-001-*.json"))
    statement = json.loads(path.read_text())
    assert statement["row"]["institution"] == env.institutions[1].address
    assert statement["ledger"] == env.ledger.address and statement["chain_id"] == env.w3.eth.chain_id

    # verify-statement needs nothing but the node: run it from an empty workspace.
    monkeypatch.setenv("MEDMETER_HOME", str(tmp_path / "elsewhere"))
    verified = runner.invoke(cli, ["verify-statement", str(path), "--ledger", env.ledger.address])
    assert verified.exit_code == 0, verified.output
    assert "verifies" in verified.output and "FAIL" not in verified.output

    statement["row"]["debited"] += 1
    tampered = tmp_path / "tampered.json"
    tampered.write_text(json.dumps(statement))
    failed = runner.invoke(cli, ["verify-statement", str(tampered)])
    assert failed.exit_code != 0
    assert isinstance(failed.exception, StatementError)
    assert "does NOT verify" in str(failed.exception)
    assert "FAIL  contract view" in failed.output

    wrong_ledger = runner.invoke(cli, ["verify-statement", str(path), "--ledger", env.admin.address])
    assert wrong_ledger.exit_code != 0 and "FAIL  ledger" in wrong_ledger.output

    # In the workspace that holds the deployment, its address is pinned without --ledger.
    monkeypatch.setenv("MEDMETER_HOME", str(cli_workspace.root))
    pinned = runner.invoke(cli, ["verify-statement", str(path)])
    assert pinned.exit_code == 0, pinned.output
    assert "ok    ledger" in pinned.output and "pinned by" in pinned.output


def test_cli_verify_rejects_a_file_that_is_not_a_statement(cli_workspace: CliWorkspace, tmp_path):
    path = tmp_path / "x.json"
    path.write_text(json.dumps({"hello": 1}))
    result = CliRunner().invoke(cli, ["verify-statement", str(path)])
    assert result.exit_code != 0 and "is not a medmeter settlement statement" in str(result.exception)


def _statement_of(settled_env):
    env, settlement = settled_env
    anchor_settlement(env.ledger, settlement)
    statements = build_statements(settlement, env.ledger)
    # the institution that provided data to others: it has a fee and exchange-in units to tamper with
    return env, max(statements.values(), key=lambda s: s["report_row"]["fee_units"])


@pytest.mark.parametrize(
    "tamper",
    ["fee_units", "units_moved_between_kinds", "name", "opening_balance", "exchange_in_count"],
)
def test_every_figure_a_statement_shows_is_checked_against_the_chain(settled, tamper):
    env, statement = _statement_of(settled)
    assert verify_statement(env.w3, statement, env.ledger.address).ok
    report = statement["report_row"]
    assert report["fee_units"] > 0 and report["exchange_in_units"] > 0
    if tamper == "fee_units":
        report["fee_units"] += 500
    elif tamper == "units_moved_between_kinds":
        moved = min(report["exchange_in_units"], 5)
        report["exchange_in_units"] -= moved
        report["sync_units"] += moved
    elif tamper == "name":
        statement["name"] = "Another Clinic"
    elif tamper == "opening_balance":
        report["opening_balance"] += 1
    else:
        report["exchange_in_count"] += 1
    result = verify_statement(env.w3, statement, env.ledger.address)
    assert not result.ok
    failed = {check.name: check.detail for check in result.failures()}
    check = "registry" if tamper == "name" else "figures"
    named = "Another Clinic" if tamper == "name" else ("sync_units" if tamper.startswith("units") else tamper)
    assert check in failed and named in failed[check], failed
    # a figure the Merkle leaf also carries fails against the proven row as well
    assert ("report row" in failed) == (tamper == "exchange_in_count")


def test_verify_statement_refuses_to_say_verifies_without_a_pinned_ledger(
    settled, cli_workspace, tmp_path, monkeypatch
):
    env, statement = _statement_of(settled)
    path = tmp_path / "statement.json"
    path.write_text(json.dumps(statement))
    monkeypatch.setenv("MEDMETER_HOME", str(tmp_path / "elsewhere"))  # no deployment file to pin it by
    result = CliRunner().invoke(cli, ["verify-statement", str(path)])
    assert result.exit_code != 0
    assert "nothing pins that address" in str(result.exception) and "--ledger" in str(result.exception)
    assert "verifies:" not in result.output
    printed = statement["verify_with"].replace("<this file>", str(path))
    assert f"--ledger {env.ledger.address}" in printed  # the printed command works as printed


def test_a_wrong_root_is_superseded_in_the_open_before_it_is_final(settled):
    env, settlement = settled
    _, good_tree = settlement_tree(settlement)
    wrong = settlement.rows.copy()
    wrong.loc[0, "credited_units"] += 1
    from dataclasses import replace

    wrong_settlement = replace(settlement, rows=wrong)
    anchor_settlement(env.ledger, wrong_settlement)
    with pytest.raises(StatementError, match="--supersede"):
        anchor_settlement(env.ledger, settlement)
    replaced = anchor_settlement(env.ledger, settlement, supersede_reason="row 0 credited one unit too many")
    assert replaced.tx_hash is not None
    version, root, is_final = env.ledger.call(env.ledger.contract.functions.settlementStatus(1))
    assert (version, bytes(root), is_final) == (2, good_tree.root, False)
    first = env.ledger.call(env.ledger.contract.functions.settlementVersion(1, 1))
    assert bytes(first[0]) == settlement_tree(wrong_settlement)[1].root  # every version stays readable
    statement = next(iter(build_statements(settlement, env.ledger).values()))
    assert statement["settlement_version"] == 2
    assert verify_statement(env.w3, statement, env.ledger.address).ok


def test_verification_lists_what_happened_to_the_registration_in_the_period(env, tmp_path):
    record_traffic(env, 12, seed=5, batch=6)
    watched = env.institutions[2]
    env.ledger.set_credit_line(watched.address, 777)
    env.ledger.suspend(watched.address)
    env.ledger.reinstate(watched.address)
    env.ledger.close_period()
    Exporter(env.ledger, tmp_path / "export").run()
    settlement = settle_period(env.ledger, read_export(tmp_path / "export").to_pandas(), 1)
    anchor_settlement(env.ledger, settlement)
    statements = build_statements(settlement, env.ledger)
    result = verify_statement(env.w3, statements[watched.address], env.ledger.address)
    assert result.ok
    changes = [note for note in result.notes if note.startswith("in the period:")]
    names = [note.split(": ", 2)[2].split(" ")[0] for note in changes]
    assert names[-3:] == ["CreditLineChanged", "InstitutionSuspended", "InstitutionReinstated"]
    other = verify_statement(env.w3, statements[env.institutions[0].address], env.ledger.address)
    assert not any("CreditLineChanged" in note or "Suspended" in note for note in other.notes)
