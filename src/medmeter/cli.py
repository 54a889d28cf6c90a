"""The `medmeter` command line."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click

from medmeter.errors import MedmeterError

EXIT_REJECTED = 3
# The contract's MAX_BATCH_SIZE: the most interactions one transaction may carry.
MAX_BATCH_SIZE = 180


def _session(ctx: click.Context):  # -> Session
    """Built on first use, so `--help` and bad options need no project and no web3 import."""
    obj = ctx.ensure_object(dict)
    if "session" not in obj:
        from medmeter.session import Session
        from medmeter.workspace import Workspace

        options = obj.get("options", {})
        obj["session"] = Session(
            Workspace.locate(),
            rpc_url_option=options.get("rpc_url"),
            operator_name=options.get("operator", "operator"),
            deployment_file=options.get("deployment"),
            prompt=lambda text: click.prompt(text, hide_input=True, err=True),
        )
    return obj["session"]


@contextmanager
def _progress(total: int, label: str) -> Iterator[Callable[[int], None]]:
    from tqdm import tqdm

    with tqdm(total=total, desc=label, unit="it", file=sys.stderr, disable=total < 50, dynamic_ncols=True) as bar:
        yield bar.update


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option(
    "--rpc-url",
    envvar="MEDMETER_RPC_URL",
    help="JSON-RPC endpoint of an external node (Anvil, Ganache, Geth, Besu). Default: the managed devnet.",
)
@click.option("--operator", default="operator", show_default=True, help="Keystore name of the platform operator.")
@click.option(
    "--deployment",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Deployment file to use instead of deployments/<chain-id>.json.",
)
@click.version_option(package_name="medmeter")
@click.pass_context
def cli(ctx: click.Context, rpc_url: str | None, operator: str, deployment: Path | None) -> None:
    """Meter and settle health-information exchange on an Ethereum ledger.

    Institutions sign each interaction (sync, fetch, exchange) with their own key; the
    platform relays them in batches; the contract prices them from its tariff. Only hashes,
    categories and record counts reach the chain.

    Keystore passwords come from MEDMETER_KEYSTORE_PASSWORD or a prompt.
    """
    ctx.ensure_object(dict)
    ctx.obj["options"] = {"rpc_url": rpc_url, "operator": operator, "deployment": deployment}


# ---------------------------------------------------------------------------------- toolchain


@cli.group()
def toolchain() -> None:
    """The project's own compiler (solcjs) and node (anvil) from node_modules."""


@toolchain.command("install")
@click.option(
    "--dir", "target", type=click.Path(file_okay=False, path_type=Path), help="Default: $SOLCX_BINARY_PATH or ~/.solcx."
)
@click.pass_context
def toolchain_install(ctx: click.Context, target: Path | None) -> None:
    """Install solc-v<version> for py-solc-x and `brownie compile` (no download: it runs solcjs)."""
    from medmeter.toolchain import install_solcx_shim

    shim = install_solcx_shim(_session(ctx).workspace, target)
    click.echo(f"installed {shim}")


@cli.command("compile")
@click.option("--force", is_flag=True, help="Ignore the artifact cache.")
@click.pass_context
def compile_cmd(ctx: click.Context, force: bool) -> None:
    """Compile contracts/MeteringLedger.sol with solcjs (cached by source hash)."""
    from medmeter.compiler import artifact_path, compile_ledger

    workspace = _session(ctx).workspace
    artifact = compile_ledger(workspace, use_cache=not force)
    click.echo(
        f"{artifact.contract_name}: {len(artifact.deployed_bytecode) // 2 - 1} bytes -> {artifact_path(workspace)}"
    )


# ---------------------------------------------------------------------------------- devnet


@cli.group()
def devnet() -> None:
    """The managed local devnet: anvil, with its state kept in .medmeter/devnet/."""


@devnet.command("up")
@click.option("--port", type=int, help="Port to listen on (default: 8600 if free, else any free port).")
@click.pass_context
def devnet_up(ctx: click.Context, port: int | None) -> None:
    """Start the devnet in the background (or reuse the running one); prints the RPC URL last."""
    from medmeter import devnet as devnet_mod

    info, started = devnet_mod.up(
        _session(ctx).workspace, port, warn=lambda message: click.echo(f"warning: {message}", err=True)
    )
    click.echo(f"{'started' if started else 'reusing'} anvil (pid {info.pid}), state in {info.state_file}")
    click.echo(info.rpc_url)


