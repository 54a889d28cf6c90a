"""The analyst's job for a closed period, end to end: bring the export up to date, settle and
reconcile the period, write its CSVs and charts, anchor the settlement root and write every
institution's verifiable statement. Used by `medmeter report/anchor/statement` and the demo."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.compute as pc

from medmeter.app.session import Session
from medmeter.chain.ledger import InstitutionInfo, Ledger, Position
from medmeter.errors import MedmeterError
from medmeter.export.checkpoint import default_export_dir
from medmeter.export.exporter import Exporter, ExportResult
from medmeter.export.reading import read_export
from medmeter.settlement.corrections import Corrections, period_corrections, write_corrections
from medmeter.settlement.crediting import tally
from medmeter.settlement.period import (
    PeriodInfo,
    PeriodSettlement,
    SettlementFiles,
    period_info,
    read_positions,
    settle_period,
    write_settlement_csvs,
)

STATEMENTS_DIR = "statements"


@dataclass(frozen=True)
class ReportPaths:
    period: int
    settlement_csv: Path
    matrix_csv: Path
    categories_csv: Path
    platform_fees_csv: Path
    charts: tuple[Path, ...]
    export_dir: Path
    root: str | None = None
    anchor_tx: str | None = None  # None if the root was already anchored (or anchoring was not asked for)
    statements_dir: Path | None = None
    statements: tuple[Path, ...] = ()

    def files(self) -> tuple[Path, ...]:
        tables = (self.settlement_csv, self.matrix_csv, self.categories_csv, self.platform_fees_csv)
        return (*tables, *self.charts, *self.statements)


def export_dir_for(session: Session, ledger: Ledger | None = None) -> Path:
    ledger = ledger or session.ledger(as_operator=False)
    return default_export_dir(session.workspace, ledger.deployment.chain_id, ledger.address)


def update_export(
    ledger: Ledger,
    out_dir: Path,
    *,
    confirmations: int = 0,
    progress: Callable[[int], None] | None = None,
    on_total: Callable[[int], None] | None = None,
) -> ExportResult:
    return Exporter(ledger, out_dir).run(confirmations=confirmations, progress=progress, on_total=on_total)


# What settlement, reconciliation and charts read from the export (the rest stays on disk).
REPORT_COLUMNS = (
    "block_number",
    "tx_hash",
    "log_index",
    "period",
    "kind",
    "institution",
    "counterparty",
    "category",
    "category_name",
    "records",
    "units",
    "fee",
)


def load_period_rows(out_dir: Path, info: PeriodInfo) -> pd.DataFrame:
    """The exported rows labelled with the period or inside its block range (both, if the export is sound)."""
    block = pc.field("block_number")
    where = (pc.field("period") == info.period) | ((block >= info.from_block) & (block <= info.to_block))
    return read_export(out_dir, columns=REPORT_COLUMNS, where=where).to_pandas()


@dataclass(frozen=True)
class BalanceRow:
    """An institution's position on chain beside its figures from the export, at one block."""

    institution: InstitutionInfo
    position: Position
    figures: dict[str, int]  # crediting.TALLY_COLUMNS, summed over every exported interaction

    @property
    def reconciles(self) -> bool:
        """balance - debt from the contract equals credited - debited from events."""
        return self.position.balance - self.position.debt == self.figures["net_units"]


def balances(session: Session, ledger: Ledger | None = None) -> tuple[int, list[BalanceRow]]:
    """(block, rows): every institution's figures since deployment, read from the export brought up to
    date, beside its balance and debt at the export's last block (so both sides see the same chain)."""
    reader = ledger or session.ledger(as_operator=False)
    export = update_export(reader, export_dir_for(session, reader))
    block = export.last_block
    institutions = reader.institutions(block)
    rows = read_export(export.out_dir, columns=REPORT_COLUMNS, where=pc.field("block_number") <= block).to_pandas()
    figures = tally(rows, [i.address for i in institutions])
    positions = read_positions(reader, [i.address for i in institutions], block)
    return block, [
        BalanceRow(i, positions[i.address], {k: int(v) for k, v in figures.loc[i.address].items()})
        for i in institutions
    ]


def format_balances(rows: list[BalanceRow]) -> str:
    header = (
        f"{'code':<10} {'institution':<30} {'status':<9} {'balance':>9} {'debt':>7} {'credited':>9} "
        f"{'debited':>9} {'sync':>6} {'fetch':>6} {'exch':>6}  reconciles"
    )
    lines = [header, "-" * len(header)]
    for row in rows:
        f = row.figures
        lines.append(
            f"{row.institution.code:<10} {row.institution.name[:30]:<30} {row.institution.status:<9} "
            f"{row.position.balance:>9} {row.position.debt:>7} {f['credited_units']:>9} {f['debited_units']:>9} "
            f"{f['sync_count']:>6} {f['fetch_count']:>6} {f['exchange_out_count']:>6}  "
            f"{'yes' if row.reconciles else 'NO'}"
        )
    return "\n".join(lines)


