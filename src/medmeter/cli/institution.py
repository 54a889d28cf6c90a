"""`medmeter institution`: the registry of institutions."""

from __future__ import annotations

import click

from medmeter.cli.context import session_of
from medmeter.cli.options import UINT64


@click.group()
def institution() -> None:
    """Register, list, suspend, reinstate institutions; rotate keys; set credit lines."""


@institution.command("register")
@click.argument("wallet")
@click.option("--code", required=True, help="The institution's official code (at most 32 bytes).")
@click.option("--name", "display_name", required=True, help="Display name (an organisation, never a person).")
@click.option("--credit-line", type=UINT64, default=0, show_default=True, help="Units it may owe.")
@click.pass_context
def institution_register(ctx: click.Context, wallet: str, code: str, display_name: str, credit_line: int) -> None:
    """Register the institution whose keystore is WALLET (created if missing) or whose address is WALLET."""
    session = session_of(ctx)
    from eth_utils import is_address

    ledger = session.ledger()  # operator and deployment first: a failure there must create no keystore
    created = not is_address(wallet) and not session.keystores.exists(wallet)
    if created:
        session.keystores.create(wallet)
    address = session.resolve_address(wallet)
    try:
        ledger.register(address, code, display_name, credit_line)
    except BaseException:
        if created:  # no orphan keystore for an institution that was never registered
            session.keystores.path(wallet).unlink(missing_ok=True)
        raise
    click.echo(f"registered {display_name} ({code}) at {address}")


@institution.command("list")
@click.pass_context
def institution_list(ctx: click.Context) -> None:
    """List registered institutions."""
    for info in session_of(ctx).ledger(as_operator=False).institutions():
        click.echo(f"{info.code:<10} {info.address} {info.status:<9} line {info.credit_line:>8}  {info.name}")


def _status_command(name: str, help_text: str) -> None:
    @institution.command(name, help=help_text)
    @click.argument("who")
    @click.pass_context
    def command(ctx: click.Context, who: str) -> None:
        session = session_of(ctx)
        address = session.resolve_address(who)
        getattr(session.ledger(), name)(address)
        click.echo(f"{name}d {address}" if name.endswith("e") else f"{name}ed {address}")


_status_command("suspend", "Suspend an institution (keystore name or address): its signatures are refused.")
_status_command("reinstate", "Reinstate a suspended institution (keystore name or address).")


@institution.command("rotate")
@click.argument("who")
@click.option("--new-wallet", required=True, help="Keystore name (created if missing) or address of the new signer.")
@click.pass_context
def institution_rotate(ctx: click.Context, who: str, new_wallet: str) -> None:
    """Replace the signer key of WHO; its balance, debt and history stay with its address."""
    session = session_of(ctx)
    from eth_utils import is_address

    institution_address = session.resolve_address(who)
    if not is_address(new_wallet) and not session.keystores.exists(new_wallet):
        session.keystores.create(new_wallet)
    signer = session.resolve_address(new_wallet)
    session.ledger().rotate_signer(institution_address, signer)
    click.echo(f"{institution_address} now signs with {signer}")


@institution.command("credit-line")
@click.argument("who")
@click.argument("units", type=UINT64)
@click.pass_context
def institution_credit_line(ctx: click.Context, who: str, units: int) -> None:
    """Set the credit line of WHO to UNITS."""
    session = session_of(ctx)
    address = session.resolve_address(who)
    session.ledger().set_credit_line(address, units)
    click.echo(f"credit line of {address} is now {units}")