@devnet.command("down")
@click.pass_context
def devnet_down(ctx: click.Context) -> None:
    """Stop the devnet; its state is written to disk and restored by the next `up`."""
    from medmeter import devnet as devnet_mod

    info = devnet_mod.down(_session(ctx).workspace)
    click.echo(
        f"stopped anvil (pid {info.pid}); state kept in {info.state_file}" if info else "the devnet was not running"
    )


@devnet.command("status")
@click.pass_context
def devnet_status(ctx: click.Context) -> None:
    """Say whether the devnet runs, where, and at which block. Exit 1 if it does not run."""
    from medmeter import devnet as devnet_mod
    from medmeter.chain import connect

    info = devnet_mod.is_running(_session(ctx).workspace)
    if info is None:
        click.echo("the devnet is not running: start it with `medmeter devnet up`")
        ctx.exit(1)
    w3 = connect(info.rpc_url)
    click.echo(f"running: pid {info.pid}, chain {w3.eth.chain_id}, block {w3.eth.block_number}")
    click.echo(info.rpc_url)


# ---------------------------------------------------------------------------------- wallets


@cli.group()
def wallet() -> None:
    """Encrypted keystores for the operator and the institutions."""


@wallet.command("new")
@click.argument("name")
@click.pass_context
def wallet_new(ctx: click.Context, name: str) -> None:
    """Create keystore NAME with a fresh key (password from MEDMETER_KEYSTORE_PASSWORD or a prompt)."""
    address = _session(ctx).keystores.create(name)
    click.echo(f"{name}: {address}")


@wallet.command("list")
@click.pass_context
def wallet_list(ctx: click.Context) -> None:
    """List keystores and their addresses."""
    keystores = _session(ctx).keystores
    for name in keystores.names():
        click.echo(f"{name:<24} {keystores.address(name)}")


# ---------------------------------------------------------------------------------- deploy


@cli.command()
@click.pass_context
def deploy(ctx: click.Context) -> None:
    """Compile and deploy the ledger; writes deployments/<chain-id>.json. The operator gets every role."""
    from medmeter.chain import Transactor
    from medmeter.deployment import deploy as deploy_ledger

    session = _session(ctx)
    operator = session.operator()
    deployment = deploy_ledger(session.workspace, session.w3, Transactor(session.w3, operator))
    click.echo(f"MeteringLedger at {deployment.address} (chain {deployment.chain_id}, block {deployment.block})")


# ---------------------------------------------------------------------------------- institutions


@cli.group()
def institution() -> None:
    """Register, list, suspend, reinstate institutions; rotate keys; set credit lines."""


@institution.command("register")
@click.argument("wallet")
@click.option("--code", required=True, help="The institution's official code (at most 32 bytes).")
@click.option("--name", "display_name", required=True, help="Display name (an organisation, never a person).")
@click.option(
    "--credit-line", type=click.IntRange(0, 2**64 - 1), default=0, show_default=True, help="Units it may owe."
)
@click.pass_context
def institution_register(ctx: click.Context, wallet: str, code: str, display_name: str, credit_line: int) -> None:
    """Register the institution whose keystore is WALLET (created if missing) or whose address is WALLET."""
    session = _session(ctx)
    from eth_utils import is_address

    if not is_address(wallet) and not session.keystores.exists(wallet):
        session.keystores.create(wallet)
    address = session.resolve_address(wallet)
    session.ledger().register(address, code, display_name, credit_line)
    click.echo(f"registered {display_name} ({code}) at {address}")


@institution.command("list")
@click.pass_context
def institution_list(ctx: click.Context) -> None:
    """List registered institutions."""
    for info in _session(ctx).ledger(as_operator=False).institutions():
        click.echo(f"{info.code:<10} {info.address} {info.status:<9} line {info.credit_line:>8}  {info.name}")


def _status_command(name: str, help_text: str) -> None:
    @institution.command(name, help=help_text)
    @click.argument("who")
    @click.pass_context
    def command(ctx: click.Context, who: str) -> None:
        session = _session(ctx)
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
    session = _session(ctx)
    from eth_utils import is_address

    institution_address = session.resolve_address(who)
    if not is_address(new_wallet) and not session.keystores.exists(new_wallet):
        session.keystores.create(new_wallet)
    signer = session.resolve_address(new_wallet)
    session.ledger().rotate_signer(institution_address, signer)
    click.echo(f"{institution_address} now signs with {signer}")


