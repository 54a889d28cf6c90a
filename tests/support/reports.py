"""Helpers for the export, settlement and statement tests: valid random traffic on a test ledger,
and a throwaway workspace the `medmeter` CLI can run in against the test anvil."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from web3 import Web3

from medmeter.app.operations import read_tariff
from medmeter.signing.interaction import SignedInteraction
from medmeter.signing.traffic import SimulatedInstitution, simulate
from tests.support.chains import LedgerEnv

PASSWORD = "report-tests"
SCRYPT_N = 2**10


def traffic(env: LedgerEnv, count: int, seed: int) -> list[SignedInteraction]:
    """`count` signed interactions (all kinds, all categories) that the ledger accepts in order."""
    ledger = env.ledger
    participants = []
    for account in env.institutions:
        position = ledger.position(account.address)
        info = ledger.institution(account.address)
        participants.append(
            SimulatedInstitution(
                address=account.address,
                signer=account,
                credit_line=info.credit_line,
                balance=position.balance,
                debt=position.debt,
                first_nonce=env.next_nonce.get(account.address, 0),
            )
        )
    now = int(env.w3.eth.get_block("latest")["timestamp"])
    items = simulate(participants, read_tariff(ledger), ledger.domain, count, seed, now, validate_fhir=False)
    for item in items:
        address = item.interaction.institution
        env.next_nonce[address] = max(env.next_nonce.get(address, 0), item.interaction.nonce + 1)
    return items


def record_traffic(env: LedgerEnv, count: int, seed: int, batch: int = 10) -> list[SignedInteraction]:
    """Record `count` random interactions, `batch` per transaction (one block each on automine)."""
    items = traffic(env, count, seed)
    for start in range(0, len(items), batch):
        env.record(*items[start : start + batch])
    return items


def mine(w3: Web3, blocks: int) -> None:
    w3.provider.make_request("anvil_mine", [hex(blocks)])  # type: ignore[arg-type]


def head(w3: Web3) -> int:
    return w3.eth.block_number


@dataclass(frozen=True)
class CliWorkspace:
    root: Path
    rpc_url: str

    @property
    def reports(self) -> Path:
        return self.root / "reports"
