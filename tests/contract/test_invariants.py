"""Stateful property test: random sequences of operator actions and relayed traffic against one freshly deployed
ledger per example, checked after every step against a Python model of the domain rules and against the
ledger's own events.

The model predicts, item by item, what `medmeter.relay.engine.relay` must record, skip as already recorded, or reject
(and with which custom error), so a wrong refusal or a wrong acceptance fails as surely as a wrong balance.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import count
from typing import Any, ClassVar

from eth_account import Account
from eth_account.messages import encode_typed_data
from eth_account.signers.local import LocalAccount
from eth_utils import keccak
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule, run_state_machine_as_test
from web3 import Web3

from medmeter.relay.engine import relay
from medmeter.signing import consent
from medmeter.signing.interaction import (
    ZERO_ADDRESS,
    Interaction,
    Kind,
    SignedInteraction,
    sign_interaction,
    typed_data,
)
from medmeter.toolchain.compiler import Artifact
from tests.support.chains import (
    FAR_FUTURE,
    LedgerEnv,
    advance_time,
    batch_refusal,
    deploy_env,
    event_args,
    evm_revert,
    evm_snapshot,
    expect_revert,
    register_with_consent,
    rotate_with_consent,
    send_unchecked,
)
from tests.support.reference_decoder import iter_interactions, tally

MACHINE_SETTINGS = settings(
    max_examples=25,
    stateful_step_count=30,
    deadline=None,
    # Long step sequences legitimately overrun hypothesis's size budget; that is not a failure.
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large],
)
INITIAL_CREDIT_LINE = 1_000
CATEGORIES_IN_PLAY = range(1, 10)  # the default tariff's categories and a couple it leaves undefined
# What can be wrong with a relayed item (see LedgerMachine.build_item):
#   wrong_signer          signed by a key that signs for nobody
#   retired_signer        signed by the institution's rotated-out key (a fresh key if it never rotated)
#   unregistered          an unregistered account signing for itself
#   expired               deadline long past
#   replay                a nonce the institution already used (fresh if it has used none)
#   duplicate             the previous item of the same relay call, handed over twice
#   huge                  a debit of 100,000 records, beyond any credit line given here
#   unregistered_provider an exchange whose provider is not registered
#   mispriced             signed units one more than records x rate (refused: the institution signs the price)
# Items of suspended institutions, undefined categories and debits past the line arise from the state.
FLAWS = (
    "wrong_signer",
    "retired_signer",
    "unregistered",
    "expired",
    "replay",
    "duplicate",
    "huge",
    "unregistered_provider",
    "mispriced",
)


@dataclass
class InstitutionModel:
    account: LocalAccount
    signer: LocalAccount
    credit_line: int
    status: str = "active"
    balance: int = 0
    debt: int = 0
    # the most debt the rules allow: the credit line, or the debt it had when its line was lowered below it
    debt_ceiling: int = 0
    frozen: tuple[int, int] | None = None  # position when it was suspended
    retired_signers: list[LocalAccount] = field(default_factory=list)
    used_nonces: set[int] = field(default_factory=set)
    next_nonce: int = 0
    registry_nonce: int = 0
    pending_recovery: LocalAccount | None = None
    cancelled_nonces: set[int] = field(default_factory=set)
    # who signed each recorded interaction of this institution, and what it was, by nonce
    signed_by: dict[int, str] = field(default_factory=dict)
    recorded: dict[int, Interaction] = field(default_factory=dict)

    @property
    def address(self) -> str:
        return self.account.address


@dataclass(frozen=True)
class ItemSpec:
    kind: Kind
    actor: int
    counterparty: int
    category: int
    records: int
    flaw: str | None


def item_specs(flaws: st.SearchStrategy[str | None]) -> st.SearchStrategy[ItemSpec]:
    return st.builds(
        ItemSpec,
        kind=st.sampled_from(list(Kind)),
        actor=st.integers(0, 63),
        counterparty=st.integers(0, 63),
        category=st.sampled_from(list(CATEGORIES_IN_PLAY)),
        # up to 120 records at up to 12 units each reaches past the default credit line of 1,000
        records=st.integers(1, 120),
        flaw=flaws,
    )


good_items = st.lists(item_specs(st.none()), min_size=1, max_size=4)
# a bad item among good ones: the relay must record the good ones around it
mixed_items = st.lists(item_specs(st.one_of(st.none(), st.sampled_from(FLAWS))), min_size=1, max_size=4)


# Raw reads of the ledger, selectors from the ERC-20 and ledger function signatures.
TOTAL_SUPPLY = keccak(text="totalSupply()")[:4]
BALANCE_OF = keccak(text="balanceOf(address)")[:4]
DEBT_OF = keccak(text="debtOf(address)")[:4]
RATE_OF = keccak(text="rateOf(uint16)")[:4]
PLATFORM_FEE_BPS = keccak(text="platformFeeBps()")[:4]


def _eth_call(to: str, selector: bytes, argument: bytes, block: int | str = "latest") -> tuple[str, list[Any]]:
    return (
        "eth_call",
        [{"to": to, "data": "0x" + (selector + argument).hex()}, hex(block) if isinstance(block, int) else block],
    )


def _batch_words(w3: Web3, calls: list[tuple[str, list[Any]]]) -> list[list[int]]:
    """Run raw eth_calls in one JSON-RPC batch; each answer as its 32-byte words. web3's per-call formatting
    cost more than anvil's work, and the invariants read the whole ledger after every step."""
    answers = w3.provider.make_batch_request(calls)  # type: ignore[attr-defined,arg-type]
    assert isinstance(answers, list), answers
    results = []
    for answer in sorted(answers, key=lambda a: a["id"]):
        raw = bytes.fromhex(answer["result"][2:])
        results.append([int.from_bytes(raw[i : i + 32], "big") for i in range(0, len(raw), 32)])
    return results


