"""Per-period settlement: rows by the ledger's rules, reconciliation with the contract, CSVs and charts."""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from medmeter.app.pipeline import write_period_reports
from medmeter.app.session import Session
from medmeter.cli import cli
from medmeter.errors import ReconciliationError
from medmeter.export.checkpoint import CHECKPOINT_FILE, PARTS_DIR, read_checkpoint
from medmeter.export.events import INTERACTION_SCHEMA
from medmeter.export.exporter import Exporter
from medmeter.export.reading import read_export
from medmeter.settlement.charts import net_by_block, write_charts
from medmeter.settlement.period import (
    CATEGORY_COLUMNS,
    settle_period,
    write_settlement_csvs,
)
from medmeter.signing.interaction import Kind
from medmeter.workspace import Workspace
from tests.support.chains import fee_bps_of, rate_of
from tests.support.reports import CliWorkspace, record_traffic

EXPECTED_SETTLEMENT_COLUMNS = [
    "period",
    "from_block",
    "to_block",
    "institution",
    "code",
    "name",
    "sync_count",
    "sync_units",
    "fetch_count",
    "fetch_units",
    "exchange_in_count",
    "exchange_in_units",
    "exchange_out_count",
    "exchange_out_units",
    "fee_units",
    "credited_units",
    "debited_units",
    "net_units",
    "opening_balance",
    "opening_debt",
    "closing_balance",
    "closing_debt",
]
LAB, IMAGING = 2, 3
# The CSV file adds the period's UTC dates beside its blocks and a TOTAL row.
EXPECTED_CSV_COLUMNS = [*EXPECTED_SETTLEMENT_COLUMNS[:3], "from_time", "to_time", *EXPECTED_SETTLEMENT_COLUMNS[3:]]


def block_time(env, number) -> int:
    return env.w3.eth.get_block(int(number))["timestamp"]


def dataset(env, tmp_path) -> pd.DataFrame:
    out = tmp_path / "export"
    Exporter(env.ledger, out).run()
    return read_export(out).to_pandas()


@pytest.fixture
def known_period(env):
    """Period 1 with five interactions whose settlement is worked out by hand in the test."""
    a, b, c = env.institutions
    env.record(
        env.signed(Kind.SYNC, a, category=LAB, records=10),
        env.signed(Kind.SYNC, b, category=IMAGING, records=5),
        env.signed(Kind.FETCH, c, category=LAB, records=4),
    )
    env.record(
        env.signed(Kind.EXCHANGE, b, counterparty=a.address, category=IMAGING, records=3),
        env.signed(Kind.EXCHANGE, c, counterparty=a.address, category=LAB, records=2),
    )
    env.ledger.close_period()
    return env


def test_settlement_rows_follow_the_ledger_rules(known_period, tmp_path):
    env = known_period
    a, b, c = (i.address for i in env.institutions)
    lab_sync, lab_fetch = rate_of(env.ledger, LAB)
    img_sync, img_fetch = rate_of(env.ledger, IMAGING)
    fee_bps = fee_bps_of(env.ledger)
    b_uses_a = 3 * img_fetch
    b_uses_a_fee = b_uses_a * fee_bps // 10_000
    c_uses_a = 2 * lab_fetch
    c_uses_a_fee = c_uses_a * fee_bps // 10_000

    settlement = settle_period(env.ledger, dataset(env, tmp_path), 1)
    rows = settlement.rows.set_index("institution")
    assert list(settlement.rows.columns) == EXPECTED_SETTLEMENT_COLUMNS
    assert list(settlement.rows["code"]) == ["TEST-000", "TEST-001", "TEST-002"]

    assert rows.loc[a, ["sync_count", "sync_units"]].tolist() == [1, 10 * lab_sync]
    assert rows.loc[a, ["exchange_in_count", "exchange_in_units"]].tolist() == [
        2,
        b_uses_a - b_uses_a_fee + c_uses_a - c_uses_a_fee,
    ]
    assert rows.loc[a, "fee_units"] == b_uses_a_fee + c_uses_a_fee
    assert rows.loc[a, ["debited_units", "exchange_out_count"]].tolist() == [0, 0]
    assert rows.loc[b, ["exchange_out_count", "exchange_out_units"]].tolist() == [1, b_uses_a]
    assert rows.loc[b, "net_units"] == 5 * img_sync - b_uses_a
    assert rows.loc[c, ["fetch_count", "fetch_units"]].tolist() == [1, 4 * lab_fetch]
    assert rows.loc[c, "debited_units"] == 4 * lab_fetch + c_uses_a
    assert rows.loc[c, ["closing_balance", "closing_debt"]].tolist() == [0, 4 * lab_fetch + c_uses_a]
    for address in (a, b, c):
        position = env.ledger.position(address, settlement.info.to_block)
        assert rows.loc[address, ["closing_balance", "closing_debt"]].tolist() == [position.balance, position.debt]
        assert rows.loc[address, ["opening_balance", "opening_debt"]].tolist() == [0, 0]

    assert settlement.matrix.loc["TEST-001", "TEST-000"] == b_uses_a
    assert settlement.matrix.loc["TEST-002", "TEST-000"] == c_uses_a
    assert int(settlement.matrix.to_numpy().sum()) == b_uses_a + c_uses_a
    categories = settlement.categories.set_index(["category_name", "kind"])
    assert list(settlement.categories.columns) == list(CATEGORY_COLUMNS)
    assert categories.loc[("imaging", "exchange"), "units"] == b_uses_a
    assert categories.loc[("laboratory", "sync"), ["interactions", "records"]].tolist() == [1, 10]
    assert int(settlement.categories["units"].sum()) == int(settlement.interactions["units"].sum())


