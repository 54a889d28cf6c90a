"""Set-up commands: the project toolchain, compiling and deploying the ledger."""

from __future__ import annotations

from pathlib import Path

import click

from medmeter.cli.context import session_of


@click.group()
def toolchain() -> None:
    """The project's own compiler (solcjs) and node (anvil) from node_modules."""


@toolchain.command("install")
@click.option(
    "--dir", "target", type=click.Path(file_okay=False, path_type=Path), help="Default: $SOLCX_BINARY_PATH or ~/.solcx."
)
@click.pass_context
def toolchain_install(ctx: click.Context, target: Path | None) -> None:
    """Install solc-v<version> for py-solc-x and `brownie compile` (no download: it runs solcjs)."""
    from medmeter.toolchain.executables import install_solcx_shim

    shim = install_solcx_shim(session_of(ctx).workspace, target)
    click.echo(f"installed {shim}")


@click.command("compile")
@click.option("--force", is_flag=True, help="Ignore the artifact cache.")
@click.pass_context
def compile_cmd(ctx: click.Context, force: bool) -> None:
    """Compile contracts/MeteringLedger.sol with solcjs (cached by source hash)."""
    from medmeter.toolchain.compiler import artifact_path, compile_ledger

    workspace = session_of(ctx).workspace
    artifact = compile_ledger(workspace, use_cache=not force)
    click.echo(
        f"{artifact.contract_name}: {len(artifact.deployed_bytecode) // 2 - 1} bytes -> {artifact_path(workspace)}"
    )


@click.command()
@click.pass_context
def deploy(ctx: click.Context) -> None:
    """Compile and deploy the ledger; writes deployments/<chain-id>.json. The operator gets every role."""
    from medmeter.chain.deployment import deploy as deploy_ledger
    from medmeter.chain.rpc import Transactor

    session = session_of(ctx)
    operator = session.operator()
    deployment = deploy_ledger(session.workspace, session.w3, Transactor(session.w3, operator))
    click.echo(f"MeteringLedger at {deployment.address} (chain {deployment.chain_id}, block {deployment.block})")