def _signable(item: SignedInteraction) -> Any:
    return encode_typed_data(full_message=typed_data(item.interaction, item.domain))


class LedgerMachine(RuleBasedStateMachine):
    w3: ClassVar[Web3]
    artifact: ClassVar[Artifact]

    def __init__(self) -> None:
        super().__init__()
        # every example starts from the same chain, so the chain (and anvil's mining time) stays short
        self.snapshot = evm_snapshot(self.w3)
        self.env: LedgerEnv = deploy_env(self.w3, self.artifact, institutions=3, credit_line=INITIAL_CREDIT_LINE)
        ledger = self.env.ledger
        # the tariff as deployed, read from the chain (one JSON-RPC batch: this runs once per example)
        calls = [_eth_call(ledger.address, RATE_OF, category.to_bytes(32, "big")) for category in CATEGORIES_IN_PLAY]
        calls.append(_eth_call(ledger.address, PLATFORM_FEE_BPS, b""))
        *rates, fee = _batch_words(self.w3, calls)
        self.rates: dict[int, tuple[int, int]] = {
            category: (sync_rate, fetch_rate)
            for category, (sync_rate, fetch_rate, defined) in zip(CATEGORIES_IN_PLAY, rates, strict=True)
            if defined
        }
        self.fee_bps: int = fee[0]
        self.paused = False
        self.institutions: list[InstitutionModel] = [
            InstitutionModel(account, account, INITIAL_CREDIT_LINE, debt_ceiling=INITIAL_CREDIT_LINE)
            for account in self.env.institutions
        ]
        self.outsiders = [Account.create() for _ in range(2)]
        self.last_period_end = ledger.deployment.block - 1
        self.codes = count()
        self._chain_cache: tuple[int, dict[str, Any]] | None = None
        self.closed_periods: list[tuple[int, int]] = []
        self.anchored: dict[int, list[bytes]] = {}
        self.checked_signers: set[tuple[str, int, int]] = set()

    def teardown(self) -> None:
        evm_revert(self.w3, self.snapshot)

    # ------------------------------------------------------------------ helpers

    def pick(self, index: int) -> InstitutionModel:
        return self.institutions[index % len(self.institutions)]

    def by_address(self, address: str) -> InstitutionModel | None:
        return next((i for i in self.institutions if i.address == address), None)

    def fresh_nonce(self, institution: InstitutionModel) -> int:
        nonce = institution.next_nonce
        institution.next_nonce += 1
        return nonce

    def sign(self, interaction: Interaction, signer: LocalAccount) -> SignedInteraction:
        return sign_interaction(interaction, self.env.ledger.domain, signer)

    def build_item(self, spec: ItemSpec, earlier: list[SignedInteraction]) -> SignedInteraction:
        if spec.flaw == "duplicate" and earlier:
            return earlier[-1]  # the same signed interaction handed to the relay twice
        actor = self.pick(spec.actor)
        others = [i for i in self.institutions if i is not actor]
        kind = spec.kind
        if spec.flaw == "unregistered_provider":
            kind = Kind.EXCHANGE
        elif spec.flaw == "huge" and kind is Kind.SYNC:
            kind = Kind.FETCH  # a huge debit, beyond any credit line the rules here can give
        counterparty = others[spec.counterparty % len(others)].address if kind is Kind.EXCHANGE else ZERO_ADDRESS
        institution, signer, nonce = actor.address, actor.signer, self.fresh_nonce(actor)
        records, deadline = spec.records, FAR_FUTURE
        if spec.flaw == "wrong_signer":
            signer = Account.create()
        elif spec.flaw == "retired_signer":
            signer = actor.retired_signers[-1] if actor.retired_signers else Account.create()
        elif spec.flaw == "unregistered":
            outsider = self.outsiders[spec.actor % len(self.outsiders)]
            institution, signer = outsider.address, outsider
            if kind is Kind.EXCHANGE:
                counterparty = actor.address
        elif spec.flaw == "expired":
            deadline = 1
        elif spec.flaw == "replay" and actor.used_nonces:
            nonce = min(actor.used_nonces)
        elif spec.flaw == "huge":
            records = 100_000
        elif spec.flaw == "unregistered_provider":
            counterparty = self.outsiders[spec.counterparty % len(self.outsiders)].address
        units = self.price(kind, spec.category, records) + (1 if spec.flaw == "mispriced" else 0)
        interaction = Interaction(
            kind,
            institution,
            counterparty,
            spec.category,
            records,
            units,
            "0x" + f"{spec.records:064x}",
            nonce,
            deadline,
        )
        return self.sign(interaction, signer)

    def price(self, kind: Kind, category: int, records: int) -> int:
        """The units an institution signs: records x the rate in force (0 for a category without one)."""
        if category not in self.rates:
            return 0
        sync_rate, fetch_rate = self.rates[category]
        return records * (sync_rate if kind is Kind.SYNC else fetch_rate)

    def refusal(self, item: SignedInteraction) -> str | None:
        """The custom error the contract refuses `item` with in the model's current state, in the contract's
        order of checks; None if it would be recorded."""
        it = item.interaction
        if self.paused:
            return "EnforcedPause"
        # the next block is no earlier than the latest one; every deadline here is either 1 or far away
        if it.deadline < self.w3.eth.get_block("latest")["timestamp"]:
            return "InteractionExpired"
        actor = self.by_address(it.institution)
        if actor is None:
            return "InstitutionNotRegistered"
        if actor.status != "active":
            return "InstitutionNotActive"
        if (
            Account.recover_message(_signable(item), signature=bytes.fromhex(item.signature[2:]))
            != actor.signer.address
        ):
            return "InvalidSigner"
        if it.nonce in actor.used_nonces:
            return "NonceAlreadyUsed"
        if it.category not in self.rates:
            return "UnknownCategory"
        if it.units != self.price(it.kind, it.category, it.records):
            return "UnitsMismatch"
        if it.kind is not Kind.SYNC:
            units = it.records * self.rates[it.category][1]
            burned = min(units, actor.balance)
            if actor.debt + units - burned > actor.credit_line:
                return "CreditLineExceeded"
            if it.kind is Kind.EXCHANGE:
                provider = self.by_address(it.counterparty)
                if provider is None:
                    return "InstitutionNotRegistered"
                if provider.status != "active":
                    return "InstitutionNotActive"
        return None

    def apply(self, item: SignedInteraction) -> None:
        """Book an item the contract accepted, by the design's rules."""
        it = item.interaction
        actor = self.by_address(it.institution)
        assert actor is not None
        actor.used_nonces.add(it.nonce)
        actor.signed_by[it.nonce] = actor.signer.address
        actor.recorded[it.nonce] = it
        sync_rate, fetch_rate = self.rates[it.category]
        if it.kind is Kind.SYNC:
            self.credit(actor, it.records * sync_rate)
            return
        units = it.records * fetch_rate
        burned = min(units, actor.balance)
        actor.balance -= burned
        actor.debt += units - burned
        if it.kind is Kind.EXCHANGE:
            provider = self.by_address(it.counterparty)
            assert provider is not None
            self.credit(provider, units - units * self.fee_bps // 10_000)

    @staticmethod
    def credit(institution: InstitutionModel, units: int) -> None:
        repaid = min(units, institution.debt)
        institution.debt -= repaid
        institution.balance += units - repaid
        if institution.debt <= institution.credit_line:
            institution.debt_ceiling = institution.credit_line

    def read_chain(self) -> dict[str, Any]:
        """Everything the invariants compare, read once per block: positions and total supply in one JSON-RPC
        batch of raw eth_calls (web3's per-call formatting was most of this test's time), events with
        medmeter's log reader."""
        head = self.w3.eth.block_number
        if self._chain_cache is not None and self._chain_cache[0] == head:
            return self._chain_cache[1]
        ledger = self.env.ledger
        addresses = [i.address for i in self.institutions] + [o.address for o in self.outsiders]
        calls = [_eth_call(ledger.address, TOTAL_SUPPLY, b"", head)]
        for address in addresses:
            argument = bytes.fromhex(address[2:]).rjust(32, b"\0")
            calls.append(_eth_call(ledger.address, BALANCE_OF, argument, head))
            calls.append(_eth_call(ledger.address, DEBT_OF, argument, head))
        words = [answer[0] for answer in _batch_words(self.w3, calls)]
        state = {
            "total_supply": words[0],
            "positions": {a: (words[1 + 2 * n], words[2 + 2 * n]) for n, a in enumerate(addresses)},
            "events": list(iter_interactions(self.w3, ledger.address, ledger.deployment.block, head)),
        }
        self._chain_cache = (head, state)
        return state

    # ------------------------------------------------------------------ registry rules

    @rule(credit_line=st.integers(0, 2_000))
    def register(self, credit_line: int) -> None:
        account = Account.create()
        receipt = register_with_consent(
            self.env.ledger, account, f"M-{next(self.codes):04d}", "Model clinic", credit_line
        )
        assert len(event_args(self.env.ledger, receipt, "InstitutionRegistered")) == 1
        self.institutions.append(InstitutionModel(account, account, credit_line, debt_ceiling=credit_line))

    @rule(pick=st.integers(0, 63))
    def suspend(self, pick: int) -> None:
        institution = self.pick(pick)
        if institution.status == "suspended":
            fn = self.env.ledger.contract.functions.suspendInstitution(institution.address)
            assert expect_revert(self.env.ledger, fn).error_name == "InstitutionStatusUnchanged"
            return
        self.env.ledger.suspend(institution.address)
        institution.status = "suspended"
        institution.frozen = (institution.balance, institution.debt)

    @rule(pick=st.integers(0, 63))
    def reinstate(self, pick: int) -> None:
        institution = self.pick(pick)
        if institution.status == "active":
            fn = self.env.ledger.contract.functions.reinstateInstitution(institution.address)
            assert expect_revert(self.env.ledger, fn).error_name == "InstitutionStatusUnchanged"
            return
        self.env.ledger.reinstate(institution.address)
        institution.status = "active"
        institution.frozen = None

    @rule(pick=st.integers(0, 63))
    def rotate_signer(self, pick: int) -> None:
        """Self-rotation, signed by the current signer and the new key; cancels a pending recovery."""
        institution = self.pick(pick)
        new_signer = Account.create()
        rotate_with_consent(self.env, institution.address, institution.signer, new_signer)
        institution.retired_signers.append(institution.signer)
        institution.signer = new_signer
        institution.registry_nonce += 1
        institution.pending_recovery = None

    @rule(pick=st.integers(0, 63))
    def operator_tries_to_rotate(self, pick: int) -> None:
        """The operator signs a rotation to its own key: refused, nothing changes."""
        institution = self.pick(pick)
        stolen = Account.create()
        ledger = self.env.ledger
        nonce = institution.registry_nonce
        forged = consent.signer_rotation(
            institution.address, stolen.address, nonce, FAR_FUTURE, ledger.domain, self.env.admin
        )
        proof = consent.signer_acceptance(institution.address, stolen.address, nonce, FAR_FUTURE, ledger.domain, stolen)
        fn = ledger.contract.functions.rotateSigner(
            institution.address, stolen.address, nonce, FAR_FUTURE, forged, proof
        )
        assert expect_revert(ledger, fn).error_name == "InvalidMessageSigner"

    @rule(pick=st.integers(0, 63))
    def start_recovery(self, pick: int) -> None:
        institution = self.pick(pick)
        functions = self.env.ledger.contract.functions
        new_signer = Account.create()
        if institution.pending_recovery is not None:
            fn = functions.startRecovery(institution.address, new_signer.address)
            assert expect_revert(self.env.ledger, fn).error_name == "RecoveryAlreadyPending"
            return
        self.env.ledger.transactor.transact(functions.startRecovery(institution.address, new_signer.address))  # type: ignore[union-attr]
        institution.pending_recovery = new_signer

    @rule(pick=st.integers(0, 63), cancel=st.booleans())
    def finish_recovery(self, pick: int, cancel: bool) -> None:
        """The signer cancels a pending recovery, or it completes after its delay; nothing moves either way."""
        institution = self.pick(pick)
        functions = self.env.ledger.contract.functions
        if institution.pending_recovery is None:
            assert expect_revert(self.env.ledger, functions.completeRecovery(institution.address)).error_name == (
                "NoRecoveryPending"
            )
            return
        if cancel:
            signer_ledger = self.env.as_account(institution.signer)
            signer_ledger.transactor.transact(functions.cancelRecovery(institution.address))  # type: ignore[union-attr]
            institution.registry_nonce += 1
        else:
            assert expect_revert(self.env.ledger, functions.completeRecovery(institution.address)).error_name == (
                "RecoveryNotReady"
            )
            advance_time(self.w3, functions.RECOVERY_DELAY().call() + 1)
            self.env.ledger.transactor.transact(functions.completeRecovery(institution.address))  # type: ignore[union-attr]
            institution.retired_signers.append(institution.signer)
            institution.signer = institution.pending_recovery
            institution.registry_nonce += 1
        institution.pending_recovery = None

    @rule(pick=st.integers(0, 63), width=st.integers(1, 5), by_signature=st.booleans())
    def cancel_nonces(self, pick: int, width: int, by_signature: bool) -> None:
        """The institution cancels its next `width` nonces, unrelayed; an interaction under one is refused."""
        institution = self.pick(pick)
        ledger = self.env.ledger
        nonces = [self.fresh_nonce(institution) for _ in range(width)]
        for word, mask in consent.nonce_masks(nonces).items():
            if by_signature:
                signature = consent.nonce_cancellation(
                    institution.address, word, mask, FAR_FUTURE, ledger.domain, institution.signer
                )
                fn = ledger.contract.functions.cancelNoncesBySig(institution.address, word, mask, FAR_FUTURE, signature)
                ledger.transactor.transact(fn)  # type: ignore[union-attr]
            else:
                fn = ledger.contract.functions.cancelNonces(institution.address, word, mask)
                self.env.as_account(institution.signer).transactor.transact(fn)  # type: ignore[union-attr]
        institution.cancelled_nonces.update(nonces)
        interaction = Interaction(
            Kind.SYNC,
            institution.address,
            ZERO_ADDRESS,
            1,
            1,
            self.price(Kind.SYNC, 1, 1),
            "0x" + "66" * 32,
            nonces[0],
            FAR_FUTURE,
        )
        expected = self.refusal(self.sign(interaction, institution.signer)) or "NonceAlreadyUsed"
        assert batch_refusal(self.env, self.sign(interaction, institution.signer)).error_name == expected

    @rule(pick=st.integers(0, 63), credit_line=st.integers(0, 2_000))
    def set_credit_line(self, pick: int, credit_line: int) -> None:
        institution = self.pick(pick)
        self.env.ledger.set_credit_line(institution.address, credit_line)
        institution.credit_line = credit_line
        institution.debt_ceiling = max(credit_line, institution.debt)

    # ------------------------------------------------------------------ tariff rules

    @rule(
        category=st.sampled_from(list(CATEGORIES_IN_PLAY)), sync_rate=st.integers(0, 12), fetch_rate=st.integers(0, 12)
    )
    def set_rate(self, category: int, sync_rate: int, fetch_rate: int) -> None:
        self.env.ledger.set_rate(category, sync_rate, fetch_rate, f"category {category}")
        self.rates[category] = (sync_rate, fetch_rate)

    @rule(fee_bps=st.one_of(st.integers(0, 10_000), st.integers(10_001, 2**16 - 1)))
    def set_platform_fee(self, fee_bps: int) -> None:
        if fee_bps > 10_000:
            fn = self.env.ledger.contract.functions.setPlatformFee(fee_bps)
            assert expect_revert(self.env.ledger, fn).error_name == "PlatformFeeOutOfRange"
            return
        self.env.ledger.set_platform_fee(fee_bps)
        self.fee_bps = fee_bps

    # ------------------------------------------------------------------ recording rules

    @rule(specs=good_items, batch_size=st.integers(2, 4))
    def relay_good_items(self, specs: list[ItemSpec], batch_size: int) -> None:
        self.relay_and_compare(specs, batch_size)

    @rule(specs=mixed_items, batch_size=st.integers(2, 4))
    def relay_bad_items(self, specs: list[ItemSpec], batch_size: int) -> None:
        self.relay_and_compare(specs, batch_size)

    def relay_and_compare(self, specs: list[ItemSpec], batch_size: int) -> None:
        items: list[SignedInteraction] = []
        for spec in specs:
            items.append(self.build_item(spec, items))

        # what the relay must do: reject repeats within the input; report an item whose nonce the chain
        # already used as already recorded when the recorded interaction is this one, and as a conflict
        # when it is another (paused or not: the chain's event decides, not a dry run); then record in
        # order every item the contract accepts given the items recorded before it
        expected_already, expected_rejected, expected_recorded = [], [], []
        seen: set[tuple[str, int]] = set()
        pending = []
        for index, item in enumerate(items):
            key = (item.interaction.institution, item.interaction.nonce)
            holder = self.by_address(key[0])
            if key in seen:
                expected_rejected.append((index, "Duplicate"))
                continue
            seen.add(key)
            if holder is not None and key[1] in holder.used_nonces:
                same = self.same_content(holder.recorded[key[1]], item.interaction)
                if same:
                    expected_already.append(index)
                else:
                    expected_rejected.append((index, "NonceConflict"))
            else:
                pending.append(index)
        for index in pending:
            reason = self.refusal(items[index])
            if reason is None:
                self.apply(items[index])
                expected_recorded.append(index)
            else:
                expected_rejected.append((index, reason))

        report = relay(self.env.ledger, items, batch_size=batch_size)

        assert sorted(report.already_recorded) == expected_already
        assert [(r.index, r.error_name) for r in report.rejected] == sorted(expected_rejected)
        assert sorted(report.recorded) == expected_recorded

    @staticmethod
    def same_content(recorded: Interaction, item: Interaction) -> bool:
        """Whether `item` is the interaction recorded under its nonce, in every field the event carries."""
        fields = ("kind", "counterparty", "category", "records", "units", "data_hash")
        return all(str(getattr(recorded, f)).lower() == str(getattr(item, f)).lower() for f in fields)

    @rule(pick=st.integers(0, 63))
    def replay_directly(self, pick: int) -> None:
        """Bypass the relay's pre-check and mine a replayed nonce: the contract itself must refuse it."""
        institution = self.pick(pick)
        if not institution.used_nonces:
            return
        nonce = max(institution.used_nonces)
        interaction = Interaction(
            Kind.SYNC,
            institution.address,
            ZERO_ADDRESS,
            1,
            1,
            self.price(Kind.SYNC, 1, 1),
            "0x" + "77" * 32,
            nonce,
            FAR_FUTURE,
        )
        item = self.sign(interaction, institution.signer)
        expected = self.refusal(item)
        assert expected is not None
        assert batch_refusal(self.env, item).error_name == expected
        receipt = send_unchecked(self.env, self.env.ledger.record_batch_fn([item]), gas=500_000)
        assert receipt["status"] == 0

    # ------------------------------------------------------------------ settlement and pause rules

    @rule()
    def close_period(self) -> None:
        receipt = self.env.ledger.close_period()
        [closed] = event_args(self.env.ledger, receipt, "PeriodClosed")
        assert closed["fromBlock"] == self.last_period_end + 1
        assert closed["toBlock"] == receipt["blockNumber"] - 1
        functions = self.env.ledger.contract.functions
        assert functions.periodInstitutionCount(closed["period"]).call() == len(self.institutions)
        self.last_period_end = closed["toBlock"]
        self.closed_periods.append((closed["period"], len(self.institutions)))

    @rule(seed=st.integers(0, 2**32), supersede=st.booleans())
    def anchor_root_versions(self, seed: int, supersede: bool) -> None:
        """Anchor the latest closed period (version 1), optionally supersede it; every version stays readable."""
        unanchored = [(p, n) for p, n in self.closed_periods if p not in self.anchored]
        if not unanchored:
            return
        period, rows = unanchored[-1]
        functions = self.env.ledger.contract.functions
        transactor = self.env.ledger.transactor
        assert transactor is not None
        wrong_count = functions.anchorSettlement(period, keccak(text=f"{seed}"), rows + 1)
        assert expect_revert(self.env.ledger, wrong_count).error_name == "SettlementRowCountMismatch"
        roots = [keccak(text=f"root {seed} v1")]
        transactor.transact(functions.anchorSettlement(period, roots[0], rows))
        if supersede:
            roots.append(keccak(text=f"root {seed} v2"))
            transactor.transact(functions.supersedeSettlement(period, roots[1], rows, keccak(text="reason")))
        self.anchored[period] = roots
        for version, root in enumerate(roots, 1):
            assert functions.settlementVersion(period, version).call()[0] == root
        assert functions.settlementRoot(period).call() == roots[-1]

    @rule(pick=st.integers(0, 63))
    def dispute(self, pick: int) -> None:
        institution = self.pick(pick)
        functions = self.env.ledger.contract.functions
        period = functions.currentPeriod().call()[0]
        fn = functions.fileDispute(institution.address, period, keccak(text="an interaction"), keccak(text="why"))
        receipt = self.env.as_account(institution.signer).transactor.transact(fn)  # type: ignore[union-attr]
        assert len(event_args(self.env.ledger, receipt, "DisputeFiled")) == 1

    @rule(specs=st.lists(item_specs(st.one_of(st.none(), st.sampled_from(FLAWS))), min_size=1, max_size=2))
    def pause_then_unpause(self, specs: list[ItemSpec]) -> None:
        """Recording stops while paused, the registry does not, and recording resumes after. Pausing and
        resuming happen in one step so that the rest of the run is not spent paused."""
        ledger = self.env.ledger
        ledger.pause()
        self.paused = True
        assert expect_revert(ledger, ledger.contract.functions.pause()).error_name == "EnforcedPause"
        self.relay_and_compare(specs, batch_size=2)  # the model expects EnforcedPause for every pending item
        self.register(credit_line=500)
        ledger.unpause()
        self.paused = False
        assert expect_revert(ledger, ledger.contract.functions.unpause()).error_name == "ExpectedPause"

    # ------------------------------------------------------------------ invariants

    @invariant()
    def positions_match_the_model(self) -> None:
        positions = self.read_chain()["positions"]
        for institution in self.institutions:
            assert positions[institution.address] == (institution.balance, institution.debt), institution.address

    @invariant()
    def events_reconcile_with_balances(self) -> None:
        chain = self.read_chain()
        positions, events = chain["positions"], chain["events"]
        tallies = tally(events)
        for institution in self.institutions:
            balance, debt = positions[institution.address]
            institution_tally = tallies.get(institution.address)
            net = institution_tally.net if institution_tally else 0
            assert balance - debt == net, institution.address
        assert sum(b - d for b, d in positions.values()) == sum(t.credited - t.debited for t in tallies.values())
        assert set(tallies) <= {i.address for i in self.institutions}

    @invariant()
    def each_nonce_is_recorded_at_most_once(self) -> None:
        keys = [(event.institution, event.nonce) for event in self.read_chain()["events"]]
        assert len(keys) == len(set(keys))
        assert set(keys) == {(i.address, nonce) for i in self.institutions for nonce in i.used_nonces}

    @invariant()
    def every_recorded_interaction_was_signed_by_the_institutions_signer_at_its_block(self) -> None:
        """No position changes except through an interaction signed by the institution's signer at that block:
        positions equal the model (above), which moves only on accepted items, and each recorded event's
        signer (known to the model) is the signer the chain held for the institution at the event's block."""
        functions = self.env.ledger.contract.functions
        for event in self.read_chain()["events"]:
            if (event.institution, event.nonce, event.block_number) in self.checked_signers:
                continue
            holder = self.by_address(event.institution)
            assert holder is not None, event
            on_chain = functions.institution(event.institution).call(block_identifier=event.block_number)[2]
            assert holder.signed_by[event.nonce] == on_chain, (event, on_chain)
            self.checked_signers.add((event.institution, event.nonce, event.block_number))

    @invariant()
    def cancelled_nonces_are_never_recorded(self) -> None:
        recorded = {(e.institution, e.nonce) for e in self.read_chain()["events"]}
        for institution in self.institutions:
            assert not {(institution.address, n) for n in institution.cancelled_nonces} & recorded

    @invariant()
    def total_supply_is_the_sum_of_balances(self) -> None:
        chain = self.read_chain()
        assert chain["total_supply"] == sum(balance for balance, _ in chain["positions"].values())

    @invariant()
    def debts_respect_credit_lines_and_never_coexist_with_a_balance(self) -> None:
        positions = self.read_chain()["positions"]
        for institution in self.institutions:
            balance, debt = positions[institution.address]
            assert balance == 0 or debt == 0, institution.address
            assert debt <= institution.debt_ceiling, institution.address

    @invariant()
    def suspended_and_unregistered_positions_do_not_move(self) -> None:
        positions = self.read_chain()["positions"]
        for institution in self.institutions:
            if institution.status == "suspended":
                assert positions[institution.address] == institution.frozen, institution.address
        for outsider in self.outsiders:
            assert positions[outsider.address] == (0, 0)


def test_ledger_state_machine(w3: Web3, artifact: Artifact) -> None:
    LedgerMachine.w3 = w3
    LedgerMachine.artifact = artifact
    run_state_machine_as_test(LedgerMachine, settings=MACHINE_SETTINGS)
