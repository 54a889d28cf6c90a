"""Options declared once and shared by the commands that take them."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from medmeter.contract.facts import MAX_BATCH_SIZE, UINT64_MAX

__all__ = [
    "EXIT_REJECTED",
    "MAX_BATCH_SIZE",
    "UINT64",
    "batch_size_option",
    "confirmations_option",
    "global_options",
]

F = TypeVar("F", bound=Callable[..., Any])

# `relay` exits with this code when some items were refused and the rest recorded.
EXIT_REJECTED = 3

UINT64 = click.IntRange(0, UINT64_MAX)

RPC_URL_HELP = "JSON-RPC endpoint of an external node (Anvil, Ganache, Hardhat, Besu) [env MEDMETER_RPC_URL]."
OPERATOR_HELP = "Keystore name of the platform operator (default: operator)."
DEPLOYMENT_HELP = "Deployment file to use instead of deployments/<chain-id>.json."


def _remember(name: str) -> Callable[[click.Context, click.Parameter, Any], None]:
    """Store a global option given after the subcommand where the root's own value lives."""

    def callback(ctx: click.Context, _param: click.Parameter, value: Any) -> None:
        if value is not None:
            ctx.find_root().ensure_object(dict).setdefault("options", {})[name] = value

    return callback


GLOBAL_OPTIONS: tuple[tuple[str, str, Any, str], ...] = (
    ("--rpc-url", "rpc_url", None, RPC_URL_HELP),
    ("--operator", "operator", None, OPERATOR_HELP),
    ("--deployment", "deployment", click.Path(dir_okay=False, path_type=Path), DEPLOYMENT_HELP),
)


def global_options(command: F) -> F:
    """Accept --rpc-url, --operator and --deployment after the subcommand as well as before it.

    Applied to built commands (appending to `params`), so the options keep their declared order.
    """
    for flag, name, kind, help_text in GLOBAL_OPTIONS:
        command = click.option(
            flag, type=kind, help=help_text, expose_value=False, is_eager=True, callback=_remember(name)
        )(command)
    return command


def batch_size_option(command: F) -> F:
    return click.option(
        "--batch-size",
        type=click.IntRange(1, MAX_BATCH_SIZE),
        default=100,
        show_default=True,
        help=f"Interactions per transaction (the contract takes at most {MAX_BATCH_SIZE}).",
    )(command)


def confirmations_option(command: F) -> F:
    return click.option(
        "--confirmations",
        type=click.IntRange(0),
        default=0,
        show_default=True,
        help="Stay this many blocks behind the head, so that shallow reorgs never reach the export.",
    )(command)