def test_later_period_opens_where_the_previous_closed(env, tmp_path):
    record_traffic(env, 40, seed=3, batch=8)
    env.ledger.close_period()
    record_traffic(env, 40, seed=4, batch=8)
    env.ledger.close_period()
    data = dataset(env, tmp_path)
    first = settle_period(env.ledger, data, 1)
    second = settle_period(env.ledger, data, 2)
    assert len(first.interactions) == len(second.interactions) == 40
    assert second.info.from_block == first.info.to_block + 1
    opening = second.rows[["opening_balance", "opening_debt"]].to_numpy()
    closing = first.rows[["closing_balance", "closing_debt"]].to_numpy()
    assert (opening == closing).all()
    assert opening.any()  # non-trivial: some institution starts period 2 with a position


def test_reconciliation_catches_a_tampered_row(known_period, tmp_path):
    env = known_period
    data = dataset(env, tmp_path)
    settle_period(env.ledger, data, 1)  # the untouched dataset reconciles
    tampered = data.copy()
    row = tampered.index[tampered["kind"] == "sync"][0]
    tampered.loc[row, "units"] += 7
    code = tampered.loc[row, "institution_code"]
    with pytest.raises(ReconciliationError) as caught:
        settle_period(env.ledger, tampered, 1)
    message = str(caught.value)
    assert code in message and tampered.loc[row, "institution"] in message
    assert "+7 units" in message


def test_unattributable_row_is_an_error(known_period, tmp_path):
    data = dataset(known_period, tmp_path)
    data.loc[0, "institution"] = "0x000000000000000000000000000000000000dEaD"
    with pytest.raises(ReconciliationError, match="cannot be attributed"):
        settle_period(known_period.ledger, data, 1)


def test_rows_labelled_with_the_wrong_period_are_an_error(known_period, tmp_path):
    data = dataset(known_period, tmp_path)
    data.loc[0, "period"] = 2
    with pytest.raises(ReconciliationError, match="wrong period"):
        settle_period(known_period.ledger, data, 1)


def test_csvs_and_charts(known_period, tmp_path):
    settlement = settle_period(known_period.ledger, dataset(known_period, tmp_path), 1)
    files = write_settlement_csvs(settlement, tmp_path / "reports")
    assert files.settlement_csv.name == "settlement-1.csv"
    written = pd.read_csv(files.settlement_csv)
    assert list(written.columns) == EXPECTED_CSV_COLUMNS
    institutions, total = written.iloc[:-1], written.iloc[-1]
    assert institutions["net_units"].tolist() == settlement.rows["net_units"].tolist()
    assert total["code"] == "TOTAL"
    for column in ("sync_units", "fee_units", "credited_units", "debited_units", "closing_balance", "closing_debt"):
        assert total[column] == institutions[column].sum(), column
    # a period's first and last block times, as the node reports them
    first, last = (
        known_period.w3.eth.get_block(int(written[c].iloc[0]))["timestamp"] for c in ("from_block", "to_block")
    )
    assert written["from_time"].iloc[0] == pd.Timestamp(first, unit="s").strftime("%Y-%m-%dT%H:%M:%SZ")
    assert written["to_time"].iloc[0] == pd.Timestamp(last, unit="s").strftime("%Y-%m-%dT%H:%M:%SZ")
    fees = pd.read_csv(files.platform_fees_csv)
    rate_lab, rate_imaging = rate_of(known_period.ledger, LAB)[1], rate_of(known_period.ledger, IMAGING)[1]
    fee_bps = fee_bps_of(known_period.ledger)
    by_hand = 3 * rate_imaging * fee_bps // 10_000 + 2 * rate_lab * fee_bps // 10_000
    assert fees[["exchanges", "fee_units"]].iloc[0].tolist() == [2, by_hand]
    matrix = pd.read_csv(files.matrix_csv, index_col="consumer_code")
    assert list(matrix.columns) == list(matrix.index) == ["TEST-000", "TEST-001", "TEST-002"]
    assert list(pd.read_csv(files.categories_csv).columns) == list(CATEGORY_COLUMNS)

    cumulative = net_by_block(settlement)
    assert cumulative.iloc[-1].tolist() == settlement.rows["net_units"].tolist()
    assert cumulative.index[-1] == settlement.info.to_block
    assert cumulative.index[0] >= settlement.info.from_block
    assert (cumulative.iloc[0] == 0).all()  # the chart starts flat, just before the first interaction
    charts = write_charts(settlement, tmp_path / "reports")
    assert len(charts.all()) == 4
    for path in charts.all():
        data = path.read_bytes()
        assert data.startswith(b"\x89PNG") and len(data) > 10_000, path


