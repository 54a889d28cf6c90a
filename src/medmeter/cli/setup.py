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
@click.option(
    "--roles",
    "roles_file",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="A JSON object mapping operating roles (registrar, tariff, relayer, settler, pauser) to addresses or "
    "keystore names: each is granted to its address and revoked from the deployer. Roles it does not name stay "
    "with the deployer, which always keeps the admin role.",
)
@click.pass_context
def deploy(
    ctx: click.Context,
    new_ledger: bool,
    evm_version: str | None,
    recovery_delay: int,
    dispute_window: int,
    roles_file: Path | None,
) -> None:
    """Compile and deploy the ledger; writes deployments/<chain-id>.json.

    The deployer (--operator) gets the admin role (handed over only in two steps, after the
    admin transfer delay) and every operating role. With --roles FILE, each role the file names
    goes to its address instead and the deployer no longer holds it; the roles the file leaves out
    stay with the deployer, and the output says which. The file is checked before anything is
    deployed. Hand roles over later with `medmeter roles grant|revoke`.

    If this workspace already has a live ledger on the node's chain (after `make demo`, say),
    `deploy` keeps it and says so (with --roles, only if its roles already are as the file says):
    use --new for a second ledger.

    \b
    A roles file (JSON; keys are role names, the `_ROLE` suffix and case are ignored):
      {"registrar": "0x70997970C51812dc3A010C7d01b50e0d17dc79C8",
       "relayer":   "0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC",
       "settler":   "0x90F79bf6EB2c4f870365E785982E1f101E93b906"}"""
    from medmeter.app.keep_deployment import current_deployment, keep_aside, remember
    from medmeter.chain.deployment import deploy as deploy_ledger
    from medmeter.chain.deployment import hand_over_roles, load_deployment, read_roles_file, roles_differing
    from medmeter.chain.rpc import Transactor
    from medmeter.cli.context import note
    from medmeter.errors import DeploymentError, InputError

    session = session_of(ctx)
    roles = read_roles_file(roles_file, session.resolve_address) if roles_file is not None else None
    chain_id = session.w3.eth.chain_id
    if not new_ledger and session.deployment_file is None and current_deployment(session.workspace, chain_id):
        try:
            live = load_deployment(session.workspace, session.w3)
        except DeploymentError:
            live = None  # the chain was reset: the file names nothing, deploy a fresh ledger
        if live is not None:
            deployer = session.operator().address if roles is not None else ""
            if roles is not None and (differing := roles_differing(session.w3, live, roles, deployer)):
                raise InputError(
                    f"a ledger is already deployed at {live.address} (chain {chain_id}) and its {', '.join(differing)} "
                    "role is not held as the roles file says; --roles applies only to a new ledger: pass --new to "
                    "deploy another ledger with these roles, or hand roles on the live one with `medmeter roles "
                    "grant` and `medmeter roles revoke`."
                )
            as_file = f"; its roles already are as {roles_file.name} says" if roles_file is not None else ""
            click.echo(
                f"MeteringLedger already deployed at {live.address} (chain {chain_id}, block {live.block}); kept it"
                f"{as_file}. Pass --new to deploy another one."
            )
            return
    operator = session.operator()
    previous = remember(session.workspace, chain_id)
    note("compiling (cached after the first time) and deploying the ledger; this can take about 20 s...")
    transactor = Transactor(session.w3, operator)
    deployment = deploy_ledger(
        session.workspace,
        session.w3,
        transactor,
        evm_version=evm_version,
        recovery_delay=recovery_delay,
        dispute_window=dispute_window,
    )
    click.echo(f"MeteringLedger at {deployment.address} (chain {deployment.chain_id}, block {deployment.block})")
    if roles is not None:
        assert roles_file is not None
        for assignment in hand_over_roles(session.w3, transactor, deployment, roles):
            if assignment.address != operator.address:
                where = f"from {roles_file.name}; revoked from the deployer"
            elif assignment.from_file:
                where = f"the deployer, as {roles_file.name} says"
            else:
                where = f"kept by the deployer: {roles_file.name} does not name it"
            click.echo(f"  {assignment.word:<10} {assignment.address}  ({where})")
        click.echo(f"  {'admin':<10} {operator.address}  (the deployer; moves only in two steps)")
    if (kept := keep_aside(previous)) is not None:
        click.echo(f"the previous deployment file is kept as {kept} (use it with --deployment)")
