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
    "--dir",
    "target",
    type=click.Path(file_okay=False, path_type=Path),
    help="Where to put solc-v<version>. Default: $SOLCX_BINARY_PATH (set for this checkout's venv by "
    "`make install`), else this checkout's .medmeter/solc-bin/.",
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
    from medmeter.cli.context import note
    from medmeter.toolchain.compiler import artifact_path, compile_ledger

    workspace = session_of(ctx).workspace
    note("compiling contracts/MeteringLedger.sol with solcjs (via-IR; about 20 s unless cached)...")
    artifact = compile_ledger(workspace, use_cache=not force)
    click.echo(
        f"{artifact.contract_name}: {len(artifact.deployed_bytecode) // 2 - 1} bytes -> {artifact_path(workspace)}"
    )


@click.command()
@click.option(
    "--new",
    "new_ledger",
    is_flag=True,
    help="Deploy another ledger even if this workspace has a live one; the old deployment file is kept "
    "as deployments/<chain-id>-<address>.json.",
)
@click.option("--evm-version", type=click.Choice(["shanghai", "cancun"]), help="Default: what the node runs.")
@click.option(
    "--recovery-delay",
    type=click.IntRange(1, 90 * 24 * 3600),
    default=48 * 3600,
    show_default=True,
    help="Seconds a registrar's key recovery waits, so the institution can cancel it (fixed at deploy).",
)
@click.option(
    "--dispute-window",
    type=click.IntRange(1, 90 * 24 * 3600),
    default=48 * 3600,
    show_default=True,
    help="Seconds an anchored settlement root can still be superseded before it is final (fixed at deploy).",
)
@click.pass_context
def deploy(
    ctx: click.Context, new_ledger: bool, evm_version: str | None, recovery_delay: int, dispute_window: int
) -> None:
    """Compile and deploy the ledger; writes deployments/<chain-id>.json. The operator gets every role.

    If this workspace already has a live ledger on the node's chain (after `make demo`, say),
    `deploy` keeps it and says so: use --new for a second ledger."""
    from medmeter.app.keep_deployment import current_deployment, keep_aside, remember
    from medmeter.chain.deployment import deploy as deploy_ledger
    from medmeter.chain.deployment import load_deployment
    from medmeter.chain.rpc import Transactor
    from medmeter.cli.context import note
    from medmeter.errors import DeploymentError

    session = session_of(ctx)
    chain_id = session.w3.eth.chain_id
    if not new_ledger and session.deployment_file is None and current_deployment(session.workspace, chain_id):
        try:
            live = load_deployment(session.workspace, session.w3)
        except DeploymentError:
            live = None  # the chain was reset: the file names nothing, deploy a fresh ledger
        if live is not None:
            click.echo(
                f"MeteringLedger already deployed at {live.address} (chain {chain_id}, block {live.block}); kept it. "
                "Pass --new to deploy another one."
            )
            return
    operator = session.operator()
    previous = remember(session.workspace, chain_id)
    note("compiling (cached after the first time) and deploying the ledger; this can take about 20 s...")
    deployment = deploy_ledger(
        session.workspace,
        session.w3,
        Transactor(session.w3, operator),
        evm_version=evm_version,
        recovery_delay=recovery_delay,
        dispute_window=dispute_window,
    )
    click.echo(f"MeteringLedger at {deployment.address} (chain {deployment.chain_id}, block {deployment.block})")
    if (kept := keep_aside(previous)) is not None:
        click.echo(f"the previous deployment file is kept as {kept} (use it with --deployment)")
