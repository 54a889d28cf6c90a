"""The main job, end to end, on the managed devnet (or --rpc-url)."""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

from medmeter.app.keep_deployment import keep_aside, remember
from medmeter.app.operations import (
    DEMO_INSTITUTIONS,
    DEMO_ROLE_WALLETS,
    apply_default_tariff,
    register_institutions,
    role_wallet_addresses,
    simulate_traffic,
    tariff_table,
    wait_for_next_block,
)
from medmeter.app.pipeline import balances, format_balances, write_period_reports
from medmeter.app.session import Session
from medmeter.app.through_service import refuse_running_service, relay_through_service, start_service, stop_service
from medmeter.chain.deployment import deploy, hand_over_roles
from medmeter.chain.rpc import Transactor
from medmeter.errors import MedmeterError
from medmeter.fileio import write_atomic
from medmeter.signing.interaction import Kind, iter_json_lines
from medmeter.toolchain import devnet

# The devnet demo's delays (seconds): short enough to watch a recovery or a root become final.
DEMO_DELAYS = {"recovery_delay": 300, "dispute_window": 120, "admin_transfer_delay": 60}

Progress = Callable[[int, str], AbstractContextManager[Callable[[int], None]]]


def run_demo(
    session: Session, *, count: int, seed: int, batch_size: int, echo: Callable[[str], Any], progress: Progress
) -> None:
    workspace = session.workspace
    if session.rpc_url_option is None:
        info, started = devnet.up(workspace)
        echo(f"[1/9] devnet {'started' if started else 'reused'} at {info.rpc_url}")
    else:
        echo(f"[1/9] using node {session.rpc_url}")

    refuse_running_service(session)
    if not session.keystores.exists(session.operator_name):
        session.keystores.create(session.operator_name)
    operator = session.operator()
    echo("      compiling (cached after the first run) and deploying the ledger, about 20 s...")
    previous = remember(workspace, session.w3.eth.chain_id)
    deployment = deploy(workspace, session.w3, Transactor(session.w3, operator), **DEMO_DELAYS)
    echo(f"[2/9] deployed MeteringLedger at {deployment.address} in block {deployment.block}")
    if (kept := keep_aside(previous)) is not None:
        echo(f"      (the previous deployment file is kept as {kept})")

    roles = role_wallet_addresses(session, DEMO_ROLE_WALLETS)
    hand_over_roles(session.w3, Transactor(session.w3, operator), deployment, roles)
    echo(
        "      roles on their own keys: "
        + ", ".join(f"{word} {address}" for word, address in roles.items())
        + f"; the operator {operator.address} keeps admin and pauser"
    )
    as_role = {word: session.ledger_as(wallet) for word, wallet in DEMO_ROLE_WALLETS.items() if word != "relayer"}

    wallets = [spec.wallet for spec in DEMO_INSTITUTIONS]
    register_addresses = register_institutions(session, DEMO_INSTITUTIONS, as_role["registrar"])
    echo(f"[3/9] registered {len(wallets)} institutions, each with its own encrypted keystore")

    ledger = session.ledger(as_operator=False)
    apply_default_tariff(as_role["tariff"])
    echo("[4/9] tariff set:\n" + tariff_table(ledger))

    started = time.perf_counter()
    with progress(count, "sign") as bar:
        items = simulate_traffic(session, wallets, count, seed, bar)
    sign_seconds = time.perf_counter() - started
    traffic_file = workspace.state_dir / "demo-interactions.jsonl"
    write_atomic(traffic_file, "".join(iter_json_lines(items)))
    by_kind = {k.word: sum(1 for i in items if i.interaction.kind is k) for k in Kind}
    echo(
        f"[5/9] signed {len(items)} interactions {by_kind} from synthetic FHIR bundles in {sign_seconds:.1f} s "
        f"-> {traffic_file}"
    )

    url = start_service(session, relayer_wallet=DEMO_ROLE_WALLETS["relayer"], batch_size=batch_size)
    try:
        addresses = dict(zip(register_addresses, wallets, strict=True))
        with progress(len(items), "record") as bar:
            relayed = relay_through_service(session, url, items, addresses, bar)
    finally:
        stop_service(workspace.state_dir)
    echo(
        f"[6/9] the institutions posted {len(items)} interactions to the platform service at {url} in "
        f"{relayed.requests} requests; it recorded {relayed.recorded} in {relayed.transactions} batches of up to "
        f"{batch_size}: {relayed.seconds:.1f} s, {relayed.recorded / relayed.seconds:,.0f} interactions/s, "
        f"{relayed.gas_per_interaction:,.0f} gas per interaction "
        "(service stopped; `medmeter serve --detach --operator relayer` runs it)"
    )

    wait_for_next_block(ledger)
    number, _ = ledger.current_period()
    as_role["settler"].close_period()
    first_block, last_block = ledger.period_range(number)
    echo(f"[7/9] closed period {number}: blocks {first_block}..{last_block}")

    _, rows = balances(session, ledger)
    echo("[8/9] settlement tally per institution (balance and debt from the contract, the rest from events):")
    echo(format_balances(rows))
    if not all(row.reconciles for row in rows):
        raise MedmeterError("events and contract state disagree: see the rows marked NO.")

    echo(f"[9/9] settlement reports for period {number}: export, CSVs, charts, anchored root, statements")
    write_period_reports(session, number, echo, settler=as_role["settler"])
    echo(
        f"\nthe ledger stays up: {session.rpc_url}  "
        f"(deployment: {workspace.deployments_dir / f'{deployment.chain_id}.json'})"
    )
