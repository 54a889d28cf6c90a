"""A deterministic gas scenario for the ledger: the same keys, nonces and payloads every run,
so its figures are data (bench/gas-snapshot.json) and a rise is a failing test, not noise.

Scenario: 10 institutions with deterministic keys, the default tariff, each institution warmed
with one sync; then single interactions through `recordInteraction` and mixed batches
(sync, fetch, exchange in turn, across all 10 institutions) through `recordBatch`."""

from __future__ import annotations

import random
from dataclasses import dataclass

from eth_account import Account
from eth_account.signers.local import LocalAccount
from web3 import Web3

from medmeter.app.operations import apply_default_tariff
from medmeter.chain.deployment import deploy_contract
from medmeter.chain.ledger import Ledger
from medmeter.chain.rpc import Transactor
from medmeter.signing.consent import registration
from medmeter.signing.interaction import ZERO_ADDRESS, Interaction, InteractionSigner, Kind, SignedInteraction
from medmeter.toolchain.compiler import Artifact

INSTITUTIONS = 10
BATCH_SIZES = (1, 10, 100, 140)  # 140: MAX_BATCH_SIZE
DEADLINE = 2**40
SEED = 20261125
KINDS = (Kind.SYNC, Kind.FETCH, Kind.EXCHANGE)


def _key(label: str) -> LocalAccount:
    return Account.from_key(Web3.keccak(text=f"medmeter gas profile {label}"))


@dataclass
class GasScenario:
    ledger: Ledger
    signers: list[InteractionSigner]
    rng: random.Random
    next_nonce: list[int]
    rates: dict[int, tuple[int, int]]

    def interaction(self, index: int, kind: Kind) -> SignedInteraction:
        who = index % INSTITUTIONS
        counterparty = self.signers[(who + 1) % INSTITUTIONS].address if kind is Kind.EXCHANGE else ZERO_ADDRESS
        nonce = self.next_nonce[who]
        self.next_nonce[who] += 1
        category = self.rng.randint(1, 7)
        records = self.rng.randint(1, 20)
        sync_rate, fetch_rate = self.rates[category]
        interaction = Interaction(
            kind=kind,
            institution=self.signers[who].address,
            counterparty=counterparty,
            category=category,
            records=records,
            units=records * (sync_rate if kind is Kind.SYNC else fetch_rate),
            data_hash="0x" + self.rng.randbytes(32).hex(),
            nonce=nonce,
            deadline=DEADLINE,
        )
        return self.signers[who].sign(interaction)

    def mixed(self, size: int) -> list[SignedInteraction]:
        return [self.interaction(i, KINDS[i % 3]) for i in range(size)]


def deploy_scenario(w3: Web3, artifact: Artifact) -> tuple[GasScenario, dict[str, int]]:
    """Deploy and set up the scenario; returns it and the gas of the administrative calls."""
    admin = _key("admin")
    w3.provider.make_request("anvil_setBalance", [admin.address, hex(10**24)])  # type: ignore[arg-type]
    transactor = Transactor(w3, admin)
    deployment = deploy_contract(w3, transactor, artifact)
    gas = {"deploy": w3.eth.get_transaction_receipt(deployment.tx_hash)["gasUsed"]}
    ledger = Ledger(w3, deployment, admin)
    institutions = [_key(f"institution {i}") for i in range(INSTITUTIONS)]
    for index, account in enumerate(institutions):
        code, name = f"GAS-{index:03d}", f"Gas Clinic {index}"
        consent = registration(account.address, code, name, DEADLINE, ledger.domain, account)
        r = ledger.register(account.address, code, name, 10**12, DEADLINE, consent)
        gas.setdefault("registerInstitution", r["gasUsed"])
    apply_default_tariff(ledger)
    gas["setRate"] = ledger.set_rate(2, 1, 2, "laboratory")["gasUsed"]
    gas["setPlatformFee"] = ledger.set_platform_fee(500)["gasUsed"]
    signers = [InteractionSigner(ledger.domain, account) for account in institutions]
    rates = {}
    for category in range(1, 8):
        sync_rate, fetch_rate, _ = ledger.call(ledger.contract.functions.rateOf(category))
        rates[category] = (int(sync_rate), int(fetch_rate))
    scenario = GasScenario(ledger, signers, random.Random(SEED), [0] * INSTITUTIONS, rates)
    warm = [scenario.interaction(i, Kind.SYNC) for i in range(INSTITUTIONS)]
    _record(ledger, warm)
    return scenario, gas


def _record(ledger: Ledger, batch: list[SignedInteraction]) -> int:
    assert ledger.transactor is not None
    receipt = ledger.transactor.wait_raw(ledger.send_batch(batch))
    return int(receipt["gasUsed"], 16)


def measure(w3: Web3, artifact: Artifact) -> dict[str, int]:
    """Gas per call of the scenario. Keys: `<function>` for whole transactions,
    `recordBatch_<n>_per_interaction` for batches (rounded down)."""
    scenario, gas = deploy_scenario(w3, artifact)
    ledger = scenario.ledger
    assert ledger.transactor is not None
    for kind in KINDS:
        item = scenario.interaction(0, kind)
        fn = ledger.contract.functions.recordInteraction(item.as_contract_arg())
        gas[f"recordInteraction_{kind.name.lower()}"] = ledger.transactor.transact(fn)["gasUsed"]
    for size in BATCH_SIZES:
        used = _record(ledger, scenario.mixed(size))
        gas[f"recordBatch_{size}"] = used
        gas[f"recordBatch_{size}_per_interaction"] = used // size
    gas["closePeriod"] = ledger.close_period()["gasUsed"]
    return gas
