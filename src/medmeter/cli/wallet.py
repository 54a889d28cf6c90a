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
    """Create keystore NAME with a fresh key (password from MEDMETER_KEYSTORE_PASSWORD or a prompt).

    NAME is lower-case letters, digits, '-', '_' or '.' (at most 64). If keystore NAME already
    exists it is kept as it is (its address is printed; nothing is created or overwritten), so
    the walk-through can run after `make demo`. An empty password is refused unless
    --allow-empty-password is given."""
    keystores = session_of(ctx).keystores
    if keystores.exists(name):
        # Unlock to prove the keystore is sound and the password matches before saying it is usable.
        address = keystores.unlock(name).address
        click.echo(f"{name}: {address} (keystore {keystores.path(name)} already exists; kept it, nothing created)")
        return
    address = keystores.create(name)
    click.echo(f"{name}: {address}")


@wallet.command("list")
@click.pass_context
def wallet_list(ctx: click.Context) -> None:
    """List keystores and their addresses."""
    keystores = session_of(ctx).keystores
    for name in keystores.names():
        click.echo(f"{name:<24} {keystores.address(name)}")
