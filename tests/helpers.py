"""Test helpers: deploy a ledger with known institutions and sign interactions for it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from eth_account import Account
from eth_account.signers.local import LocalAccount
from web3 import Web3

from medmeter.compiler import Artifact
from medmeter.deployment import Deployment
from medmeter.interaction import ZERO_ADDRESS, Interaction, Kind, SignedInteraction, sign_interaction
from medmeter.ledger import Ledger
from medmeter.operations import apply_default_tariff

DEFAULT_CREDIT_LINE = 1_000
FAR_FUTURE = 2**40


def funded_account(w3: Web3) -> LocalAccount:
    account = Account.create()
    w3.provider.make_request("anvil_setBalance", [account.address, hex(10**24)])  # type: ignore[arg-type]
    return account


def deploy_ledger(w3: Web3, artifact: Artifact, admin: LocalAccount) -> Ledger:
    from medmeter.chain import Transactor

    factory = w3.eth.contract(abi=artifact.abi, bytecode=artifact.bytecode)
    receipt = Transactor(w3, admin).transact(factory.constructor(admin.address))
    deployment = Deployment(
        chain_id=w3.eth.chain_id,
        address=receipt["contractAddress"],
        block=receipt["blockNumber"],
        tx_hash=receipt["transactionHash"].to_0x_hex(),
        deployer=admin.address,
        abi=artifact.abi,
        source_hash=artifact.source_hash,
    )
    return Ledger(w3, deployment, admin)


@dataclass
class LedgerEnv:
    w3: Web3
    artifact: Artifact
    admin: LocalAccount
    ledger: Ledger
    institutions: list[LocalAccount]
    next_nonce: dict[str, int] = field(default_factory=dict)

    def interaction(
        self,
        kind: Kind,
        who: LocalAccount | str,
        *,
        counterparty: str = ZERO_ADDRESS,
        category: int = 2,
        records: int = 5,
        nonce: int | None = None,
        deadline: int = FAR_FUTURE,
        data_hash: str = "0x" + "ab" * 32,
    ) -> Interaction:
        address = who if isinstance(who, str) else who.address
        if nonce is None:
            nonce = self.next_nonce.get(address, 0)
            self.next_nonce[address] = nonce + 1
        return Interaction(kind, address, counterparty, category, records, data_hash, nonce, deadline)

    def signed(
        self, kind: Kind, who: LocalAccount, signer: LocalAccount | None = None, **fields: Any
    ) -> SignedInteraction:
        return sign_interaction(self.interaction(kind, who, **fields), self.ledger.domain, signer or who)

    def record(self, *items: SignedInteraction) -> Any:
        return self.ledger.transactor.transact(self.ledger.record_batch_fn(list(items)))  # type: ignore[union-attr]

    def as_account(self, account: LocalAccount) -> Ledger:
        """The same ledger, sending from `account` (funded first)."""
        self.w3.provider.make_request("anvil_setBalance", [account.address, hex(10**24)])  # type: ignore[arg-type]
        return Ledger(self.w3, self.ledger.deployment, account)


def deploy_env(
    w3: Web3, artifact: Artifact, institutions: int = 3, credit_line: int = DEFAULT_CREDIT_LINE
) -> LedgerEnv:
    admin = funded_account(w3)
    ledger = deploy_ledger(w3, artifact, admin)
    apply_default_tariff(ledger)
    accounts = [Account.create() for _ in range(institutions)]
    for index, account in enumerate(accounts):
        ledger.register(account.address, f"TEST-{index:03d}", f"Test Clinic {index}", credit_line)
    return LedgerEnv(w3, artifact, admin, ledger, accounts)