@institution.command("credit-line")
@click.argument("who")
@click.argument("units", type=click.IntRange(0, 2**64 - 1))
@click.pass_context
def institution_credit_line(ctx: click.Context, who: str, units: int) -> None:
    """Set the credit line of WHO to UNITS."""
    session = _session(ctx)
    address = session.resolve_address(who)
    session.ledger().set_credit_line(address, units)
    click.echo(f"credit line of {address} is now {units}")


# ---------------------------------------------------------------------------------- tariff


@cli.group()
def tariff() -> None:
    """The on-chain tariff: units per record per category, and the platform fee."""


@tariff.command("show")
@click.pass_context
def tariff_show(ctx: click.Context) -> None:
    """Print the current tariff."""
    from medmeter.operations import tariff_table

    click.echo(tariff_table(_session(ctx).ledger(as_operator=False)))


@tariff.command("set")
@click.argument("category")
@click.option(
    "--sync", "sync_units", type=click.IntRange(0, 2**64 - 1), required=True, help="Units per record on sync."
)
@click.option(
    "--fetch",
    "fetch_units",
    type=click.IntRange(0, 2**64 - 1),
    required=True,
    help="Units per record on fetch/exchange.",
)
@click.pass_context
def tariff_set(ctx: click.Context, category: str, sync_units: int, fetch_units: int) -> None:
    """Set the rates of CATEGORY (a name such as laboratory, or an id)."""
    from medmeter.categories import category_name, parse_category

    category_id = parse_category(category)
    _session(ctx).ledger().set_rate(category_id, sync_units, fetch_units, category_name(category_id))
    click.echo(f"{category_name(category_id)}: sync {sync_units}, fetch {fetch_units} units per record")


@tariff.command("fee")
@click.argument("bps", type=click.IntRange(0, 10_000))
@click.pass_context
def tariff_fee(ctx: click.Context, bps: int) -> None:
    """Set the platform fee on exchanges, in basis points (500 = 5 %)."""
    _session(ctx).ledger().set_platform_fee(bps)
    click.echo(f"platform fee is now {bps} bps")


@tariff.command("default")
@click.pass_context
def tariff_default(ctx: click.Context) -> None:
    """Set every category and the fee to medmeter's default tariff."""
    from medmeter.operations import apply_default_tariff, tariff_table

    ledger = _session(ctx).ledger()
    apply_default_tariff(ledger)
    click.echo(tariff_table(ledger))


# ---------------------------------------------------------------------------------- sign / relay


@cli.command()
@click.argument("payload", type=click.Path(path_type=Path))
@click.option("--wallet", required=True, help="The signing institution's keystore name.")
@click.option("--kind", type=click.Choice(["sync", "fetch", "exchange"]), required=True)
@click.option("--counterparty", help="Exchange only: the providing institution (keystore name or address).")
@click.option("--category", help="Category name or id (inferred from a FHIR bundle if omitted).")
@click.option("--any-file", is_flag=True, help="PAYLOAD is not a FHIR bundle: give --category and --records.")
@click.option("--records", type=int, help="Record count, with --any-file.")
@click.option("--nonce", type=click.IntRange(0, 2**256 - 1), help="Default: the next one from the nonce book.")
@click.option(
    "--valid-for",
    type=click.IntRange(60),
    default=7 * 24 * 3600,
    show_default=True,
    help="Seconds until the signature expires.",
)
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="JSON-lines file to append to.",
)
@click.pass_context
def sign(
    ctx: click.Context,
    payload: Path,
    wallet: str,
    kind: str,
    counterparty: str | None,
    category: str | None,
    any_file: bool,
    records: int | None,
    nonce: int | None,
    valid_for: int,
    output: Path,
) -> None:
    """Sign one interaction about PAYLOAD (institution side). Only its hash, category and record
    count are signed; the payload never leaves this machine."""
    from medmeter.errors import InputError
    from medmeter.health_info import summarize_path
    from medmeter.interaction import ZERO_ADDRESS, Interaction, Kind, iter_json_lines, sign_interaction

    session = _session(ctx)
    summary = summarize_path(payload, category, records, any_file)
    kind_value = Kind.parse(kind)
    if (kind_value is Kind.EXCHANGE) != (counterparty is not None):
        raise InputError("--counterparty is required for an exchange and not allowed otherwise.")
    account = session.keystores.unlock(wallet)
    ledger = session.ledger(as_operator=False)
    institution_address = ledger.call(ledger.contract.functions.institutionBySigner(account.address))
    if int(institution_address, 16) == 0:
        raise InputError(f"wallet {wallet} ({account.address}) is not the signer of any registered institution.")
    interaction = Interaction(
        kind=kind_value,
        institution=institution_address,
        counterparty=session.resolve_address(counterparty) if counterparty else ZERO_ADDRESS,
        category=summary.category,
        records=summary.records,
        data_hash=summary.data_hash,
        nonce=nonce if nonce is not None else session.nonce_book.reserve(institution_address),
        deadline=int(time.time()) + valid_for,
    )
    signed = sign_interaction(interaction, ledger.domain, account)
    output.parent.mkdir(parents=True, exist_ok=True)
    with output.open("a") as handle:
        handle.writelines(iter_json_lines([signed]))
    click.echo(
        f"signed {kind} of {summary.records} record(s), category {summary.category}, "
        f"nonce {interaction.nonce} -> {output}"
    )


