"""`medmeter export`: the fast decoder against web3's, checkpoints, resuming, reorgs, the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pandas as pd
import pyarrow as pa
import pytest
from click.testing import CliRunner

import medmeter.export.exporter as export_mod
from medmeter.cli import cli
from medmeter.errors import ExportStateError
from medmeter.export.checkpoint import CHECKPOINT_FILE, CSV_FILE, PARTS_DIR, read_checkpoint
from medmeter.export.events import (
    INTERACTION_RECORDED_TOPIC,
    decode_interaction_logs,
    interaction_table,
)
from medmeter.export.exporter import REORG_WINDOW, Exporter
from medmeter.export.logs import fetch_blocks, fetch_logs
from medmeter.export.reading import read_export, read_export_frame
from medmeter.signing.interaction import Kind
from tests.support.chains import deploy_env
from tests.support.reference_decoder import reference_table
from tests.support.reports import CliWorkspace, head, mine, record_traffic

EXPECTED_COLUMNS = [
    "block_number",
    "block_hash",
    "block_timestamp",
    "tx_hash",
    "log_index",
    "period",
    "kind",
    "institution",
    "institution_code",
    "counterparty",
    "counterparty_code",
    "category",
    "category_name",
    "records",
    "units",
    "fee",
    "data_hash",
    "nonce",
]


class Interrupted(Exception):
    pass


def interrupt_at(stage: str, chunk: int):
    def hook(at_stage: str, at_chunk: int) -> None:
        if (at_stage, at_chunk) == (stage, chunk):
            raise Interrupted(f"{stage} {chunk}")

    return hook


def reference(env) -> pa.Table:
    return reference_table(env.ledger, env.ledger.deployment.block, head(env.w3))


def assert_same_rows(actual: pa.Table, expected: pa.Table) -> None:
    assert actual.schema.equals(expected.schema)
    pd.testing.assert_frame_equal(actual.to_pandas(), expected.to_pandas())


@pytest.fixture
def busy_env(env):
    """The env with traffic over ~20 blocks, a closed period in the middle, and one 200-bit nonce."""
    a, b, _ = env.institutions
    record_traffic(env, 60, seed=11, batch=6)
    env.ledger.close_period()
    env.record(
        env.signed(Kind.SYNC, a, records=9, nonce=2**200 + 5),
        env.signed(Kind.EXCHANGE, b, counterparty=a.address, records=3),
    )
    record_traffic(env, 40, seed=12, batch=5)
    return env


def test_schema_is_fixed(busy_env, tmp_path):
    Exporter(busy_env.ledger, tmp_path).run()
    table = read_export(tmp_path)
    assert table.column_names == EXPECTED_COLUMNS
    assert str(table.schema.field("block_timestamp").type) == "timestamp[s, tz=UTC]"
    for name in ("block_number", "log_index", "period", "category", "records", "units", "fee"):
        assert table.schema.field(name).type == pa.int64(), name
    with (tmp_path / CSV_FILE).open() as handle:
        header = handle.readline().strip().replace('"', "").split(",")
    assert header == EXPECTED_COLUMNS


def test_fast_export_equals_web3_decode(busy_env, tmp_path):
    result = Exporter(busy_env.ledger, tmp_path, chunk_blocks=3).run()
    expected = reference(busy_env)
    assert expected.num_rows == 60 + 2 + 40
    assert result.rows_total == expected.num_rows
    assert result.chunks > 5
    actual = read_export(tmp_path)
    assert_same_rows(actual, expected)
    frame = actual.to_pandas()
    assert set(frame["kind"]) == {"sync", "fetch", "exchange"}
    assert set(frame["period"]) == {1, 2}
    assert str(2**200 + 5) in set(frame["nonce"])
    assert frame.loc[frame["kind"] != "exchange", "counterparty"].isna().all()
    assert frame.loc[frame["kind"] == "exchange", "counterparty_code"].str.startswith("TEST-").all()
    csv = pd.read_csv(tmp_path / CSV_FILE, dtype={"nonce": str})
    assert len(csv) == len(frame)
    assert list(csv["tx_hash"]) == list(frame["tx_hash"])
    assert list(csv["units"]) == list(frame["units"])
    assert csv["block_timestamp"].iloc[0] == frame["block_timestamp"].iloc[0].strftime("%Y-%m-%dT%H:%M:%SZ")


def test_fast_decode_without_log_timestamps_uses_block_batches(busy_env):
    """Nodes that do not put blockTimestamp in logs: timestamps come from batched block requests."""
    env = busy_env
    logs = fetch_logs(
        env.w3, env.ledger.address, [INTERACTION_RECORDED_TOPIC], env.ledger.deployment.block, head(env.w3)
    )
    stripped = [{k: v for k, v in log.items() if k != "blockTimestamp"} for log in logs]
    decoded = decode_interaction_logs(stripped)
    assert decoded.log_timestamp is None
    blocks = fetch_blocks(env.w3, sorted({int(b) for b in decoded.block_number}))
    timestamps = {n: int(block["timestamp"], 16) for n, block in blocks.items()}
    closes = [log["blockNumber"] for log in env.ledger.contract.events.PeriodClosed.get_logs(from_block=0)]
    codes = {i.address: i.code for i in env.ledger.institutions()}
    table = interaction_table(decoded, timestamps=timestamps, close_blocks=closes, codes=codes)
    assert_same_rows(table, reference(env))


def test_second_run_exports_only_new_blocks(busy_env, tmp_path):
    env = busy_env
    first = Exporter(env.ledger, tmp_path).run()
    record_traffic(env, 15, seed=13, batch=5)
    second = Exporter(env.ledger, tmp_path).run()
    assert second.first_block == first.last_block + 1
    assert second.rows_new == 15
    assert second.rows_total == first.rows_total + 15
    assert_same_rows(read_export(tmp_path), reference(env))
    third = Exporter(env.ledger, tmp_path).run()
    assert (third.rows_new, third.chunks) == (0, 0)


@pytest.mark.parametrize("stage", ["part-written", "checkpoint-written"])
@pytest.mark.parametrize("chunk", [7, 13])  # chunks of 2 blocks that hold interactions
def test_interrupted_export_resumes_to_the_clean_result(busy_env, tmp_path, stage, chunk):
    env = busy_env
    clean_dir, resumed_dir = tmp_path / "clean", tmp_path / "resumed"
    Exporter(env.ledger, clean_dir, chunk_blocks=2).run()

    with pytest.raises(Interrupted):
        Exporter(env.ledger, resumed_dir, chunk_blocks=2, fault=interrupt_at(stage, chunk)).run()
    state = read_checkpoint(resumed_dir)
    on_disk = {p.name for p in (resumed_dir / PARTS_DIR).iterdir()}
    listed = {p.file for p in state.parts}
    if stage == "part-written":
        assert len(on_disk - listed) == 1  # the orphan part the checkpoint never listed
    else:
        assert on_disk == listed

    result = Exporter(env.ledger, resumed_dir, chunk_blocks=2).run()
    assert result.orphans_removed == (1 if stage == "part-written" else 0)
    assert_same_rows(read_export(resumed_dir), read_export(clean_dir))
    assert (resumed_dir / CSV_FILE).read_bytes() == (clean_dir / CSV_FILE).read_bytes()
    assert {p.name for p in (resumed_dir / PARTS_DIR).iterdir()} == {p.file for p in read_checkpoint(resumed_dir).parts}


def test_killed_export_process_resumes(busy_env, tmp_path):
    """A hard kill (os._exit, no cleanup) right after a part file is written, in a real subprocess."""
    env = busy_env
    deployment_file = tmp_path / "deployment.json"
    deployment_file.write_text(json.dumps(env.ledger.deployment.to_json()))
    out = tmp_path / "export"
    script = textwrap.dedent(
        f"""
        import json, os
        from pathlib import Path
        from medmeter.chain.rpc import connect
        from medmeter.chain.deployment import Deployment
        from medmeter.export.exporter import Exporter
        from medmeter.chain.ledger import Ledger

        data = json.loads(Path({str(deployment_file)!r}).read_text())
        data.pop("deployed_at")
        ledger = Ledger(connect({env.w3.provider.endpoint_uri!r}), Deployment(**data))

        parts = []

        def die(stage, chunk):
            if stage == "part-written":
                parts.append(chunk)
                if len(parts) == 3:  # killed right after the third part file, before its checkpoint
                    os._exit(137)

        Exporter(ledger, Path({str(out)!r}), chunk_blocks=2, fault=die).run()
        """
    )
    process = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert process.returncode == 137, process.stderr
    assert read_checkpoint(out).last_block < head(env.w3)

    result = Exporter(env.ledger, out, chunk_blocks=2).run()
    assert result.orphans_removed == 1
    assert_same_rows(read_export(out), reference(env))


@pytest.mark.parametrize("chunk_blocks", [1, 1000])
def test_reorg_is_detected_and_repaired(env, tmp_path, chunk_blocks):
    record_traffic(env, 20, seed=21, batch=5)
    fork_block = head(env.w3)
    snapshot = env.w3.provider.make_request("evm_snapshot", [])["result"]
    old = record_traffic(env, 20, seed=22, batch=4)
    exporter = Exporter(env.ledger, tmp_path, chunk_blocks=chunk_blocks)
    exporter.run()
    old_rows = read_export(tmp_path).to_pandas()
    assert len(old_rows) == 40

    assert env.w3.provider.make_request("evm_revert", [snapshot])["result"] is True
    env.ledger.transactor.reset_nonce()
    for item in old:  # the reverted interactions' nonces are free again; sign different ones
        env.next_nonce[item.interaction.institution] = 10_000
    record_traffic(env, 30, seed=23, batch=3)  # a longer, different chain

    result = exporter.run()
    assert result.reorg is not None
    assert result.reorg.fork_block == fork_block
    assert not result.reorg.full_reexport
    assert result.reorg.rows_dropped == 20
    actual = read_export(tmp_path)
    assert_same_rows(actual, reference(env))
    stale = set(old_rows["tx_hash"]) - set(old_rows[old_rows["block_number"] <= fork_block]["tx_hash"])
    assert stale.isdisjoint(set(actual.column("tx_hash").to_pylist()))


def test_reorg_between_reading_hashes_and_logs_is_caught(env, tmp_path, monkeypatch):
    """The worst race: the chain reorganizes below the block the export continues from, after the
    exporter checked that block's hash but before it read the next block's hash and the logs."""
    record_traffic(env, 10, seed=71, batch=5)
    fork_block = head(env.w3)
    snapshot = env.w3.provider.make_request("evm_snapshot", [])["result"]
    old = record_traffic(env, 16, seed=72, batch=2)  # 8 blocks on the branch that will disappear
    old_txs = {
        tx.to_0x_hex()
        for n in range(fork_block + 1, head(env.w3) + 1)
        for tx in env.w3.eth.get_block(n)["transactions"]
    }
    real_block_hashes = export_mod.block_hashes
    raced: list[int] = []

    def racing_block_hashes(w3, numbers):
        # The pre-read asks for [previous, end]; reorg between the two once the export is inside the old branch.
        if raced or len(numbers) != 2 or not fork_block + 3 <= numbers[0] < numbers[1]:
            return real_block_hashes(w3, numbers)
        raced.append(numbers[0])
        previous = real_block_hashes(w3, numbers[:1])
        env.w3.provider.make_request("evm_revert", [snapshot])
        env.ledger.transactor.reset_nonce()
        for item in old:
            env.next_nonce[item.interaction.institution] = 30_000
        record_traffic(env, 30, seed=73, batch=2)  # a longer, different branch
        return {**previous, **real_block_hashes(w3, numbers[1:])}

    monkeypatch.setattr(export_mod, "block_hashes", racing_block_hashes)
    result = Exporter(env.ledger, tmp_path, chunk_blocks=2).run()
    assert raced
    actual = read_export(tmp_path)
    assert old_txs.isdisjoint(actual.column("tx_hash").to_pylist())
    assert_same_rows(actual, reference_table(env.ledger, env.ledger.deployment.block, result.last_block))


def test_reorg_deeper_than_the_kept_hashes_exports_everything_again(env, tmp_path):
    record_traffic(env, 10, seed=31, batch=5)
    snapshot = env.w3.provider.make_request("evm_snapshot", [])["result"]
    mine(env.w3, REORG_WINDOW + 20)
    record_traffic(env, 10, seed=32, batch=5)
    exporter = Exporter(env.ledger, tmp_path)
    exporter.run()

    env.w3.provider.make_request("evm_revert", [snapshot])
    env.ledger.transactor.reset_nonce()
    for account in env.institutions:
        env.next_nonce[account.address] = 20_000
    mine(env.w3, REORG_WINDOW + 40)
    record_traffic(env, 12, seed=33, batch=4)

    result = exporter.run()
    assert result.reorg is not None and result.reorg.full_reexport
    assert_same_rows(read_export(tmp_path), reference(env))


def test_confirmations_lag_the_head(env, tmp_path):
    record_traffic(env, 12, seed=41, batch=3)  # 4 blocks with traffic at the head
    result = Exporter(env.ledger, tmp_path).run(confirmations=2)
    assert result.last_block == head(env.w3) - 2
    rows = read_export(tmp_path).to_pandas()
    assert len(rows) == 6
    assert rows["block_number"].max() <= result.last_block
    assert Exporter(env.ledger, tmp_path).run().rows_new == 6


def test_compaction_merges_old_small_parts(busy_env, tmp_path, monkeypatch):
    env = busy_env
    mine(env.w3, REORG_WINDOW + 5)
    monkeypatch.setattr(export_mod, "MAX_PARTS", 4)
    monkeypatch.setattr(export_mod, "PART_ROWS", 60)  # merged parts hold at most 60 of the 102 rows
    Exporter(env.ledger, tmp_path, chunk_blocks=1).run()
    state = read_checkpoint(tmp_path)
    assert 2 <= len(state.parts) <= 4
    assert all(p.rows <= 60 for p in state.parts)
    assert all(a.to_block < b.from_block for a, b in zip(state.parts, state.parts[1:], strict=False))
    assert {p.name for p in (tmp_path / PARTS_DIR).iterdir()} == {p.file for p in state.parts}
    assert_same_rows(read_export(tmp_path), reference(env))


def test_parts_closed_early_by_rows_keep_within_chunk_blocks(busy_env, tmp_path, monkeypatch):
    """Several requests are in flight; a part that closes on PART_ROWS before its blocks are full
    must not take in ranges planned for the old layout (each part spans at most --chunk-blocks)."""
    monkeypatch.setattr(export_mod, "PART_ROWS", 7)
    monkeypatch.setattr(export_mod, "MAX_PARTS", 1_000)  # no compaction: the parts as written
    monkeypatch.setattr(export_mod, "INITIAL_SPAN", 2)
    Exporter(busy_env.ledger, tmp_path, chunk_blocks=5).run()
    state = read_checkpoint(tmp_path)
    assert len(state.parts) > 3
    assert all(p.to_block - p.from_block + 1 <= 5 for p in state.parts), [
        (p.from_block, p.to_block) for p in state.parts
    ]
    assert all(a.to_block < b.from_block for a, b in zip(state.parts, state.parts[1:], strict=False))
    assert_same_rows(read_export(tmp_path), reference(busy_env))


def test_ranges_planned_for_a_part_that_closed_early_are_replanned():
    """Requests planned for parts of 5 blocks from block 1 (1-5, then 6-10); the part closed on rows
    after block 2, so the next one starts at 3 and may reach block 7 only: 6-9 would overrun it."""
    planned, previous, base = [], 2, 1
    while previous < 9:
        request, base = export_mod._plan(previous, base, span=4, target=100, chunk_blocks=5)
        planned.append((request, None))
        previous = request[2]
    assert [r for r, _ in planned] == [(2, 3, 5), (5, 6, 9)]
    closed_early = export_mod._Pending(3, 2, "0x", [], [])
    assert not export_mod._fits_parts(planned, closed_early, 5)
    on_time = export_mod._Pending(6, 5, "0x", [], [])
    assert export_mod._fits_parts(planned[1:], on_time, 5)


def test_checkpoint_of_another_ledger_is_refused(env, w3, artifact, tmp_path):
    record_traffic(env, 5, seed=51, batch=5)
    Exporter(env.ledger, tmp_path).run()
    other = deploy_env(w3, artifact)
    with pytest.raises(ExportStateError, match="choose another --out"):
        Exporter(other.ledger, tmp_path).run()
    restarted = Exporter(other.ledger, tmp_path).run(restart=True)
    assert restarted.rows_total == 0
    assert json.loads((tmp_path / CHECKPOINT_FILE).read_text())["ledger"] == other.ledger.address


def test_cli_export_is_incremental(busy_env, cli_workspace: CliWorkspace):
    runner = CliRunner()
    first = runner.invoke(cli, ["export", "--chunk-blocks", "4"])
    assert first.exit_code == 0, first.output
    assert "exported 102 new interaction(s)" in first.output
    record_traffic(busy_env, 7, seed=61, batch=7)
    second = runner.invoke(cli, ["export"])
    assert second.exit_code == 0, second.output
    assert "exported 7 new interaction(s)" in second.output
    assert "109 in total" in second.output
    out_dir = next((cli_workspace.reports / "export").iterdir())
    assert_same_rows(read_export(out_dir), reference(busy_env))
    assert len(pd.read_csv(out_dir / CSV_FILE)) == 109


@pytest.mark.parametrize(
    ("command", "option"),
    [
        ("export", "--confirmations"),
        ("report", "--period"),
        ("anchor", "--period"),
        ("statement", "--institution"),
        ("verify-statement", "--ledger"),
    ],
)
def test_report_commands_have_help(command, option):
    result = CliRunner().invoke(cli, [command, "--help"])
    assert result.exit_code == 0
    assert option in result.output and result.output.startswith(f"Usage: cli {command}")


def test_read_export_takes_a_string_path_and_gives_a_data_frame(busy_env, tmp_path):
    result = Exporter(busy_env.ledger, tmp_path).run()
    from_str = read_export(str(tmp_path))
    assert from_str.equals(read_export(tmp_path))
    frame = read_export_frame(str(tmp_path), columns=["tx_hash", "units"])
    assert isinstance(frame, pd.DataFrame)
    assert list(frame.columns) == ["tx_hash", "units"]
    assert len(frame) == result.rows_total > 0