def test_write_period_reports_end_to_end(env, tmp_path, monkeypatch, cli_workspace: CliWorkspace):
    record_traffic(env, 60, seed=5, batch=10)
    env.ledger.close_period()
    session = Session(Workspace(cli_workspace.root), rpc_url_option=cli_workspace.rpc_url)
    lines: list[str] = []
    paths = write_period_reports(session, 1, lines.append)
    assert paths.settlement_csv == cli_workspace.reports / "settlement-1.csv"
    assert all(path.is_file() for path in paths.files())
    assert len(paths.charts) == 4
    assert len(paths.statements) == 3
    assert paths.anchor_tx is not None
    assert env.ledger.call(env.ledger.contract.functions.settlementRoot(1)).hex() == paths.root.removeprefix("0x")
    text = "\n".join(lines)
    assert str(paths.settlement_csv) in text and str(paths.statements_dir) in text
    # Running it again changes nothing on chain: the same root is already anchored.
    again = write_period_reports(session, 1, lines.append)
    assert again.anchor_tx is None and again.root == paths.root


def test_cli_report_writes_the_period_files(env, cli_workspace: CliWorkspace):
    record_traffic(env, 30, seed=6, batch=10)
    env.ledger.close_period()
    record_traffic(env, 20, seed=7, batch=10)
    env.ledger.close_period()
    export_dir = cli_workspace.root / "my-export"
    assert CliRunner().invoke(cli, ["export", "--out", str(export_dir)]).exit_code == 0
    result = CliRunner().invoke(cli, ["report", "--all", "--export-dir", str(export_dir)])
    assert result.exit_code == 0, result.output
    assert not (cli_workspace.reports / "export").exists()  # it used (and updated) the given export
    for period in (1, 2):
        csv = cli_workspace.reports / f"settlement-{period}.csv"
        assert str(csv) in result.output
        assert list(pd.read_csv(csv).columns) == EXPECTED_CSV_COLUMNS
        assert (cli_workspace.reports / f"settlement-{period}-exchange-matrix.png").is_file()
    assert "reconciled" in result.output


def test_cli_report_fails_on_a_tampered_export(known_period, cli_workspace: CliWorkspace):
    runner = CliRunner()
    assert runner.invoke(cli, ["export"]).exit_code == 0
    out_dir = next((cli_workspace.reports / "export").iterdir())
    part = out_dir / PARTS_DIR / read_checkpoint(out_dir).parts[0].file
    table = pq.read_table(part).to_pandas()
    fetch = table.index[table["kind"] == "fetch"][0]
    table.loc[fetch, "units"] -= 3  # the events now claim 3 units less were debited than the chain did
    pq.write_table(pa.Table.from_pandas(table, schema=INTERACTION_SCHEMA, preserve_index=False), part)
    # The edit is caught by the part's hash; an editor who also rewrites the checkpoint's hash must
    # still be caught, by reconciliation with the chain.
    checkpoint = json.loads((out_dir / CHECKPOINT_FILE).read_text())
    checkpoint["parts"][0]["sha256"] = hashlib.sha256(part.read_bytes()).hexdigest()
    (out_dir / CHECKPOINT_FILE).write_text(json.dumps(checkpoint))

    result = runner.invoke(cli, ["report", "--period", "1"])
    assert result.exit_code != 0
    assert isinstance(result.exception, ReconciliationError)
    assert "TEST-002" in str(result.exception) and "+3 units" in str(result.exception)
    assert not (cli_workspace.reports / "settlement-1.csv").exists()


def test_cli_report_needs_a_closed_period(env, cli_workspace: CliWorkspace):
    result = CliRunner().invoke(cli, ["report", "--period", "1"])
    assert result.exit_code != 0
    assert "period 1 is still open" in str(result.exception)
    assert "medmeter period close" in str(result.exception)


def test_names_that_look_like_formulas_stay_text_in_the_csv(known_period, tmp_path):
    settlement = settle_period(known_period.ledger, dataset(known_period, tmp_path), 1)
    rows = settlement.rows.copy()
    rows.loc[0, "name"] = '=HYPERLINK("http://evil.example","click")'
    rows.loc[1, "name"] = "+1-555"
    rows.loc[2, "name"] = "Plain Clinic"
    files = write_settlement_csvs(replace(settlement, rows=rows), tmp_path / "reports")
    names = pd.read_csv(files.settlement_csv)["name"].tolist()
    assert names[:3] == ['\'=HYPERLINK("http://evil.example","click")', "'+1-555", "Plain Clinic"]
    assert names[-1] == "all institutions"
