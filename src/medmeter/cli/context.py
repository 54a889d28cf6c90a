"""What every command shares: the session (built on first use) and progress display."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    from medmeter.app.session import Session


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
            prompt=lambda text: click.prompt(text, hide_input=True, err=True),
        )
    return obj["session"]


@contextmanager
def progress_bar(total: int, label: str) -> Iterator[Callable[[int], None]]:
    from tqdm import tqdm

    with tqdm(total=total, desc=label, unit="it", file=sys.stderr, disable=total < 50, dynamic_ncols=True) as bar:
        yield bar.update
