"""The `medmeter` root group: global options, the command groups, and `main()`.

Leaf modules define their commands without importing this module; it attaches them here.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from medmeter.cli import (
    clinic,
    demo,
    devnet,
    institution,
    period,
    reports,
    roles,
    service,
    setup,
    tariff,
    traffic,
    wallet,
)
from medmeter.cli.examples import add_examples
from medmeter.cli.options import (
    ALLOW_EMPTY_PASSWORD_HELP,
    DEPLOYMENT_HELP,
    OPERATOR_HELP,
    RPC_URL_HELP,
    global_options,
)
from medmeter.errors import MedmeterError


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--rpc-url", envvar="MEDMETER_RPC_URL", help=RPC_URL_HELP)
@click.option("--operator", help=OPERATOR_HELP)
@click.option("--deployment", type=click.Path(dir_okay=False, path_type=Path), help=DEPLOYMENT_HELP)
@click.option("--allow-empty-password", is_flag=True, default=None, help=ALLOW_EMPTY_PASSWORD_HELP)
@click.version_option(package_name="medmeter")
@click.pass_context
def cli(
    ctx: click.Context,
    rpc_url: str | None,
    operator: str | None,
    deployment: Path | None,
    allow_empty_password: bool | None,
) -> None:
    """Meter and settle health-information exchange on an Ethereum ledger.

    Institutions sign each interaction (sync, fetch, exchange) with their own key; the
    platform relays them in batches; the contract prices them from its tariff. Only hashes,
    categories and record counts reach the chain. The global options may also be given
    after the command (`medmeter balances --rpc-url URL`).

    \b
    Environment:
      MEDMETER_RPC_URL            JSON-RPC endpoint (as --rpc-url); default: the managed devnet
      MEDMETER_HOME               project folder (default: the nearest folder up from here
                                  holding contracts/MeteringLedger.sol)
      MEDMETER_RPC_TIMEOUT        seconds one JSON-RPC request may take (default 30; 5 retries)
      MEDMETER_KEYSTORE_PASSWORD  keystore password (default: a prompt; `make demo` sets a
                                  demo-only one)
      MEDMETER_ALLOW_EMPTY_PASSWORD=1  accept an empty keystore password
      MEDMETER_SCRYPT_N           scrypt work factor of new keystores, a power of two
                                  (default 262144)
      MEDMETER_EVM_VERSION        EVM version to compile the ledger for

    \b
    Example (after `make demo`; the README's walk-through has the whole path):
      medmeter devnet status
      medmeter balances
      medmeter sign samples/bundle.json --wallet clinic-riverside --kind sync -o outbox.jsonl
    """
    given = {
        "rpc_url": rpc_url,
        "operator": operator,
        "deployment": deployment,
        "allow_empty_password": allow_empty_password or None,
    }
    options = ctx.ensure_object(dict).setdefault("options", {})
    for name, value in given.items():
        if value is not None:
            options.setdefault(name, value)


COMMANDS: tuple[click.Command, ...] = (
    setup.toolchain,
    setup.compile_cmd,
    devnet.devnet,
    wallet.wallet,
    setup.deploy,
    institution.institution,
    tariff.tariff,
    roles.roles,
    roles.pause,
    roles.unpause,
    clinic.consent,
    clinic.rotate_key,
    clinic.cancel,
    clinic.dispute,
    clinic.reverse,
    clinic.audit,
    traffic.sign,
    traffic.relay,
    traffic.simulate,
    period.period,
    period.balances,
    reports.export_cmd,
    reports.report_cmd,
    reports.anchor_cmd,
    reports.statement_cmd,
    reports.verify_statement_cmd,
    reports.audit_events_cmd,
    demo.demo,
    service.serve,
    service.submit,
    service.status,
)


def _with_global_options(command: click.Command) -> None:
    """Let every command take the global options after its name too (`medmeter balances --rpc-url ...`)."""
    if isinstance(command, click.Group):
        for sub in command.commands.values():
            _with_global_options(sub)
    global_options(command)


for _command in COMMANDS:
    _with_global_options(_command)
    add_examples(_command, (_command.name or "",))
    cli.add_command(_command)


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
    except KeyboardInterrupt:
        click.echo("error: interrupted: files being written are left as they were.", err=True)
        sys.exit(130)
    except Exception as exc:
        click.echo(f"error: {_last_resort(exc)}", err=True)
        sys.exit(1)
    if isinstance(exit_code, int):
        sys.exit(exit_code)


def _last_resort(exc: Exception) -> str:
    """One sentence for what no command turned into a MedmeterError: a user never sees a traceback.

    Set MEDMETER_DEBUG=1 to re-raise instead (for a bug report)."""
    import os

    if os.environ.get("MEDMETER_DEBUG"):
        raise exc
    from medmeter.chain.rpc import rpc_failure

    if (error := rpc_failure(exc)) is not None:
        return str(error)
    if isinstance(exc, OSError):
        where = f"{exc.filename}: " if exc.filename else ""
        what = exc.strerror or type(exc).__name__
        return (
            f"{where}{what}: check that the path is right, that its folder exists or can be created, and that you "
            "may write there."
        )
    if isinstance(exc, RecursionError):
        return "an input is nested too deeply to be read: check the files you passed."
    if isinstance(exc, ValueError) and "digits" in str(exc):
        return f"an input holds an integer too long to read ({str(exc).split(';')[0]}): check the files you passed."
    return (
        f"unexpected {type(exc).__name__}: {exc}; this is a medmeter bug: run again with MEDMETER_DEBUG=1 and "
        "report the traceback."
    )
