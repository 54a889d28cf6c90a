"""`medmeter roles` and `medmeter pause` / `unpause`: who may operate the ledger, and the brake."""

from __future__ import annotations

import click

from medmeter.cli.context import session_of
from medmeter.contract.facts import OPERATING_ROLES

ROLE_WORDS = ("admin", *(name.removesuffix("_ROLE").lower() for name in OPERATING_ROLES))
ROLE_CHOICE = click.Choice(ROLE_WORDS, case_sensitive=False)


@click.group()
def roles() -> None:
    """List, grant and revoke the ledger's roles (admin, registrar, tariff, relayer, settler, pauser).

    \b
    Example:
      medmeter roles list
      medmeter roles grant relayer 0x70997970C51812dc3A010C7d01b50e0d17dc79C8
    """


@roles.command("list")
@click.pass_context
def roles_list(ctx: click.Context) -> None:
    """Print every role and the accounts that hold it now."""
    ledger = session_of(ctx).ledger(as_operator=False)
    for word in ROLE_WORDS:
        holders = ledger.role_holders(word)
        click.echo(f"{word:<10} {', '.join(holders) if holders else '(nobody)'}")


@roles.command("grant")
@click.argument("role", type=ROLE_CHOICE)
@click.argument("account")
@click.pass_context
def roles_grant(ctx: click.Context, role: str, account: str) -> None:
    """Grant ROLE to ACCOUNT (an address or a keystore name); needs the admin role (--operator)."""
    session = session_of(ctx)
    address = session.resolve_address(account)
    session.ledger().grant_role(role, address)
    click.echo(f"granted {role} to {address}")


@roles.command("revoke")
@click.argument("role", type=ROLE_CHOICE)
@click.argument("account")
@click.pass_context
def roles_revoke(ctx: click.Context, role: str, account: str) -> None:
    """Revoke ROLE from ACCOUNT (an address or a keystore name); needs the admin role (--operator)."""
    session = session_of(ctx)
    address = session.resolve_address(account)
    session.ledger().revoke_role(role, address)
    click.echo(f"revoked {role} from {address}")


@click.command()
@click.pass_context
def pause(ctx: click.Context) -> None:
    """Stop all recording (pauser role); reads, exports and statements keep working.

    \b
    Example:
      medmeter pause && medmeter unpause
    """
    session_of(ctx).ledger().pause()
    click.echo("the ledger is paused: no interaction is recorded until `medmeter unpause`")


@click.command()
@click.pass_context
def unpause(ctx: click.Context) -> None:
    """Resume recording after `medmeter pause` (pauser role)."""
    session_of(ctx).ledger().unpause()
    click.echo("the ledger records interactions again")