def closed_periods(ledger: Ledger) -> list[int]:
    current, _ = ledger.current_period()
    return list(range(1, current))


def settle_from_export(ledger: Ledger, export: ExportResult, period: int) -> PeriodSettlement:
    """Settle `period` from an export that must cover the period's last block."""
    info = period_info(ledger, period)
    if export.last_block < info.to_block:
        raise MedmeterError(
            f"the export reaches block {export.last_block} but period {period} ends at block {info.to_block}: "
            "wait for more confirmations or lower --confirmations, then report again."
        )
    return settle_period(ledger, load_period_rows(export.out_dir, info), period)


def write_report_files(
    settlement: PeriodSettlement, reports_dir: Path, *, charts: bool = True
) -> tuple[SettlementFiles, tuple[Path, ...]]:
    files = write_settlement_csvs(settlement, reports_dir)
    chart_files: tuple[Path, ...] = ()
    if charts:
        from medmeter.settlement.charts import write_charts

        chart_files = write_charts(settlement, reports_dir).all()
    return files, chart_files


def write_period_corrections(
    ledger: Ledger, settlement: PeriodSettlement, export: ExportResult, reports_dir: Path
) -> tuple[Corrections, tuple[Path, Path]]:
    """The period's disputes (filed up to the export's last block) and reversals, written to
    settlement-<P>-disputes.csv and settlement-<P>-reversals.csv (headers only when there are none)."""
    info = settlement.info
    corrections = period_corrections(
        ledger, info.period, info.from_block, info.to_block, export.last_block, export.out_dir, settlement.codes()
    )
    return corrections, write_corrections(corrections, reports_dir)


def write_period_reports(
    session: Session,
    period: int,
    echo: Callable[[str], Any],
    *,
    reports_dir: Path | None = None,
    export_dir: Path | None = None,
    anchor: bool = True,
    statements: bool = True,
    settler: Ledger | None = None,
) -> ReportPaths:
    """Export, settle and reconcile `period`; write its CSVs and charts; anchor its root (as
    `settler`, a ledger sending from the settler role's key; default the operator) and write every
    institution's statement to reports/statements/. Echoes where."""
    from medmeter.statement.statements import anchor_settlement, write_statements

    started = time.perf_counter()
    reports_dir = reports_dir or session.workspace.reports_dir
    reader = session.ledger(as_operator=False)
    out_dir = export_dir or export_dir_for(session, reader)
    export = update_export(reader, out_dir)
    settlement = settle_from_export(reader, export, period)
    files, chart_files = write_report_files(settlement, reports_dir)
    corrections, (disputes_csv, reversals_csv) = write_period_corrections(reader, settlement, export, reports_dir)
    root = anchor_tx = None
    statement_paths: tuple[Path, ...] = ()
    statements_dir = None
    if anchor:
        result = anchor_settlement(settler or session.ledger(), settlement)
        root, anchor_tx = result.root, result.tx_hash
    if statements:
        statements_dir = reports_dir / STATEMENTS_DIR
        statement_paths = tuple(write_statements(settlement, reader, statements_dir))
    seconds = time.perf_counter() - started

    info = settlement.info
    echo(
        f"exported {export.rows_total:,} interactions ({export.rows_new:,} new) to {out_dir} "
        f"(parquet parts + {export.csv_path.name}) in {export.seconds:.2f} s"
    )
    echo(
        f"period {period} (blocks {info.from_block}..{info.to_block}): {len(settlement.interactions):,} interactions, "
        f"{len(settlement.rows)} institutions, reconciled unit for unit with the contract at block {info.to_block}"
    )
    echo(f"  settlement:        {files.settlement_csv}")
    echo(f"  exchange matrix:   {files.matrix_csv}")
    echo(f"  categories:        {files.categories_csv}")
    echo(f"  platform fees:     {files.platform_fees_csv} (fees are burned: this is the platform's income)")
    echo(f"  disputes:          {disputes_csv} ({len(corrections.disputes) or 'none'})")
    echo(f"  reversals:         {reversals_csv} ({len(corrections.reversals) or 'none'})")
    for chart in chart_files:
        echo(f"  chart:             {chart}")
    if root is not None:
        how = f"in tx {anchor_tx}" if anchor_tx else "(already anchored)"
        echo(f"  settlement root:   {root} anchored on chain {how}")
    if statements_dir is not None:
        echo(
            f"  statements:        {len(statement_paths)} in {statements_dir}/ "
            "(check one with: medmeter verify-statement FILE)"
        )
    echo(f"  report time:       {seconds:.2f} s")
    return ReportPaths(
        period=period,
        settlement_csv=files.settlement_csv,
        matrix_csv=files.matrix_csv,
        categories_csv=files.categories_csv,
        platform_fees_csv=files.platform_fees_csv,
        charts=chart_files,
        export_dir=out_dir,
        root=root,
        anchor_tx=anchor_tx,
        statements_dir=statements_dir,
        statements=statement_paths,
    )
