"""A typed client for the deployed MeteringLedger: administration, recording and reads."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from eth_account.signers.local import LocalAccount
from eth_utils import function_signature_to_4byte_selector
from web3 import Web3
from web3.contract import Contract
from web3.exceptions import ContractCustomError, ContractLogicError
from web3.types import BlockIdentifier, TxReceipt

from medmeter.chain.deployment import Deployment
from medmeter.chain.rpc import Transactor
from medmeter.contract.facts import OPERATING_ROLES, Kind
from medmeter.contract.revert_advice import STATUS_NAMES, ErrorDecoder
from medmeter.errors import InputError, LedgerRevertError
from medmeter.signing.interaction import Domain, SignedInteraction

INTERACTION_TUPLE = "(uint8,address,address,uint16,uint32,uint64,bytes32,uint256,uint64)"
SIGNED_INTERACTION_ARRAY = f"({INTERACTION_TUPLE},bytes32,bytes32)[]"
RECORD_BATCH_SELECTOR = function_signature_to_4byte_selector(f"recordBatch({SIGNED_INTERACTION_ARRAY})")


def encode_record_batch(batch: list[SignedInteraction]) -> bytes:
    """`recordBatch` calldata. Every member is static, so the ABI encoding is the selector, the
    array's offset and length, then 11 words per item; built directly it is ~30x faster than
    eth_abi's validating encoder (`tests/test_fast_paths.py` checks they agree byte for byte)."""
    head = RECORD_BATCH_SELECTOR + (32).to_bytes(32, "big") + len(batch).to_bytes(32, "big")
    return head + b"".join(_item_words(item) for item in batch)


def _item_words(item: SignedInteraction) -> bytes:
    r, vs = item.compact_signature()
    return item.interaction.abi_words() + r + vs


# Upper bounds per call, above the worst case measured (an exchange between two institutions never
# touched before, each opening a fresh nonce word, position and counters and reading a tariff category
# not yet read, with calldata of non-zero bytes): about 112,900 gas per interaction
# (tests/contract/test_ledger_rules.py).
BATCH_BASE_GAS = 100_000
GAS_PER_INTERACTION_BOUND = 118_000


# EIP-7825: no transaction may ask for more gas than this.
TRANSACTION_GAS_CAP = 16_777_216


def batch_gas_limit(size: int) -> int:
    return min(BATCH_BASE_GAS + GAS_PER_INTERACTION_BOUND * size, TRANSACTION_GAS_CAP)


ROLES = OPERATING_ROLES


def code_to_bytes32(code: str) -> bytes:
    raw = code.encode()
    if not raw or len(raw) > 32:
        raise InputError(f"institution code {code!r} must be 1 to 32 bytes of text.")
    return raw.ljust(32, b"\0")


def bytes32_to_code(raw: bytes) -> str:
    return raw.rstrip(b"\0").decode(errors="replace")


@dataclass(frozen=True)
class InstitutionInfo:
    address: str
    code: str
    name: str
    signer: str
    status: str
    credit_line: int


@dataclass(frozen=True)
class Position:
    balance: int
    debt: int


@dataclass(frozen=True)
class ScheduledTariff:
    """Rates and fee scheduled for `period` (the next one): they apply when the open period closes."""

    period: int
    rates: dict[int, tuple[int, int]]  # category -> (sync, fetch) units per record
    fee_bps: int | None  # None: the fee stays as it is

    @property
    def empty(self) -> bool:
        return not self.rates and self.fee_bps is None


# Events that change what an institution is on the ledger (its registration, key, status, credit,
# nonces), each with `institution` as an indexed argument.
REGISTRY_EVENTS = (
    "InstitutionRegistered",
    "InstitutionSuspended",
    "InstitutionReinstated",
    "SignerRotated",
    "RecoveryStarted",
    "RecoveryCancelled",
    "RecoveryCompleted",
    "CreditLineChanged",
    "NoncesCancelled",
)


@dataclass(frozen=True)
class RegistryEvent:
    block: int
    log_index: int
    tx_hash: str
    name: str
    args: dict[str, Any]

    def describe(self) -> str:
        shown = ", ".join(
            f"{k}={'0x' + v.hex() if isinstance(v, bytes) else v}" for k, v in self.args.items() if k != "institution"
        )
        return f"block {self.block}: {self.name}({shown})"


