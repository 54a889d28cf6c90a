"""The analyst's commands: export, report, anchor, statement, verify-statement."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click

from medmeter.cli.context import session_of
from medmeter.cli.options import LAST_PERIOD, PERIOD, confirmations_option
from medmeter.errors import MedmeterError


@contextmanager
def _block_progress(label: str) -> Iterator[tuple[Callable[[int], None], Callable[[int], None]]]:
    """(on_total, update) for a tqdm bar over blocks; one plain line when stderr is not a terminal."""
    from medmeter.cli.context import stderr_is_terminal

    if not stderr_is_terminal():
        click.echo(f"{label}: reading the ledger's events...", err=True)
        yield (lambda total: None), (lambda n: None)
        return
    from tqdm import tqdm

    with tqdm(total=0, desc=label, unit="block", file=sys.stderr, dynamic_ncols=True) as bar:

        def on_total(total: int) -> None:
            bar.reset(total=total)

        yield on_total, bar.update


def _run_export(ctx: click.Context, *, out: Path | None = None, confirmations: int = 0, **options: Any) -> Any:
    from medmeter.app.pipeline import export_dir_for
    from medmeter.export.exporter import Exporter

    session = session_of(ctx)
    ledger = session.ledger(as_operator=False)
    out_dir = out or export_dir_for(session, ledger)
    restart = options.pop("restart", False)
    to_block = options.pop("to_block", None)
    with _block_progress("export") as (on_total, update):
        result = Exporter(ledger, out_dir, **options).run(
            to_block=to_block, confirmations=confirmations, restart=restart, progress=update, on_total=on_total
        )
    if result.reorg is not None:
        reorg = result.reorg
        click.echo(
            f"reorg: block {reorg.detected_at} is no longer on the chain; "
            + (
                "no common block found among the kept hashes, exported everything again"
                if reorg.full_reexport
                else f"rewound to block {reorg.fork_block} and exported the blocks after it again"
            )
            + f" ({reorg.rows_dropped} stale row(s) dropped)",
            err=True,
        )
    if result.orphans_removed:
        click.echo(f"resumed an interrupted export: removed {result.orphans_removed} unfinished part file(s)", err=True)
    return result


def _period_choice(ledger: Any, period: int | None, all_periods: bool) -> list[int]:
    from medmeter.app.pipeline import closed_periods

    if all_periods == (period is not None):
        raise click.UsageError("give either --period P (a number, or `last`) or --all: one of them is required.")
    closed = closed_periods(ledger)
    if all_periods or period == LAST_PERIOD:
        if not closed:
            raise MedmeterError("no settlement period is closed yet: close one with `medmeter period close`.")
        return closed if all_periods else closed[-1:]
    assert period is not None
    if period not in closed:
        current, start = ledger.current_period()
        listed = f"closed: {', '.join(map(str, closed)) or 'none'}"
        if period > current:
            raise MedmeterError(
                f"period {period} does not exist ({listed}; the open period is {current}): pick a closed period, "
                "see `medmeter period list`."
            )
        raise MedmeterError(
            f"period {period} is still open (since block {start}; {listed}): close it with `medmeter period close` "
            "or pick a closed one."
        )
    return [period]


REPORTS_OWNER_FILE = ".ledger.json"


def _claim_reports_dir(reports_dir: Path, ledger: Any) -> None:
    """Refuse to overwrite another ledger's reports (e.g. the demo's after `deploy --new`); mark the folder ours.

    The owner is the marker `report` leaves, else the ledger named by a statement already there."""
    from medmeter.fileio import write_json_atomic

    owner: str | None = None
    candidates = [reports_dir / REPORTS_OWNER_FILE, *sorted((reports_dir / "statements").glob("*.json"))[:1]]
    for candidate in candidates:
        try:
            owner = str(json.loads(candidate.read_text())["ledger"])
            break
        except (OSError, ValueError, KeyError, TypeError, RecursionError):
            continue
    if owner is not None and owner.lower() != ledger.address.lower():
        raise MedmeterError(
            f"{reports_dir} holds the reports of ledger {owner}, not of {ledger.address} (the deployment in use): "
            "pass --out-dir for this ledger's reports, or move the old ones away first; nothing was written."
        )
    write_json_atomic(reports_dir / REPORTS_OWNER_FILE, {"ledger": ledger.address, "chain_id": ledger.w3.eth.chain_id})


def _resolve_institution(session: Any, ledger: Any, value: str) -> str:
    """An institution given as an address, a keystore name or an institution code."""
    from medmeter.cli.context import resolve_institution

    return resolve_institution(session, ledger, value)


_EXPORT_DIR_OPTION = click.option(
    "--export-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="The export folder to bring up to date and read (default: reports/export/<chain-id>-<ledger>/).",
)


# ---------------------------------------------------------------------------------- export


@click.command("export")
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    help="Export folder. Default: reports/export/<chain-id>-<ledger>/.",
)
@confirmations_option
@click.option(
    "--chunk-blocks",
    type=click.IntRange(1),
    default=2_000,
    show_default=True,
    help="Blocks per eth_getLogs request and per parquet part file.",
)
@click.option("--to-block", type=click.IntRange(0), help="Stop at this block (default: the head).")
@click.option("--restart", is_flag=True, help="Forget the checkpoint and export from the deployment block again.")
@click.option("--no-csv", is_flag=True, help="Skip the full CSV view (parquet parts only).")
@click.pass_context
def export_cmd(
    ctx: click.Context,
    out: Path | None,
    confirmations: int,
    chunk_blocks: int,
    to_block: int | None,
    restart: bool,
    no_csv: bool,
) -> None:
    """Export every recorded interaction to parquet and CSV, one row per interaction.

    Incremental: a checkpoint keeps the last exported block and its hash, so a second run reads only
    new blocks and an interrupted run resumes without duplicates. A reorg below the checkpoint is
    detected and the affected blocks are exported again. Read the parquet parts with
    `medmeter.export.reading.read_export_frame(folder)` (a pandas data frame; it ignores unfinished
    parts) or use interactions.csv."""
    result = _run_export(
        ctx,
        out=out,
        confirmations=confirmations,
        chunk_blocks=chunk_blocks,
        to_block=to_block,
        restart=restart,
        write_csv=not no_csv,
    )
    scanned = result.last_block - result.first_block + 1
    rate = result.rows_new / result.seconds if result.seconds > 0 else 0.0
    click.echo(
        f"exported {result.rows_new:,} new interaction(s) from {max(scanned, 0):,} block(s) in {result.seconds:.2f} s "
        f"({rate:,.0f}/s); {result.rows_total:,} in total up to block {result.last_block} (head {result.head})"
    )
    click.echo(f"parquet: {result.parquet_dir}/")
    if not no_csv:
        click.echo(f"csv:     {result.csv_path}")


# ---------------------------------------------------------------------------------- report


@click.command("report")
@click.option(
    "--period",
    type=PERIOD,
    help="The closed period to report: its number, or `last` for the newest (this or --all is required).",
)
@click.option("--all", "all_periods", is_flag=True, help="Report every closed period (this or --period is required).")
@click.option(
    "--out-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder for the CSVs and charts. Default: reports/.",
)
@click.option("--no-charts", is_flag=True, help="Write the CSVs only.")
@confirmations_option
@_EXPORT_DIR_OPTION
@click.pass_context
def report_cmd(
    ctx: click.Context,
    period: int | None,
    all_periods: bool,
    out_dir: Path | None,
    no_charts: bool,
    confirmations: int,
    export_dir: Path | None,
) -> None:
    """Settle closed periods from the exported events and reconcile them with the contract.

    Writes reports/settlement-<P>.csv (one row per institution), the exchange matrix and the
    per-category breakdown as CSV, and PNG charts beside them. Fails (exit 1) naming the
    institution and the difference if events and contract state disagree at the period's end.

    Lists the period's disputes (filed by institutions about its interactions or statements) and
    the reversals recorded in it, and writes them to settlement-<P>-disputes.csv and
    settlement-<P>-reversals.csv: each reversal is its own adjustment line referencing the
    original's digest; the original's row and the reconciled figures never change."""
    from medmeter.app.pipeline import settle_from_export, write_period_corrections, write_report_files

    session = session_of(ctx)
    ledger = session.ledger(as_operator=False)
    periods = _period_choice(ledger, period, all_periods)
    export = _run_export(ctx, out=export_dir, confirmations=confirmations)
    reports_dir = out_dir or session.workspace.reports_dir
    _claim_reports_dir(reports_dir, ledger)
    for number in periods:
        settlement = settle_from_export(ledger, export, number)
        files, charts = write_report_files(settlement, reports_dir, charts=not no_charts)
        info = settlement.info
        click.echo(
            f"period {number} (blocks {info.from_block}..{info.to_block}): {len(settlement.interactions):,} "
            f"interactions, {len(settlement.rows)} institutions, reconciled with the contract"
        )
        corrections, (disputes_csv, reversals_csv) = write_period_corrections(ledger, settlement, export, reports_dir)
        for path in (*files.all(), disputes_csv, reversals_csv, *charts):
            click.echo(f"  {path}")
        _echo_corrections(corrections)


def _echo_corrections(corrections: Any) -> None:
    """The period's disputes and reversals, one line each (the CSVs hold every column)."""
    disputes, reversals = corrections.disputes, corrections.reversals
    click.echo(f"  disputes of period {corrections.period}: {len(disputes) or 'none'}")
    for row in disputes.itertuples(index=False):
        subject = f"interaction {row.interaction_digest}" if row.subject == "interaction" else "its statement"
        click.echo(
            f"    block {row.block_number}: {row.code or row.institution} disputes {subject} (reason {row.reason_hash})"
        )
    recorded = reversals.drop_duplicates(["tx_hash", "log_index"]) if len(reversals) else reversals
    click.echo(f"  reversals recorded in period {corrections.period}: {len(recorded) or 'none'}")
    for row in reversals.itertuples(index=False):
        click.echo(
            f"    block {row.block_number}: {row.code or row.institution} {int(row.adjustment_units):+d} units "
            f"({row.side or '?'}; reverses {row.original_digest}: {row.status})"
        )


