"""What every command shares: the session (built on first use) and progress display."""

from __future__ import annotations

import difflib
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from medmeter.app.session import Session
    from medmeter.chain.ledger import Ledger


def session_of(ctx: click.Context) -> Session:
    """Built on first use, so `--help` and bad options need no project and no web3 import."""
    root = ctx.find_root()
    obj = root.ensure_object(dict)
    if "session" not in obj:
        from medmeter.app.session import Session
        from medmeter.workspace import Workspace

        options = obj.get("options", {})
        obj["session"] = Session(
            Workspace.locate(),
            rpc_url_option=options.get("rpc_url"),
            operator_name=options.get("operator") or "operator",
            deployment_file=options.get("deployment"),
            prompt=lambda text: click.prompt(text, hide_input=True, err=True, default="", show_default=False),
            allow_empty_password=bool(options.get("allow_empty_password")),
        )
    return obj["session"]


def stderr_is_terminal() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


@contextmanager
def progress_bar(total: int, label: str) -> Iterator[Callable[[int], None]]:
    """A bar on a terminal; otherwise one plain line when the step starts and one when it ends,
    so that a log file never fills with carriage returns and stale ETAs."""
    if stderr_is_terminal():
        from tqdm import tqdm

        with tqdm(total=total, desc=label, unit="it", file=sys.stderr, disable=total < 50, dynamic_ncols=True) as bar:
            yield bar.update
        return
    done = 0

    def update(n: int) -> None:
        nonlocal done
        done += n

    started = time.perf_counter()
    click.echo(f"{label}: {total:,} item(s)...", err=True)
    yield update
    click.echo(f"{label}: {done:,} of {total:,} done in {time.perf_counter() - started:.1f} s", err=True)


def note(message: str) -> None:
    """Say what is about to happen before a step that prints nothing for a while (stderr, so stdout stays data)."""
    click.echo(message, err=True)


def resolve_institution(session: Session, ledger: Ledger, value: str) -> str:
    """An institution given as an address, a keystore name or its registered institution code."""
    from eth_utils import is_address, to_checksum_address

    from medmeter.chain.ledger import code_to_bytes32
    from medmeter.errors import InputError, WalletError

    if is_address(value):
        return to_checksum_address(value)
    try:
        is_keystore = session.keystores.exists(value)
    except WalletError:  # not a valid keystore name, e.g. an upper-case institution code
        is_keystore = False
    if is_keystore:
        return session.keystores.address(value)
    try:
        code: bytes | None = code_to_bytes32(value)
    except InputError:  # empty or longer than 32 bytes: cannot be a code
        code = None
    address: Any = ledger.call(ledger.contract.functions.institutionByCode(code)) if code is not None else "0x0"
    if int(address, 16) == 0:
        codes = [info.code for info in ledger.institutions()]
        close = difflib.get_close_matches(value, codes + session.keystores.names(), n=3, cutoff=0.6)
        hint = f"; did you mean {' or '.join(close)}?" if close else ""
        shown = ", ".join(codes[:12]) + (" …" if len(codes) > 12 else "")
        raise InputError(
            f"{value!r} is not an address, a keystore name or a registered institution code (codes: "
            f"{shown or 'none'}{hint}): see `medmeter institution list` and `medmeter wallet list`."
        )
    return to_checksum_address(address)