@cli.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--batch-size", type=click.IntRange(1, MAX_BATCH_SIZE), default=100, show_default=True)
@click.option(
    "--rejected", type=click.Path(dir_okay=False, path_type=Path), help="Write refused items here (JSON lines)."
)
@click.pass_context
def relay(ctx: click.Context, files: tuple[Path, ...], batch_size: int, rejected: Path | None) -> None:
    """Record signed interactions from FILES in batches (platform side).

    Items already on chain are skipped (a rerun after a crash records nothing twice); an item
    the ledger refuses is reported with its reason and the rest are recorded. Exits 3 if any
    item was refused."""
    from medmeter.fileio import write_atomic
    from medmeter.interaction import iter_json_lines, read_signed
    from medmeter.relay import relay as relay_items

    items = [item for path in files for item in read_signed(path)]
    ledger = _session(ctx).ledger()
    started = time.perf_counter()
    with _progress(len(items), "relay") as progress:
        report = relay_items(ledger, items, batch_size=batch_size, progress=progress)
    elapsed = time.perf_counter() - started
    for rejection in report.rejected:
        click.echo(
            f"item {rejection.index} (nonce {rejection.item.interaction.nonce}) refused: {rejection.reason}", err=True
        )
    if rejected and report.rejected:
        write_atomic(rejected, "".join(iter_json_lines(r.item for r in report.rejected)))
    click.echo(
        f"recorded {len(report.recorded)}, already recorded {len(report.already_recorded)}, refused "
        f"{len(report.rejected)} in {len(report.transactions)} transaction(s), {elapsed:.1f} s; "
        f"{report.gas_per_interaction:,.0f} gas per interaction"
    )
    if report.rejected:
        saved = f" (saved to {rejected})" if rejected else ""
        others = len(items) - len(report.rejected)
        on_ledger = f"; the other {others} are on the ledger" if others else ""
        click.echo(
            f"error: {len(report.rejected)} of {len(items)} interaction(s) refused{saved}, for the reasons above"
            f"{on_ledger}. Fix or re-sign the refused ones and relay them again.",
            err=True,
        )
        ctx.exit(EXIT_REJECTED)


# ---------------------------------------------------------------------------------- periods, balances


@cli.group()
def period() -> None:
    """Settlement periods."""


@period.command("close")
@click.pass_context
def period_close(ctx: click.Context) -> None:
    """Close the open settlement period at the previous block."""
    ledger = _session(ctx).ledger()
    number, _ = ledger.current_period()
    ledger.close_period()
    start, end = ledger.period_range(number)
    click.echo(f"closed period {number}: blocks {start}..{end}")


