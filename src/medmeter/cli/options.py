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

# `--period last` stands for the newest closed period: the walk-through works whether or not the
# demo closed period 1 first. The sentinel is resolved against the ledger by the command.
LAST_PERIOD = 0


class PeriodType(click.ParamType):
    name = "P"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int):
            return value
        text = str(value).strip().lower()
        if text in {"last", "latest"}:
            return LAST_PERIOD
        if text.isdigit() and len(text) <= 20 and int(text) >= 1:
            return int(text)
        self.fail(f"{value!r} is not a period: give its number (1, 2, ...) or `last`.", param, ctx)


PERIOD = PeriodType()

RPC_URL_HELP = "JSON-RPC endpoint of an external node (Anvil, Ganache, Hardhat, Besu) [env MEDMETER_RPC_URL]."
OPERATOR_HELP = "Keystore name of the platform operator (default: operator)."
DEPLOYMENT_HELP = "Deployment file to use instead of deployments/<chain-id>.json."
ALLOW_EMPTY_PASSWORD_HELP = (
    "Accept an empty keystore password (refused otherwise: it encrypts the key with nothing) "
    "[env MEDMETER_ALLOW_EMPTY_PASSWORD=1]."
)


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
    # A flag, so it cannot share the loop: an absent flag (False) must not overwrite one given before the command.
    return click.option(
        "--allow-empty-password",
        is_flag=True,
        default=None,
        help=ALLOW_EMPTY_PASSWORD_HELP,
        expose_value=False,
        is_eager=True,
        callback=_remember_flag("allow_empty_password"),
    )(command)


def _remember_flag(name: str) -> Callable[[click.Context, click.Parameter, Any], None]:
    def callback(ctx: click.Context, _param: click.Parameter, value: Any) -> None:
        if value:
            ctx.find_root().ensure_object(dict).setdefault("options", {})[name] = True

    return callback


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