# ---------------------------------------------------------------------------------- anchor, statements


@click.command("anchor")
@click.option("--period", type=PERIOD, required=True, help="The closed period to anchor: its number, or `last`.")
@click.option(
    "--supersede",
    "supersede",
    is_flag=True,
    help="Replace a different root anchored earlier (only before it is final); needs --reason.",
)
@click.option("--reason", help="With --supersede: the published explanation (its keccak256 goes on chain).")
@_EXPORT_DIR_OPTION
@click.pass_context
def anchor_cmd(ctx: click.Context, period: int, supersede: bool, reason: str | None, export_dir: Path | None) -> None:
    """Anchor the Merkle root of a period's settlement rows on chain (settler role, --operator).

    Computes the rows exactly as `report` does (reconciled), builds the tree of their leaves and
    proposes it (version 1); it becomes final after the ledger's dispute window. Anchoring the same
    root again is a no-op; a different root is refused unless --supersede --reason is given and the
    anchored one is not final yet (every version stays readable on chain, with its event)."""
    from medmeter.app.pipeline import settle_from_export
    from medmeter.statement.statements import anchor_settlement

    session = session_of(ctx)
    ledger = session.ledger(as_operator=False)
    [period] = _period_choice(ledger, period, False)
    export = _run_export(ctx, out=export_dir)
    settlement = settle_from_export(ledger, export, period)
    if supersede and not reason:
        raise click.UsageError("--supersede needs --reason TEXT: say publicly why the root is replaced.")
    result = anchor_settlement(session.ledger(), settlement, supersede_reason=reason if supersede else None)
    if result.tx_hash is None:
        click.echo(f"period {period} is already anchored with root {result.root} ({result.institution_count} rows)")
    else:
        click.echo(
            f"anchored period {period}: root {result.root} over {result.institution_count} institutions "
            f"(tx {result.tx_hash})"
        )


