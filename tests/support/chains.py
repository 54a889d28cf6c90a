"""Test helpers: deploy a ledger with known institutions and sign interactions for it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from eth_account import Account
from eth_account.signers.local import LocalAccount
from web3 import Web3

from medmeter.app.operations import apply_default_tariff
from medmeter.chain.deployment import deploy_contract
from medmeter.chain.ledger import Ledger
from medmeter.signing.interaction import ZERO_ADDRESS, Interaction, Kind, SignedInteraction, sign_interaction
from medmeter.toolchain.compiler import Artifact

DEFAULT_CREDIT_LINE = 1_000
FAR_FUTURE = 2**40


def funded_account(w3: Web3) -> LocalAccount:
    account = Account.create()
    w3.provider.make_request("anvil_setBalance", [account.address, hex(10**24)])  # type: ignore[arg-type]
    return account


def deploy_ledger(w3: Web3, artifact: Artifact, admin: LocalAccount) -> Ledger:
    from medmeter.chain.rpc import Transactor

    return Ledger(w3, deploy_contract(w3, Transactor(w3, admin), artifact), admin)


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
        units: int | None = None,
    ) -> Interaction:
        """An interaction priced as the institution would price it: records x the chain's current rate,
        unless `units` is given."""
        address = who if isinstance(who, str) else who.address
        if nonce is None:
            nonce = self.next_nonce.get(address, 0)
            self.next_nonce[address] = nonce + 1
        if units is None:
            units = priced_units(self.ledger, kind, category, records)
        return Interaction(kind, address, counterparty, category, records, units, data_hash, nonce, deadline)

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
        register_with_consent(ledger, account, f"TEST-{index:03d}", f"Test Clinic {index}", credit_line)
    return LedgerEnv(w3, artifact, admin, ledger, accounts)


def register_with_consent(ledger: Ledger, account: LocalAccount, code: str, name: str, credit_line: int) -> Any:
    """Register `account` with its own signed `Registration` (as the clinic would produce it)."""
    from medmeter.signing.consent import registration

    signature = registration(account.address, code, name, FAR_FUTURE, ledger.domain, account)
    return ledger.register(account.address, code, name, credit_line, FAR_FUTURE, signature)


def priced_units(ledger: Ledger, kind: Kind, category: int, records: int) -> int:
    """records x the rate of (kind, category) on chain now; 0 for a category without a rate."""
    sync_rate, fetch_rate, defined = ledger.call(ledger.contract.functions.rateOf(category))
    if not defined:
        return 0
    return records * int(sync_rate if kind is Kind.SYNC else fetch_rate)


# --------------------------------------------------------------------------- contract-suite helpers
# Used by test_ledger_rules, test_signatures, test_access_control and test_invariants.

from collections.abc import Iterator  # noqa: E402
from contextlib import contextmanager  # noqa: E402

from web3.exceptions import ContractCustomError, ContractLogicError  # noqa: E402 - appended section
from web3.types import TxReceipt  # noqa: E402

from medmeter.errors import LedgerRevertError  # noqa: E402


def expect_revert(ledger: Ledger, fn: Any, sender: str | None = None, block: Any = "latest") -> LedgerRevertError:
    """eth_call `fn` from `sender` (default: the ledger's operator) and return its decoded custom error.

    Fails the test when the call does not revert, so a refusal that silently became a success shows up."""
    from_address = sender or (ledger.transactor.address if ledger.transactor else None)
    try:
        fn.call({"from": from_address} if from_address else {}, block_identifier=block)
    except (ContractCustomError, ContractLogicError) as exc:
        return ledger.errors.from_exception(exc)
    raise AssertionError(f"{fn.fn_name} from {from_address} did not revert")


def batch_refusal(env: LedgerEnv, *items: SignedInteraction) -> LedgerRevertError:
    """The decoded error `recordBatch(items)` reverts with; fails the test if the batch would be accepted."""
    error = env.ledger.simulate_batch(list(items), block="latest")
    assert error is not None, "the batch was expected to be refused but the dry run accepted it"
    return error


def send_unchecked(env: LedgerEnv, fn: Any, gas: int = 8_000_000) -> TxReceipt:
    """Mine `fn` with a fixed gas limit, skipping the estimate, so a reverting call lands on chain (status 0)."""
    assert env.ledger.transactor is not None
    tx_hash = env.ledger.transactor.send(fn, gas=gas)
    return env.w3.eth.wait_for_transaction_receipt(tx_hash, timeout=60, poll_latency=0.05)


def rate_of(ledger: Ledger, category: int) -> tuple[int, int]:
    """(sync units per record, fetch units per record) of `category` as the chain holds them."""
    sync_rate, fetch_rate, defined = ledger.call(ledger.contract.functions.rateOf(category))
    assert defined, f"category {category} has no tariff on chain"
    return int(sync_rate), int(fetch_rate)


def fee_bps_of(ledger: Ledger) -> int:
    return int(ledger.call(ledger.contract.functions.platformFeeBps()))


def event_args(ledger: Ledger, receipt: TxReceipt, event_name: str) -> list[dict[str, Any]]:
    """The decoded arguments of every `event_name` log this ledger emitted in `receipt`, in log order."""
    from web3.logs import DISCARD

    event = getattr(ledger.contract.events, event_name)()
    return [dict(log["args"]) for log in event.process_receipt(receipt, errors=DISCARD)]


def positions_of(ledger: Ledger, addresses: list[str]) -> dict[str, tuple[int, int]]:
    """(balance, debt) of each address."""
    return {address: _balance_and_debt(ledger, address) for address in addresses}


def _balance_and_debt(ledger: Ledger, address: str) -> tuple[int, int]:
    position = ledger.position(address)
    return position.balance, position.debt


def hex32(value: bytes | str) -> str:
    """A bytes32 as the error decoder renders it: lower-case 0x hex."""
    return "0x" + (value.hex() if isinstance(value, bytes) else value.removeprefix("0x").lower())


def private_chain(workspace: Any) -> Iterator[str]:
    """A fresh anvil for one test module: anvil's automine slows down as its chain grows, so modules that
    send many transactions run on a short chain of their own instead of the session's shared one."""
    from tests.conftest import start_anvil  # conftest imports this module: import it only when called

    process, url = start_anvil(workspace)
    try:
        yield url
    finally:
        process.terminate()
        process.wait(10)


def evm_snapshot(w3: Web3) -> str:
    return w3.provider.make_request("evm_snapshot", [])["result"]  # type: ignore[arg-type]


def evm_revert(w3: Web3, snapshot: str) -> None:
    reverted = w3.provider.make_request("evm_revert", [snapshot])  # type: ignore[arg-type]
    assert reverted.get("result") is True, f"evm_revert({snapshot}) failed: {reverted}"


@contextmanager
def rolled_back(base: LedgerEnv) -> Iterator[LedgerEnv]:
    """`base`'s ledger as it was deployed, for one test; every block the test mines is dropped afterwards.

    Same isolation as a fresh deployment per test, without the chain (and anvil's mining time) growing."""
    snapshot = evm_snapshot(base.w3)
    try:
        yield LedgerEnv(base.w3, base.artifact, base.admin, base.ledger, list(base.institutions))
    finally:
        evm_revert(base.w3, snapshot)
        assert base.ledger.transactor is not None
        base.ledger.transactor.reset_nonce()  # the operator's account nonce went back with the chain


def rotate_with_consent(env: LedgerEnv, institution: str, current: LocalAccount, new_key: LocalAccount) -> TxReceipt:
    """Self-rotation: `current` (the signer) signs `SignerRotation`, `new_key` its `SignerAcceptance`; the
    operator relays it."""
    from medmeter.signing.consent import signer_acceptance, signer_rotation

    ledger = env.ledger
    nonce = int(ledger.call(ledger.contract.functions.registryNonce(institution)))
    by_current = signer_rotation(institution, new_key.address, nonce, FAR_FUTURE, ledger.domain, current)
    by_new = signer_acceptance(institution, new_key.address, nonce, FAR_FUTURE, ledger.domain, new_key)
    return ledger.rotate_signer(institution, new_key.address, nonce, FAR_FUTURE, by_current, by_new)


def advance_time(w3: Web3, seconds: int) -> None:
    """Move the chain's clock forward by `seconds` and mine a block at the new time."""
    w3.provider.make_request("evm_increaseTime", [seconds])  # type: ignore[arg-type]
    w3.provider.make_request("evm_mine", [])  # type: ignore[arg-type]
