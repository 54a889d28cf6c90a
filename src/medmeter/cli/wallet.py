"""`medmeter wallet`: encrypted keystores."""

from __future__ import annotations

import click

from medmeter.cli.context import session_of


@click.group()
def wallet() -> None:
    """Encrypted keystores for the operator and the institutions."""


@wallet.command("new")
@click.argument("name")
@click.pass_context
def wallet_new(ctx: click.Context, name: str) -> None:
    """Create keystore NAME with a fresh key (password from MEDMETER_KEYSTORE_PASSWORD or a prompt)."""
    address = session_of(ctx).keystores.create(name)
    click.echo(f"{name}: {address}")


@wallet.command("list")
@click.pass_context
def wallet_list(ctx: click.Context) -> None:
    """List keystores and their addresses."""
    keystores = session_of(ctx).keystores
    for name in keystores.names():
        click.echo(f"{name:<24} {keystores.address(name)}")