class Ledger:
    def __init__(self, w3: Web3, deployment: Deployment, sender: LocalAccount | None = None) -> None:
        self.w3 = w3
        self.deployment = deployment
        self.contract: Contract = w3.eth.contract(address=deployment.address, abi=deployment.abi)
        self.errors = ErrorDecoder(deployment.abi)
        self.transactor = Transactor(w3, sender, self.errors.from_exception) if sender is not None else None

    @property
    def address(self) -> str:
        return self.deployment.address

    @property
    def domain(self) -> Domain:
        return Domain(self.deployment.chain_id, self.deployment.address)

    # ------------------------------------------------------------------ sending

    def _transact(self, fn: Any) -> TxReceipt:
        if self.transactor is None:
            raise InputError("this command needs the operator's keystore: pass --operator.")
        return self.transactor.transact(fn)

    def institution_signed_by(self, signer: str, wallet: str) -> str:
        """The institution whose current signer key is `signer` (the keystore `wallet`); InputError if none."""
        address = self.call(self.contract.functions.institutionBySigner(signer))
        if int(address, 16) == 0:
            raise InputError(f"wallet {wallet} ({signer}) is not the signer of any registered institution.")
        return address

    def price(self, kind: Kind, category: int, records: int, block: BlockIdentifier = "latest") -> int:
        """The units the tariff on chain gives (kind, category, records) now: what the institution signs."""
        from medmeter.settlement.crediting import gross_units

        sync_rate, fetch_rate, defined = self.call(self.contract.functions.rateOf(category), block)
        if not defined:
            raise InputError(
                f"category {category} has no tariff on this ledger: ask the platform to set one "
                "(`medmeter tariff set`)."
            )
        return gross_units(kind.word, records, int(sync_rate), int(fetch_rate))

    def transact(self, fn: Any) -> TxReceipt:
        """Send any ledger call as the operator (for the less common calls without their own method)."""
        return self._transact(fn)

    def call(self, fn: Any, block: BlockIdentifier = "latest", sender: str | None = None) -> Any:
        try:
            return fn.call({"from": sender} if sender else {}, block_identifier=block)
        except (ContractCustomError, ContractLogicError) as exc:
            raise self.errors.from_exception(exc) from exc

    def register(
        self, institution: str, code: str, name: str, credit_line: int, deadline: int, signature: bytes
    ) -> TxReceipt:
        """Register with the institution's consent: `signature` is its key's EIP-712 `Registration`
        (see `medmeter.consent.registration`)."""
        return self._transact(
            self.contract.functions.registerInstitution(
                institution, code_to_bytes32(code), name, credit_line, deadline, signature
            )
        )

    def suspend(self, institution: str) -> TxReceipt:
        return self._transact(self.contract.functions.suspendInstitution(institution))

    def reinstate(self, institution: str) -> TxReceipt:
        return self._transact(self.contract.functions.reinstateInstitution(institution))

    def rotate_signer(
        self,
        institution: str,
        new_signer: str,
        nonce: int,
        deadline: int,
        signer_signature: bytes,
        new_signer_signature: bytes,
    ) -> TxReceipt:
        """Relay a self-rotation: the current signer's `SignerRotation` and the new key's `SignerAcceptance`."""
        return self._transact(
            self.contract.functions.rotateSigner(
                institution, new_signer, nonce, deadline, signer_signature, new_signer_signature
            )
        )

    def counters(self, address: str, block: BlockIdentifier = "latest") -> dict[str, int]:
        """Cumulative counters of `address` (`countersOf`) at `block`, by the contract's field names."""
        names = [c["name"] for c in self._counters_abi()]
        values = self.call(self.contract.functions.countersOf(address), block)
        return dict(zip(names, (int(v) for v in values), strict=True))

    def _counters_abi(self) -> list[dict[str, Any]]:
        entry = next(e for e in self.deployment.abi if e.get("name") == "countersOf")
        return entry["outputs"][0]["components"]

    def set_credit_line(self, institution: str, credit_line: int) -> TxReceipt:
        return self._transact(self.contract.functions.setCreditLine(institution, credit_line))

    def set_rate(self, category: int, sync_units: int, fetch_units: int, label: str) -> TxReceipt:
        return self._transact(self.contract.functions.setRate(category, sync_units, fetch_units, label))

    def set_platform_fee(self, fee_bps: int) -> TxReceipt:
        return self._transact(self.contract.functions.setPlatformFee(fee_bps))

    def schedule_rate(self, category: int, sync_units: int, fetch_units: int, label: str) -> TxReceipt:
        """Schedule the rates of `category` for the next period (`scheduleRate`): they apply when the
        current period closes, so institutions see them first."""
        return self._transact(self.contract.functions.scheduleRate(category, sync_units, fetch_units, label))

    def schedule_platform_fee(self, fee_bps: int) -> TxReceipt:
        """Schedule the platform fee for the next period (`schedulePlatformFee`)."""
        return self._transact(self.contract.functions.schedulePlatformFee(fee_bps))

    def scheduled_tariff(self, block: BlockIdentifier = "latest") -> ScheduledTariff:
        """What takes effect when the open period closes: the scheduled rates and fee, if any."""
        period, _ = self.current_period()
        rates = {}
        for category in self.call(self.contract.functions.scheduledCategories(), block):
            sync, fetch, scheduled = self.call(self.contract.functions.scheduledRateOf(category), block)
            if scheduled:
                rates[int(category)] = (int(sync), int(fetch))
        fee, fee_scheduled = self.call(self.contract.functions.scheduledPlatformFee(), block)
        return ScheduledTariff(period + 1, rates, int(fee) if fee_scheduled else None)

    def record_reversal(
        self, institution: str, original_digest: bytes, units: int, reason_hash: bytes, deadline: int, signature: bytes
    ) -> TxReceipt:
        """Record a reversal the institution signed (`Reversal`, see `medmeter.signing.consent`); settler role."""
        return self._transact(
            self.contract.functions.recordReversal(
                institution, original_digest, units, reason_hash, deadline, signature
            )
        )

    def is_reversed(self, original_digest: bytes, to_block: BlockIdentifier = "latest") -> bool:
        """Whether a ReversalRecorded event names `original_digest` (the contract keeps the flag private)."""
        logs = self.contract.events.ReversalRecorded.get_logs(
            from_block=self.deployment.block, to_block=to_block, argument_filters={"originalDigest": original_digest}
        )
        return len(logs) > 0

    def ledger_events(
        self, name: str, from_block: int, to_block: BlockIdentifier, filters: dict[str, Any] | None = None
    ) -> list[RegistryEvent]:
        """Every `name` event of the ledger in the blocks (from the deployment on), in chain order."""
        event = getattr(self.contract.events, name)
        logs = event.get_logs(
            from_block=max(from_block, self.deployment.block), to_block=to_block, argument_filters=filters or None
        )
        found = [
            RegistryEvent(
                log["blockNumber"], log["logIndex"], log["transactionHash"].to_0x_hex(), name, dict(log["args"])
            )
            for log in logs
        ]
        return sorted(found, key=lambda e: (e.block, e.log_index))

    def close_period(self) -> TxReceipt:
        return self._transact(self.contract.functions.closePeriod())

    def anchor_settlement(self, period: int, root: bytes, institution_count: int) -> TxReceipt:
        return self._transact(self.contract.functions.anchorSettlement(period, root, institution_count))

    def pause(self) -> TxReceipt:
        return self._transact(self.contract.functions.pause())

    def unpause(self) -> TxReceipt:
        return self._transact(self.contract.functions.unpause())

    def grant_role(self, role: str, account: str) -> TxReceipt:
        return self._transact(self.contract.functions.grantRole(self.role_id(role), account))

    def revoke_role(self, role: str, account: str) -> TxReceipt:
        return self._transact(self.contract.functions.revokeRole(self.role_id(role), account))

    def registry_history(self, address: str, from_block: int, to_block: BlockIdentifier) -> list[RegistryEvent]:
        """Every registry event of `address` in the blocks, in chain order."""
        names = {item["name"] for item in self.deployment.abi if item.get("type") == "event"}
        found = []
        for name in REGISTRY_EVENTS:
            if name not in names:
                continue
            event = getattr(self.contract.events, name)
            logs = event.get_logs(
                from_block=max(from_block, self.deployment.block),
                to_block=to_block,
                argument_filters={"institution": address},
            )
            for log in logs:
                found.append(
                    RegistryEvent(
                        log["blockNumber"], log["logIndex"], log["transactionHash"].to_0x_hex(), name, dict(log["args"])
                    )
                )
        return sorted(found, key=lambda e: (e.block, e.log_index))

    def role_holders(self, role: str, block: BlockIdentifier = "latest") -> list[str]:
        """Accounts holding ROLE, from the RoleGranted/RoleRevoked events (AccessControl keeps no list)."""
        role_id = self.role_id(role)
        holders: dict[str, bool] = {}
        for event_name in ("RoleGranted", "RoleRevoked"):
            event = getattr(self.contract.events, event_name)
            for log in event.get_logs(
                from_block=self.deployment.block, to_block=block, argument_filters={"role": role_id}
            ):
                holders.setdefault(log["args"]["account"], False)
        return [account for account in holders if self.call(self.contract.functions.hasRole(role_id, account), block)]

    def role_id(self, role: str) -> bytes:
        name = role.upper().removesuffix("_ROLE") + "_ROLE"
        if name in ("ADMIN_ROLE", "DEFAULT_ADMIN_ROLE"):
            return b"\0" * 32
        if name not in ROLES:
            raise InputError(f"unknown role {role!r}: use admin, {', '.join(r[:-5].lower() for r in ROLES)}.")
        return Web3.keccak(text=name)

    def record_batch_fn(self, batch: list[SignedInteraction]) -> Any:
        return self.contract.functions.recordBatch([item.as_contract_arg() for item in batch])

    def record_batch_calldata(self, batch: list[SignedInteraction]) -> bytes:
        """`recordBatch(batch)` calldata, encoded with eth_abi directly (web3's formatter is ~50x slower)."""
        return encode_record_batch(batch)

    def send_batch(self, batch: list[SignedInteraction]) -> str:
        """Dry-run `recordBatch(batch)` with one eth_call, then send it; raises the decoded refusal.

        The gas limit is a bound, not an estimate: eth_estimateGas re-executes the batch a dozen
        times in its binary search and was most of the relay's time. Only gas used is paid."""
        if self.transactor is None:
            raise InputError("recording needs the relayer's keystore: pass --operator.")
        data = self.record_batch_calldata(batch)
        call: dict[str, Any] = {"from": self.transactor.address, "to": self.address, "data": data}
        try:
            self.w3.eth.call(call, "pending")  # type: ignore[arg-type]
        except (ContractCustomError, ContractLogicError) as exc:
            raise self.errors.from_exception(exc) from exc
        return self.transactor.send_call(self.address, data, gas=batch_gas_limit(len(batch)))

    def simulate_batch(
        self, batch: list[SignedInteraction], block: BlockIdentifier = "pending"
    ) -> LedgerRevertError | None:
        """Dry-run `recordBatch` with eth_call; the decoded refusal, or None if it would succeed."""
        call: dict[str, Any] = {"to": self.address, "data": self.record_batch_calldata(batch)}
        if self.transactor:
            call["from"] = self.transactor.address
        try:
            self.w3.eth.call(call, block)  # type: ignore[arg-type]
        except (ContractCustomError, ContractLogicError) as exc:
            return self.errors.from_exception(exc)
        return None

    # ------------------------------------------------------------------ reads

    def institutions(self, block: BlockIdentifier = "latest") -> list[InstitutionInfo]:
        count = self.call(self.contract.functions.institutionCount(), block)
        return [
            self.institution(self.call(self.contract.functions.institutionAt(i), block), block) for i in range(count)
        ]

    def institution(self, address: str, block: BlockIdentifier = "latest") -> InstitutionInfo:
        code, name, signer, status, credit_line = self.call(self.contract.functions.institution(address), block)
        return InstitutionInfo(
            Web3.to_checksum_address(address), bytes32_to_code(code), name, signer, STATUS_NAMES[status], credit_line
        )

    def position(self, address: str, block: BlockIdentifier = "latest") -> Position:
        return Position(
            self.call(self.contract.functions.balanceOf(address), block),
            self.call(self.contract.functions.debtOf(address), block),
        )

    def is_nonce_used(self, institution: str, nonce: int, block: BlockIdentifier = "latest") -> bool:
        return bool(self.call(self.contract.functions.isNonceUsed(institution, nonce), block))

    def current_period(self) -> tuple[int, int]:
        period, start = self.call(self.contract.functions.currentPeriod())
        return int(period), int(start)

    def period_range(self, period: int) -> tuple[int, int]:
        start, end = self.call(self.contract.functions.periodRange(period))
        return int(start), int(end)

    def total_supply(self, block: BlockIdentifier = "latest") -> int:
        return int(self.call(self.contract.functions.totalSupply(), block))