@period.command("show")
@click.argument("number", type=click.IntRange(1))
@click.pass_context
def period_show(ctx: click.Context, number: int) -> None:
    """Print the block range of closed period NUMBER."""
    ledger = _session(ctx).ledger(as_operator=False)
    current, start = ledger.current_period()
    if number >= current:
        state = f"is still open (since block {start})" if number == current else "does not exist yet"
        raise MedmeterError(
            f"period {number} {state}; the open period is {current}: see `medmeter period list`, and close the "
            "open period with `medmeter period close`."
        )
    first, last = ledger.period_range(number)
    click.echo(f"period {number}: blocks {first}..{last} (closed)")


@period.command("list")
@click.pass_context
def period_list(ctx: click.Context) -> None:
    """List closed periods and the open one."""
    ledger = _session(ctx).ledger(as_operator=False)
    current, start = ledger.current_period()
    for number in range(1, current):
        first, last = ledger.period_range(number)
        click.echo(f"period {number}: blocks {first}..{last} (closed)")
    click.echo(f"period {current}: from block {start} (open)")


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def balances(ctx: click.Context, as_json: bool) -> None:
    """Per institution: balance and debt on chain, credited and debited from events, counts per kind."""
    from medmeter.operations import balances as balance_rows
    from medmeter.operations import format_balances

    rows = balance_rows(_session(ctx).ledger(as_operator=False))
    if as_json:
        click.echo(json.dumps([_row_json(r) for r in rows], indent=2))
    else:
        click.echo(format_balances(rows))
    if not all(r.reconciles for r in rows):
        raise MedmeterError("events and contract state disagree for the rows marked NO: report this ledger.")


def _row_json(row: Any) -> dict[str, Any]:
    return {
        "institution": row.institution.address,
        "code": row.institution.code,
        "name": row.institution.name,
        "status": row.institution.status,
        "balance": row.position.balance,
        "debt": row.position.debt,
        "credited": row.tally.credited,
        "debited": row.tally.debited,
        "counts": {k.name.lower(): v for k, v in row.tally.counts.items()},
    }


# ---------------------------------------------------------------------------------- simulate, demo


@cli.command()
@click.option("--count", type=click.IntRange(1), default=1000, show_default=True)
@click.option("--seed", type=int, default=7, show_default=True, help="Same seed, same traffic.")
@click.option("--wallet", "wallets", multiple=True, help="Institution keystores taking part (default: all registered).")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), required=True)
@click.pass_context
def simulate(ctx: click.Context, count: int, seed: int, wallets: tuple[str, ...], output: Path) -> None:
    """Write COUNT signed synthetic interactions, each from a generated FHIR bundle, to OUTPUT."""
    from medmeter.fileio import write_atomic
    from medmeter.interaction import iter_json_lines
    from medmeter.operations import simulate_traffic

    session = _session(ctx)
    names = list(wallets) or _registered_wallets(session)
    with _progress(count, "sign") as progress:
        items = simulate_traffic(session, names, count, seed, progress)
    write_atomic(output, "".join(iter_json_lines(items)))
    click.echo(f"wrote {len(items)} signed interactions from {len(names)} institutions to {output}")


def _registered_wallets(session: Any) -> list[str]:
    registered = {i.address for i in session.ledger(as_operator=False).institutions() if i.status == "active"}
    names = [n for n in session.keystores.names() if session.keystores.address(n) in registered]
    if len(names) < 2:
        raise MedmeterError("simulation needs at least two registered institutions with keystores here.")
    return names


@cli.command()
@click.option("--count", type=click.IntRange(1), default=1000, show_default=True, help="Interactions to simulate.")
@click.option("--seed", type=int, default=7, show_default=True)
@click.option("--batch-size", type=click.IntRange(1, MAX_BATCH_SIZE), default=100, show_default=True)
@click.pass_context
def demo(ctx: click.Context, count: int, seed: int, batch_size: int) -> None:
    """The main job: devnet, deploy, institutions, tariff, signed traffic, relay, period close, tally."""
    from medmeter.demo import run_demo

    run_demo(_session(ctx), count=count, seed=seed, batch_size=batch_size, echo=click.echo, progress=_progress)


from medmeter import cli_reports  # noqa: E402,F401  (registers report commands)


def main() -> None:
    try:
        exit_code = cli(standalone_mode=False)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except MedmeterError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    except Exception as exc:
        from medmeter.chain import rpc_failure

        error = rpc_failure(exc)
        if error is None:
            raise
        click.echo(f"error: {error}", err=True)
        sys.exit(1)
    if isinstance(exit_code, int):
        sys.exit(exit_code)