@click.command("statement")
@click.option(
    "--institution", "who", required=True, help="Address, keystore name or institution code of the institution."
)
@click.option("--period", type=PERIOD, required=True, help="The closed, anchored period: its number, or `last`.")
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Statement file. Default: reports/statements/statement-<period>-<code>-<address>.json.",
)
@_EXPORT_DIR_OPTION
@click.pass_context
def statement_cmd(ctx: click.Context, who: str, period: int, output: Path | None, export_dir: Path | None) -> None:
    """Write an institution's settlement statement for a period: its row, the Merkle proof, the
    anchored root, the ledger address and the chain id. Anyone can check it with verify-statement."""
    from medmeter.app.pipeline import STATEMENTS_DIR, settle_from_export
    from medmeter.statement.statements import build_statements, statement_path, write_statement

    session = session_of(ctx)
    ledger = session.ledger(as_operator=False)
    address = _resolve_institution(session, ledger, who)
    [period] = _period_choice(ledger, period, False)
    export = _run_export(ctx, out=export_dir)
    settlement = settle_from_export(ledger, export, period)
    statements = build_statements(settlement, ledger)
    if address not in statements:
        raise MedmeterError(
            f"{address} has no row in period {period}: it was not registered by block {settlement.info.to_block}."
        )
    statement = statements[address]
    path = output or statement_path(session.workspace.reports_dir / STATEMENTS_DIR, period, statement["code"], address)
    write_statement(statement, path)
    row = statement["row"]
    click.echo(
        f"{statement['code']} period {period}: credited {row['credited']}, debited {row['debited']}, closing balance "
        f"{row['closing_balance']}, debt {row['closing_debt']}"
    )
    click.echo(f"statement: {path}")


@click.command("verify-statement")
@click.argument("file", type=click.Path(dir_okay=False, exists=True, path_type=Path))
@click.option(
    "--ledger",
    "expected_ledger",
    help="The ledger address you trust; the statement must name it. Default: this workspace's deployment, if any.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the checks as JSON.")
