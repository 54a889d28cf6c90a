"""The demo's relay step through the platform service: start `medmeter serve` for the ledger, let
each institution post its own signed interactions over HTTP (its own client, its own local
outbox), wait until the service has recorded every one, and read back from the service which
transaction recorded each."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from medmeter.app.session import Session
from medmeter.client import Client
from medmeter.errors import MedmeterError, ServiceError
from medmeter.service import server
from medmeter.signing.interaction import SignedInteraction
from medmeter.signing.wallets import PASSWORD_ENV
from medmeter.toolchain.devnet import free_port

# The service's documented default port; another free one is taken when it is busy.
PORT_ATTEMPTS = 3
PREFERRED_SERVICE_PORT = 8700
# Seconds the demo waits for the outbox to move before it gives up and points at the service's log.
STALL_SECONDS = 60.0
POLL_SECONDS = 0.1


@dataclass(frozen=True)
class ServiceRelay:
    url: str
    requests: int
    recorded: int
    transactions: int
    gas_per_interaction: float
    seconds: float


def demo_outbox(session: Session) -> Path:
    """The demo service's outbox: one per ledger, so a new demo never relays an old ledger's items."""
    deployment = session.deployment
    return session.workspace.state_dir / "service" / f"outbox-{deployment.chain_id}-{deployment.address}.sqlite3"


def refuse_running_service(session: Session) -> None:
    """A service already running here serves the ledger the demo is about to replace, and may be the
    user's own: say so before anything is deployed, rather than stop it."""
    running = server.read_info(session.workspace.state_dir)
    if running is not None:
        raise ServiceError(
            f"a medmeter service runs in this workspace (pid {running['pid']}, {running['url']}) and the demo would "
            "deploy a new ledger under it: stop it with `medmeter serve stop` (its outbox keeps what it holds), "
            "then run the demo again."
        )


def start_service(session: Session, *, relayer_wallet: str, batch_size: int) -> str:
    """Start a detached `medmeter serve` on this session's node and ledger, relaying with keystore
    `relayer_wallet` (it holds the relayer role), with an outbox of its own for this ledger."""
    state_dir = session.workspace.state_dir
    outbox = demo_outbox(session)
    # The detached service cannot prompt: hand it the password this run already has.
    env = {**os.environ, PASSWORD_ENV: session.keystores.password(relayer_wallet)}
    preferred = PREFERRED_SERVICE_PORT
    for attempt in range(1, PORT_ATTEMPTS + 1):
        port = free_port(preferred)
        args = ["--rpc-url", session.rpc_url, "--operator", relayer_wallet]
        if session.deployment_file is not None:
            args += ["--deployment", str(session.deployment_file)]
        # Explicit, so a user's MEDMETER_SERVICE_* or medmeter.toml (another host, confirmations an
        # automining devnet never reaches) does not change the demo's service.
        args += ["serve", "--host", "127.0.0.1", "--port", str(port), "--outbox", str(outbox)]
        args += ["--batch-size", str(batch_size), "--confirmations", "0"]
        url = f"http://127.0.0.1:{port}"
        try:
            server.detach(args, state_dir, url, env=env, ledger=session.deployment.address)
            return url
        except ServiceError:
            # Another program took the port between the check and the bind (two demos side by side):
            # take another. Any other failure is the service's own and is said as it is.
            if attempt == PORT_ATTEMPTS or free_port(port) == port:
                raise
            preferred = 0
    raise AssertionError("unreachable")


def relay_through_service(
    session: Session,
    url: str,
    items: list[SignedInteraction],
    wallets: dict[str, str],
    progress: Callable[[int], None],
) -> ServiceRelay:
    """Each institution (address -> keystore name in `wallets`) posts its items in the order they
    were signed: consecutive runs of one institution go in one request, so a debit never reaches
    the platform before the credit it was simulated on."""
    started = time.perf_counter()
    # Per deployment: an item left undelivered by an earlier demo is signed for that ledger's domain.
    deployment = session.deployment
    clients_dir = session.workspace.state_dir / "clients" / f"{deployment.chain_id}-{deployment.address}"
    clients = {
        address: Client(url, clients_dir / wallet / "submit-outbox.jsonl") for address, wallet in wallets.items()
    }
    posted = 0
    start = 0
    while start < len(items):
        institution = items[start].interaction.institution
        end = start
        while end < len(items) and items[end].interaction.institution == institution:
            end += 1
        answers = clients[institution].submit(items[start:end])
        posted += 1
        refused = [a for a in answers if a["status"] in ("refused", "conflict")]
        if refused:
            first = refused[0]
            raise ServiceError(
                f"the service refused {len(refused)} simulated interactions, first {first['id']}: "
                f"{first.get('error')}: {first.get('reason')}"
            )
        start = end
    status_client = Client(url)
    _wait_until_recorded(session, status_client, len(items), progress)
    transactions: set[str] = set()
    recorded = 0
    for address in wallets:
        for entry in status_client.interactions(address, status="recorded"):
            transactions.add(entry["transaction"])
            recorded += 1
    gas = sum(int(session.w3.eth.get_transaction_receipt(tx)["gasUsed"]) for tx in transactions)  # type: ignore[arg-type]
    return ServiceRelay(
        url=url,
        requests=posted,
        recorded=recorded,
        transactions=len(transactions),
        gas_per_interaction=gas / recorded if recorded else 0.0,
        seconds=time.perf_counter() - started,
    )


def _wait_until_recorded(session: Session, client: Client, total: int, progress: Callable[[int], None]) -> None:
    log = session.workspace.state_dir / "service" / "service.log"
    outbox = demo_outbox(session)
    shown = 0
    last_move = time.monotonic()
    while True:
        counts = client.health().get("outbox", {})
        if counts.get("refused") or counts.get("expired"):
            raise ServiceError(
                f"the service could not record {counts.get('refused', 0) + counts.get('expired', 0)} of the demo's "
                f"interactions: the reasons are in its log {log}."
            )
        done = counts.get("recorded", 0)
        if done > shown:
            progress(done - shown)
            shown, last_move = done, time.monotonic()
        if done >= total:
            return
        if time.monotonic() - last_move > STALL_SECONDS:
            raise MedmeterError(
                f"the service recorded {done} of {total} interactions and nothing moved for {STALL_SECONDS:.0f} s: "
                f"see {log}; what it acknowledged stays in its outbox {outbox}, relayed when `medmeter serve "
                f"--detach --operator relayer --outbox {outbox}` runs."
            )
        time.sleep(POLL_SECONDS)


def stop_service(state_dir: Path) -> None:
    """Stop the service `start_service` started (it finishes the transaction in hand)."""
    server.stop(state_dir)
