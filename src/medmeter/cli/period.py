"""`medmeter period` and `medmeter balances`."""

from __future__ import annotations

import json
from typing import Any

import click

from medmeter.cli.context import session_of
from medmeter.errors import MedmeterError


@click.group()
def period() -> None:
    """Settlement periods."""


@period.command("close")
@click.pass_context
def period_close(ctx: click.Context) -> None:
    """Close the open settlement period at the previous block."""
    ledger = session_of(ctx).ledger()
    number, _ = ledger.current_period()
    ledger.close_period()
    start, end = ledger.period_range(number)
    click.echo(f"closed period {number}: blocks {start}..{end}")


@period.command("show")
@click.argument("number", type=click.IntRange(1))
@click.pass_context
def period_show(ctx: click.Context, number: int) -> None:
    """Print the block range of closed period NUMBER."""
    ledger = session_of(ctx).ledger(as_operator=False)
    current, start = ledger.current_period()
    if number >= current:
        state = f"is still open (since block {start})" if number == current else "does not exist yet"
        raise MedmeterError(
            f"period {number} {state}; the open period is {current}: see `medmeter period list`, and close the "
            "open period with `medmeter period close`."
        )
    first, last = ledger.period_range(number)
    click.echo(f"period {number}: blocks {first}..{last} (closed)")


@period.command("list")
@click.pass_context
def period_list(ctx: click.Context) -> None:
    """List closed periods and the open one."""
    ledger = session_of(ctx).ledger(as_operator=False)
    current, start = ledger.current_period()
    for number in range(1, current):
        first, last = ledger.period_range(number)
        click.echo(f"period {number}: blocks {first}..{last} (closed)")
    click.echo(f"period {current}: from block {start} (open)")


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def balances(ctx: click.Context, as_json: bool) -> None:
    """Per institution: balance and debt on chain, credited and debited from the export, counts per kind.

    Brings the export up to date first (as `medmeter export` does) and reads both sides at the
    export's last block. Exits 1 if any institution's events and contract state disagree.
    """
    from medmeter.app.pipeline import balances as balance_rows
    from medmeter.app.pipeline import format_balances

    block, rows = balance_rows(session_of(ctx))
    if as_json:
        click.echo(json.dumps({"block": block, "institutions": [_row_json(r) for r in rows]}, indent=2))
    else:
        click.echo(f"at block {block}:")
        click.echo(format_balances(rows))
    if not all(r.reconciles for r in rows):
        raise MedmeterError("events and contract state disagree for the rows marked NO: report this ledger.")


def _row_json(row: Any) -> dict[str, Any]:
    return {
        "institution": row.institution.address,
        "code": row.institution.code,
        "name": row.institution.name,
        "status": row.institution.status,
        "balance": row.position.balance,
        "debt": row.position.debt,
        "credited": row.figures["credited_units"],
        "debited": row.figures["debited_units"],
        "counts": {
            "sync": row.figures["sync_count"],
            "fetch": row.figures["fetch_count"],
            "exchange": row.figures["exchange_out_count"],
        },
        "figures": row.figures,
    }
