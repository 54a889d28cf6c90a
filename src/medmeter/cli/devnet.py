"""`medmeter devnet`: the managed local anvil."""

from __future__ import annotations

import click

from medmeter.cli.context import session_of


@click.group()
def devnet() -> None:
    """The managed local devnet: anvil, with its state kept in .medmeter/devnet/."""


@devnet.command("up")
@click.option("--port", type=int, help="Port to listen on (default: 8600 if free, else any free port).")
@click.pass_context
def devnet_up(ctx: click.Context, port: int | None) -> None:
    """Start the devnet in the background (or reuse the running one); prints the RPC URL last."""
    from medmeter.toolchain import devnet as devnet_mod

    info, started = devnet_mod.up(
        session_of(ctx).workspace, port, warn=lambda message: click.echo(f"warning: {message}", err=True)
    )
    click.echo(f"{'started' if started else 'reusing'} anvil (pid {info.pid}), state in {info.state_file}")
    click.echo(info.rpc_url)


@devnet.command("down")
@click.pass_context
def devnet_down(ctx: click.Context) -> None:
    """Stop the devnet; its state is written to disk and restored by the next `up`."""
    from medmeter.toolchain import devnet as devnet_mod

    info = devnet_mod.down(session_of(ctx).workspace)
    click.echo(
        f"stopped anvil (pid {info.pid}); state kept in {info.state_file}" if info else "the devnet was not running"
    )


@devnet.command("status")
@click.pass_context
def devnet_status(ctx: click.Context) -> None:
    """Say whether the devnet runs, where, and at which block. Exit 1 if it does not run."""
    from medmeter.chain.rpc import connect
    from medmeter.toolchain import devnet as devnet_mod

    info = devnet_mod.is_running(session_of(ctx).workspace)
    if info is None:
        click.echo("the devnet is not running: start it with `medmeter devnet up`")
        ctx.exit(1)
    w3 = connect(info.rpc_url)
    click.echo(f"running: pid {info.pid}, chain {w3.eth.chain_id}, block {w3.eth.block_number}")
    click.echo(info.rpc_url)
