"""`medmeter demo`: the main job."""

from __future__ import annotations

import click

from medmeter.cli.context import progress_bar, session_of
from medmeter.cli.options import batch_size_option


@click.command()
@click.option("--count", type=click.IntRange(1), default=1000, show_default=True, help="Interactions to simulate.")
@click.option(
    "--seed", type=int, default=7, show_default=True, help="Seed of the synthetic traffic: same seed, same traffic."
)
@batch_size_option
@click.pass_context
def demo(ctx: click.Context, count: int, seed: int, batch_size: int) -> None:
    """The main job: devnet, deploy, institutions, tariff, signed traffic, relay, period close, tally.

    Each run deploys a fresh ledger on the devnet (the previous deployment file is kept as
    deployments/<chain-id>-<address>.json) and leaves it running for the README's walk-through."""
    from medmeter.app.demo import run_demo

    run_demo(session_of(ctx), count=count, seed=seed, batch_size=batch_size, echo=click.echo, progress=progress_bar)
