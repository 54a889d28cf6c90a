"""`medmeter tariff`: rates per category and the platform fee, now or from the next period."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from medmeter.cli.context import session_of
from medmeter.cli.options import UINT64
from medmeter.contract.facts import BPS_DENOMINATOR

if TYPE_CHECKING:
    from medmeter.chain.ledger import Ledger

NEXT_PERIOD = click.option(
    "--next-period",
    is_flag=True,
    help="Schedule the change for the next period instead of applying it now: it takes effect when the open "
    "period closes, and `medmeter tariff show` lists it beside the current tariff until then.",
)


@click.group()
def tariff() -> None:
    """The on-chain tariff: units per record per category, and the platform fee."""


def scheduled_table(ledger: Ledger) -> str:
    """The rates and fee scheduled for the next period beside the current ones; "" when none is."""
    from medmeter.intake.categories import category_name

    scheduled = ledger.scheduled_tariff()
    if scheduled.empty:
        return ""
    open_period = scheduled.period - 1
    lines = [
        f"scheduled from period {scheduled.period} (takes effect when period {open_period} closes):",
        f"{'category':<14} {'id':>3} {'sync/record':>12} {'fetch/record':>13}   now (sync, fetch)",
    ]
    for category_id, (sync, fetch) in sorted(scheduled.rates.items()):
        now_sync, now_fetch, defined = ledger.call(ledger.contract.functions.rateOf(category_id))
        now = f"{now_sync}, {now_fetch}" if defined else "no tariff yet"
        lines.append(f"{category_name(category_id):<14} {category_id:>3} {sync:>12} {fetch:>13}   {now}")
    if scheduled.fee_bps is not None:
        current = int(ledger.call(ledger.contract.functions.platformFeeBps()))
        lines.append(f"platform fee from period {scheduled.period}: {scheduled.fee_bps} bps (now {current} bps)")
    return "\n".join(lines)


@tariff.command("show")
@click.pass_context
def tariff_show(ctx: click.Context) -> None:
    """Print the current tariff, then what is scheduled for the next period (if anything), so an
    institution sees a price before it applies."""
    from medmeter.app.operations import tariff_table

    ledger = session_of(ctx).ledger(as_operator=False)
    click.echo(tariff_table(ledger))
    if scheduled := scheduled_table(ledger):
        click.echo("")
        click.echo(scheduled)


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
@NEXT_PERIOD
@click.pass_context
def tariff_set(ctx: click.Context, category: str, sync_units: int, fetch_units: int, next_period: bool) -> None:
    """Set the rates of CATEGORY (a name such as laboratory, or an id), now or with --next-period
    from the next period (tariff role).

    Interactions are signed with their units, so a change now refuses items signed at the old
    price (`UnitsMismatch`); scheduling it lets institutions sign at the new price from the period
    it applies to. Scheduling the same category again replaces the scheduled rate."""
    from medmeter.intake.categories import category_name, parse_category

    category_id = parse_category(category)
    ledger = session_of(ctx).ledger()
    name = category_name(category_id)
    if next_period:
        ledger.schedule_rate(category_id, sync_units, fetch_units, name)
        period, _ = ledger.current_period()
        click.echo(
            f"{name}: sync {sync_units}, fetch {fetch_units} units per record from period {period + 1} "
            f"(scheduled; applies when period {period} closes)"
        )
        return
    ledger.set_rate(category_id, sync_units, fetch_units, name)
    click.echo(f"{name}: sync {sync_units}, fetch {fetch_units} units per record")


@tariff.command("fee")
@click.argument("bps", type=click.IntRange(0, BPS_DENOMINATOR))
@NEXT_PERIOD
@click.pass_context
def tariff_fee(ctx: click.Context, bps: int, next_period: bool) -> None:
    """Set the platform fee on exchanges, in basis points (500 = 5 %), now or with --next-period
    from the next period (tariff role)."""
    ledger = session_of(ctx).ledger()
    if next_period:
        ledger.schedule_platform_fee(bps)
        period, _ = ledger.current_period()
        click.echo(
            f"platform fee of {bps} bps from period {period + 1} (scheduled; applies when period {period} closes)"
        )
        return
    ledger.set_platform_fee(bps)
    click.echo(f"platform fee is now {bps} bps")


@tariff.command("default")
@click.pass_context
def tariff_default(ctx: click.Context) -> None:
    """Set every category and the fee to medmeter's default tariff."""
    from medmeter.app.operations import apply_default_tariff, tariff_table

    ledger = session_of(ctx).ledger()
    apply_default_tariff(ledger)
    click.echo(tariff_table(ledger))
