"""The `medmeter` root group: global options, the command groups, and `main()`.

Leaf modules define their commands without importing this module; it attaches them here.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from medmeter.cli import demo, devnet, institution, period, reports, roles, setup, tariff, traffic, wallet
from medmeter.cli.options import DEPLOYMENT_HELP, OPERATOR_HELP, RPC_URL_HELP, global_options
from medmeter.errors import MedmeterError


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--rpc-url", envvar="MEDMETER_RPC_URL", help=RPC_URL_HELP)
@click.option("--operator", help=OPERATOR_HELP)
@click.option("--deployment", type=click.Path(dir_okay=False, path_type=Path), help=DEPLOYMENT_HELP)
@click.version_option(package_name="medmeter")
@click.pass_context
def cli(ctx: click.Context, rpc_url: str | None, operator: str | None, deployment: Path | None) -> None:
    """Meter and settle health-information exchange on an Ethereum ledger.

    Institutions sign each interaction (sync, fetch, exchange) with their own key; the
    platform relays them in batches; the contract prices them from its tariff. Only hashes,
    categories and record counts reach the chain.

    Keystore passwords come from MEDMETER_KEYSTORE_PASSWORD or a prompt.
    """
    given = {"rpc_url": rpc_url, "operator": operator, "deployment": deployment}
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
    demo.demo,
)


def _with_global_options(command: click.Command) -> None:
    """Let every command take the global options after its name too (`medmeter balances --rpc-url ...`)."""
    if isinstance(command, click.Group):
        for sub in command.commands.values():
            _with_global_options(sub)
    global_options(command)


for _command in COMMANDS:
    _with_global_options(_command)
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
    except Exception as exc:
        from medmeter.chain.rpc import rpc_failure

        error = rpc_failure(exc)
        if error is None:
            raise
        click.echo(f"error: {error}", err=True)
        sys.exit(1)
    if isinstance(exit_code, int):
        sys.exit(exit_code)
