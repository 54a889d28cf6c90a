"""An example for every command's `--help`, kept in one table so that they stay consistent with
the README's walk-through (and so that command modules owned by others need no edit to get one).

`add_examples` appends an "Example" paragraph (click's `\\b` keeps its lines as written) to any
command whose own help does not already carry one.
"""

from __future__ import annotations

import inspect

import click

EXAMPLES: dict[str, tuple[str, ...]] = {
    "toolchain": ("medmeter toolchain install",),
    "toolchain install": ("medmeter toolchain install", "medmeter toolchain install --dir /tmp/solc-bin"),
    "compile": ("medmeter compile", "medmeter compile --force"),
    "devnet": ("medmeter devnet up", "medmeter devnet status", "medmeter devnet down"),
    "devnet up": ("medmeter devnet up", "medmeter devnet up --port 8700"),
    "devnet down": ("medmeter devnet down",),
    "devnet status": ("medmeter devnet status",),
    "wallet": ("medmeter wallet new operator", "medmeter wallet list"),
    "wallet new": ("medmeter wallet new clinic-a", "MEDMETER_KEYSTORE_PASSWORD=... medmeter wallet new operator"),
    "wallet list": ("medmeter wallet list",),
    "deploy": (
        "medmeter deploy",
        "medmeter deploy --new    # another ledger; the old file is kept aside",
        "medmeter deploy --new --roles roles.json    # each role the file names to its own address",
    ),
    "institution": ("medmeter institution list",),
    "institution register": ("medmeter institution register consent-a.json --credit-line 2000",),
    "consent": ('medmeter consent --wallet clinic-a --code PCI-0101 --name "Harbour Street Clinic" -o consent-a.json',),
    "rotate-key": ("medmeter rotate-key --wallet clinic-a --new-wallet clinic-a-2026 -o rotation-a.json",),
    "cancel": (
        "medmeter cancel --wallet clinic-a --nonce 7",
        "medmeter cancel --wallet clinic-a --range 10 20 -o c.json",
    ),
    "dispute": (
        'medmeter dispute --wallet clinic-a --period 1 --reason "the statement is wrong"',
        'medmeter dispute --wallet clinic-a --period 1 --tx 0x5d... --log-index 3 --reason "never fetched"',
    ),
    "reverse": (
        'medmeter reverse --wallet clinic-a --nonce 7 --reason "fetched twice by mistake" -o reversal-a.json',
        'medmeter reverse --wallet clinic-a --tx 0x5d... --log-index 3 --reason "..." -o reversal-a.json',
    ),
    "institution record-reversal": ("medmeter institution record-reversal reversal-a.json",),
    "audit": ("medmeter audit --institution PCI-0101 --receipts outbox.jsonl",),
    "institution submit-cancellation": ("medmeter institution submit-cancellation c.json",),
    "institution recover": ("medmeter institution recover start PCI-0101 --new-signer 0x...",),
    "institution recover start": ("medmeter institution recover start PCI-0101 --new-signer 0x...",),
    "institution recover complete": ("medmeter institution recover complete PCI-0101",),
    "institution recover cancel": ("medmeter institution recover cancel --wallet clinic-a",),
    "institution list": ("medmeter institution list",),
    "institution suspend": ("medmeter institution suspend PCI-0101",),
    "institution reinstate": ("medmeter institution reinstate PCI-0101",),
    "institution rotate": ("medmeter institution rotate rotation-a.json",),
    "institution credit-line": ("medmeter institution credit-line clinic-a 5000",),
    "tariff": ("medmeter tariff show",),
    "tariff show": ("medmeter tariff show",),
    "tariff set": (
        "medmeter tariff set laboratory --sync 1 --fetch 2",
        "medmeter tariff set laboratory --sync 2 --fetch 3 --next-period    # shown by `tariff show` until it applies",
    ),
    "tariff fee": (
        "medmeter tariff fee 500    # 5 % of each exchange",
        "medmeter tariff fee 400 --next-period",
    ),
    "tariff default": ("medmeter tariff default",),
    "roles list": ("medmeter roles list",),
    "roles grant": ("medmeter roles grant relayer 0x70997970C51812dc3A010C7d01b50e0d17dc79C8",),
    "roles revoke": ("medmeter roles revoke relayer 0x70997970C51812dc3A010C7d01b50e0d17dc79C8",),
    "unpause": ("medmeter unpause",),
    "period": ("medmeter period close", "medmeter period list"),
    "period close": ("medmeter period close",),
    "period show": ("medmeter period show 1",),
    "period list": ("medmeter period list",),
    "balances": ("medmeter balances", "medmeter balances --json --rpc-url http://127.0.0.1:8600"),
    "export": ("medmeter export", "medmeter export --out /tmp/ledger-export --confirmations 2"),
    "report": ("medmeter report --period 1", "medmeter report --period last", "medmeter report --all --no-charts"),
    "anchor": ("medmeter anchor --period last",),
    "statement": (
        "medmeter statement --institution PCI-0101 --period last -o statement-a.json",
        "medmeter statement --institution clinic-a --period 1",
    ),
    "verify-statement": (
        "medmeter verify-statement statement-a.json",
        "medmeter verify-statement statement-a.json --ledger 0x5FbDB2315678afecb367f032d93F642f64180aa3",
    ),
    "audit-events": (
        "medmeter audit-events --period last",
        "medmeter audit-events --period 1 --ndjson -o audit.ndjson",
    ),
    "demo": ("medmeter demo", "medmeter demo --count 200 --seed 11"),
    "serve": ("medmeter serve --detach", "medmeter --rpc-url http://127.0.0.1:8600 serve --port 8700"),
    "serve stop": ("medmeter serve stop",),
    "serve status": ("medmeter serve status",),
    "submit": ("medmeter submit --gateway http://127.0.0.1:8700 outbox.jsonl",),
    "status": ("medmeter status --gateway http://127.0.0.1:8700 0x<interaction id>",),
}


def _path_name(path: tuple[str, ...]) -> str:
    return " ".join(path)


def add_examples(command: click.Command, path: tuple[str, ...]) -> None:
    """Give `command` (and its subcommands) the example paragraph from EXAMPLES, unless it has one."""
    if isinstance(command, click.Group):
        for name, sub in command.commands.items():
            add_examples(sub, (*path, name))
    lines = EXAMPLES.get(_path_name(path))
    # Dedent first: click dedents the whole text at display time, and the added lines have their own indent.
    help_text = inspect.cleandoc(command.help or "")
    if lines is None or "Example" in help_text:
        return
    heading = "Example:" if len(lines) == 1 else "Examples:"
    command.help = help_text.rstrip() + "\n\n\b\n" + heading + "\n" + "\n".join(f"  {line}" for line in lines)