@click.pass_context
def verify_statement_cmd(ctx: click.Context, file: Path, expected_ledger: str | None, as_json: bool) -> None:
    """Check a settlement statement against the chain, trusting nothing but the node.

    Recomputes the leaf and the Merkle root in Python, compares the root with the latest one
    anchored on chain, asks the contract's verifySettlementRowAt view for the statement's version,
    checks every figure it shows against the contract's cumulative counters and positions at the
    period's blocks, and its code and name against the registry. Says whether the root is final
    and whether a key recovery is pending. Refuses to say "verifies" unless the ledger is pinned
    (--ledger, or this workspace's deployment file). Exits 1 with the reason if any check fails."""
    from medmeter.statement.statements import StatementError, failure_sentence, load_statement, verify_statement

    session = session_of(ctx)
    try:
        statement = load_statement(file)
    except (RecursionError, ValueError) as exc:  # nested 200,000 deep; an integer of more than 4,300 digits
        raise StatementError(
            f"cannot read {file} as a statement ({type(exc).__name__}): pass the file `medmeter statement` wrote."
        ) from None
    pinned_by = "--ledger" if expected_ledger else None
    if expected_ledger is None:
        expected_ledger, pinned_by = _workspace_ledger(session)
    result = verify_statement(session.w3, statement, expected_ledger)
    if as_json:
        click.echo(json.dumps([{"check": c.name, "ok": c.ok, "detail": c.detail} for c in result.checks], indent=2))
    else:
        for check in result.checks:
            click.echo(f"{'ok  ' if check.ok else 'FAIL'}  {check.name:<16} {check.detail}")
    for note in result.notes:
        click.echo(f"note: {note}", err=True)
    if not result.ok:
        raise StatementError(failure_sentence(result, file))
    if pinned_by is None:
        raise StatementError(
            f"every check of {file} passed against ledger {statement['ledger']}, but nothing pins that address: a "
            "genuine ledger someone else deployed would pass too. Run again with --ledger ADDRESS (the address your "
            "institution was registered on, from the platform's published deployment)."
        )
    state = "final" if result.final else "not final yet: it may still be superseded within the dispute window"
    click.echo(
        f"statement {file} verifies: period {statement['period']} row of {statement['row']['institution']} is part of "
        f"settlement version {statement.get('settlement_version')} ({state}) in ledger {statement['ledger']} on "
        f"chain {statement['chain_id']}; ledger pinned by {pinned_by}"
    )


def _workspace_ledger(session: Any) -> tuple[str | None, str | None]:
    """The ledger address of this workspace's deployment file for the node's chain, if there is one."""
    from medmeter.chain.deployment import deployment_path

    path = deployment_path(session.workspace, session.w3.eth.chain_id)
    try:
        return str(json.loads(path.read_text())["address"]), str(path)
    except (OSError, ValueError, KeyError, TypeError):
        return None, None


@click.command("audit-events")
@click.option("--period", type=PERIOD, required=True, help="The closed period: its number, or `last`.")
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Default: reports/audit-events-<P>.json (or .ndjson).",
)
@click.option("--ndjson", is_flag=True, help="One AuditEvent per line instead of a collection Bundle.")
@_EXPORT_DIR_OPTION
@click.pass_context
def audit_events_cmd(
    ctx: click.Context, period: int, output: Path | None, ndjson: bool, export_dir: Path | None
) -> None:
    """Write a FHIR R4 AuditEvent (IHE BALP minimal pattern, no patient data) for every interaction
    recorded in a closed period: who, what kind, category, records, units, and the transaction and
    log index on chain, so the platform's audit repository holds the metering beside the exchange."""
    from medmeter.app.pipeline import settle_from_export
    from medmeter.export.fhir_audit import write_audit_events
    from medmeter.export.reading import read_export

    session = session_of(ctx)
    ledger = session.ledger(as_operator=False)
    [period] = _period_choice(ledger, period, False)
    export = _run_export(ctx, out=export_dir)
    settlement = settle_from_export(ledger, export, period)  # reconciled first: never write unproven rows
    rows = read_export(export.out_dir).to_pandas()
    rows = rows[rows["period"] == period]
    suffix = "ndjson" if ndjson else "json"
    path = output or session.workspace.reports_dir / f"audit-events-{period}.{suffix}"
    count = write_audit_events(rows, path, fmt="ndjson" if ndjson else "bundle", chain_id=ledger.deployment.chain_id)
    units = int(settlement.interactions["units"].sum())
    click.echo(f"{count} AuditEvent(s) for period {period} ({units} units in all) -> {path}")
