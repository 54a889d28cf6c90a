"""`medmeter tariff`: rates per category and the platform fee."""

from __future__ import annotations

import click

from medmeter.cli.context import session_of
from medmeter.cli.options import UINT64
from medmeter.contract.facts import BPS_DENOMINATOR


@click.group()
def tariff() -> None:
    """The on-chain tariff: units per record per category, and the platform fee."""


@tariff.command("show")
@click.pass_context
def tariff_show(ctx: click.Context) -> None:
    """Print the current tariff."""
    from medmeter.app.operations import tariff_table

    click.echo(tariff_table(session_of(ctx).ledger(as_operator=False)))


@tariff.command("set")
@click.argument("category")
@click.option("--sync", "sync_units", type=UINT64, required=True, help="Units per record on sync.")
@click.option(
    "--fetch",
    "fetch_units",
    type=UINT64,
    required=True,
    help="Units per record on fetch/exchange.",
)
@click.pass_context
def tariff_set(ctx: click.Context, category: str, sync_units: int, fetch_units: int) -> None:
    """Set the rates of CATEGORY (a name such as laboratory, or an id)."""
    from medmeter.intake.categories import category_name, parse_category

    category_id = parse_category(category)
    session_of(ctx).ledger().set_rate(category_id, sync_units, fetch_units, category_name(category_id))
    click.echo(f"{category_name(category_id)}: sync {sync_units}, fetch {fetch_units} units per record")


@tariff.command("fee")
@click.argument("bps", type=click.IntRange(0, BPS_DENOMINATOR))
@click.pass_context
def tariff_fee(ctx: click.Context, bps: int) -> None:
    """Set the platform fee on exchanges, in basis points (500 = 5 %)."""
    session_of(ctx).ledger().set_platform_fee(bps)
    click.echo(f"platform fee is now {bps} bps")


@tariff.command("default")
@click.pass_context
def tariff_default(ctx: click.Context) -> None:
    """Set every category and the fee to medmeter's default tariff."""
    from medmeter.app.operations import apply_default_tariff, tariff_table

    ledger = session_of(ctx).ledger()
    apply_default_tariff(ledger)
    click.echo(tariff_table(ledger))
