"""What the service checks of each posted interaction before it stores it, against a cached view
of the chain (registry and tariff), so that 3,000 items a second cost no node round trip each.

The contract re-checks everything when the batch is relayed; these checks exist to refuse early,
with the ledger's error name and a sentence, what the contract would refuse anyway.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

from medmeter.chain.ledger import Ledger
from medmeter.contract.facts import MAX_RECORDS_PER_INTERACTION, Kind
from medmeter.contract.revert_advice import STATUS_NAMES
from medmeter.relay.digests import Digester
from medmeter.settlement.crediting import gross_units
from medmeter.signing.interaction import ZERO_ADDRESS, SignedInteraction

NONCE_BITMAP_SIGNATURE = "nonceBitmap(address,uint256)"
BITMAP_BATCH = 500

REGISTRY_TTL_SECONDS = 2.0
TARIFF_TTL_SECONDS = 5.0


class NodeAnswerError(Exception):
    """The node answered a read with an error or in a shape it should not have."""


@dataclass(frozen=True)
class Refusal:
    error: str  # the ledger's custom error name (or WrongDomain, MalformedSignature)
    reason: str  # one sentence that says what to do


@dataclass(frozen=True)
class Profile:
    status: str
    signer: str
    fetched_at: float


class ChainView:
    """Registry entries and the tariff, read from the ledger and kept for a few seconds."""

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger
        self._profiles: dict[str, Profile] = {}
        self._rates: dict[int, tuple[int, int]] | None = None
        self._rates_at = 0.0
        self._lock = threading.Lock()
        self._used_bits: dict[tuple[str, int], int] = {}
        self._selector: str | None = None

    def profiles(self, addresses: set[str], *, fresh: bool = False) -> dict[str, Profile]:
        now = time.monotonic()
        stale = [
            a
            for a in addresses
            if fresh or a not in self._profiles or now - self._profiles[a].fetched_at > REGISTRY_TTL_SECONDS
        ]
        if stale:
            fn = self.ledger.contract.functions.institution
            try:
                with self.ledger.w3.batch_requests() as batch:
                    for address in stale:
                        batch.add(fn(address))
                    answers = batch.execute()
            except Exception:
                # Node down: what was read before still holds for the checks (the contract re-checks
                # when it is back); an institution never seen cannot be checked and is not accepted.
                if all(a in self._profiles for a in addresses) and not fresh:
                    return {a: self._profiles[a] for a in addresses}
                raise
            with self._lock:
                for address, answer in zip(stale, answers, strict=True):
                    _code, _name, signer, status, _credit = answer
                    self._profiles[address] = Profile(STATUS_NAMES.get(status, str(status)), signer, now)
        return {a: self._profiles[a] for a in addresses}

    def used_nonces(self, items: list[SignedInteraction]) -> set[int]:
        """Indices of `items` whose (institution, nonce) is used on chain: the same question as
        `engine.find_already_recorded`, asked in one raw JSON-RPC batch of `eth_call`s (calldata encoded
        here, not by web3's contract machinery, which costs ~5 ms a call). A used bit never clears, so
        a set bit read once is remembered; an unset one is read again on every POST."""
        selector = self._bitmap_selector()
        if selector is None:  # the ledger has no nonceBitmap(address,uint256): the engine's way
            from medmeter.relay.engine import find_already_recorded

            return find_already_recorded(self.ledger, items)
        asked: dict[tuple[str, int], int] = {}
        for item in items:
            key = (item.interaction.institution, item.interaction.nonce >> 8)
            asked[key] = asked.get(key, 0) | (1 << (item.interaction.nonce & 0xFF))
        # Bits known set are final; read a word again only if one of its asked bits is not known set.
        wanted = sorted(key for key, mask in asked.items() if mask & ~self._used_bits.get(key, 0))
        if wanted:
            to = self.ledger.address
            calls = [
                (
                    "eth_call",
                    [{"to": to, "data": selector + institution[2:].lower().rjust(64, "0") + f"{word:064x}"}, "latest"],
                )
                for institution, word in wanted
            ]
            answers: list[Any] = []
            for start in range(0, len(calls), BITMAP_BATCH):
                chunk = calls[start : start + BITMAP_BATCH]
                answer = self.ledger.w3.provider.make_batch_request(chunk)  # type: ignore[arg-type]
                if not isinstance(answer, list) or len(answer) != len(chunk):
                    raise NodeAnswerError(f"the node answered {len(chunk)} eth_call with {answer!r:.200}")
                answers.extend(answer)
            for key, answer in zip(wanted, answers, strict=True):  # web3 sorts the answers by request id
                if "error" in answer or "result" not in answer:
                    raise NodeAnswerError(f"nonceBitmap{key} failed: {answer.get('error')}")
                value = int(answer["result"], 16) if answer["result"] not in ("0x", "") else 0
                with self._lock:
                    self._used_bits[key] = self._used_bits.get(key, 0) | value
        return {
            index
            for index, item in enumerate(items)
            if (self._used_bits.get((item.interaction.institution, item.interaction.nonce >> 8), 0))
            >> (item.interaction.nonce & 0xFF)
            & 1
        }

    def _bitmap_selector(self) -> str | None:
        if self._selector is None:
            from eth_utils import function_signature_to_4byte_selector

            found = any(
                entry.get("type") == "function"
                and entry.get("name") == "nonceBitmap"
                and [i["type"] for i in entry.get("inputs", [])] == ["address", "uint256"]
                for entry in self.ledger.contract.abi
            )
            self._selector = "0x" + function_signature_to_4byte_selector(NONCE_BITMAP_SIGNATURE).hex() if found else ""
        return self._selector or None

    def rates(self) -> dict[int, tuple[int, int]]:
        """category → (sync units per record, fetch units per record), for defined categories only."""
        now = time.monotonic()
        if self._rates is None or now - self._rates_at > TARIFF_TTL_SECONDS:
            from medmeter.app.operations import read_tariff

            try:
                self._rates, self._rates_at = dict(read_tariff(self.ledger).rates), now
            except Exception:
                if self._rates is None:
                    raise
        return self._rates


def price_refusal(item: SignedInteraction, rates: dict[int, tuple[int, int]]) -> Refusal | None:
    """The one place where an item's price is checked against the tariff: the `units` the institution
    signed must equal records x the category's rate (the crediting module's `gross_units`), or the
    contract refuses it with UnitsMismatch."""
    interaction = item.interaction
    rate = rates.get(interaction.category)
    if rate is None:
        return Refusal(
            "UnknownCategory",
            f"category {interaction.category} has no rate in the tariff: sign the interaction with a category the "
            "platform prices (see `medmeter tariff show`).",
        )
    expected = gross_units(interaction.kind.word, interaction.records, rate[0], rate[1])
    agreed = interaction.units
    if int(agreed) != expected:
        return Refusal(
            "UnitsMismatch",
            f"the interaction agrees to {agreed} units but the tariff prices {interaction.records} record(s) of "
            f"category {interaction.category} at {expected}: sign it again with the current tariff's price.",
        )
    return None


def check_item(
    item: SignedInteraction,
    digest: bytes,
    digester: Digester,
    view: ChainView,
    profiles: dict[str, Profile],
    now: float,
) -> Refusal | None:
    """Why the ledger would refuse `item`, or None. `profiles` holds its institution and counterparty."""
    interaction = item.interaction
    domain = view.ledger.domain
    if item.domain != domain:
        return Refusal(
            "WrongDomain",
            f"signed for chain {item.domain.chain_id} ledger {item.domain.verifying_contract}, but this platform "
            f"records on chain {domain.chain_id} ledger {domain.verifying_contract}: sign for this ledger.",
        )
    if interaction.deadline < now:
        return Refusal(
            "InteractionExpired",
            f"the signature's deadline {interaction.deadline} has passed: have the institution sign it again.",
        )
    kind = interaction.kind
    exchange = kind is Kind.EXCHANGE
    if exchange != (interaction.counterparty != ZERO_ADDRESS) or interaction.counterparty == interaction.institution:
        return Refusal(
            "InvalidCounterparty",
            f"a {kind.word} must {'name another institution' if exchange else 'have no'} counterparty: sign it again.",
        )
    if not 1 <= interaction.records <= MAX_RECORDS_PER_INTERACTION:
        return Refusal(
            "RecordsOutOfRange",
            f"records must be 1..{MAX_RECORDS_PER_INTERACTION}, got {interaction.records}: sign it again.",
        )
    for role, address in (("institution", interaction.institution), ("counterparty", interaction.counterparty)):
        if role == "counterparty" and not exchange:
            continue
        profile = profiles[address]
        if profile.status == "unregistered":
            return Refusal("InstitutionNotRegistered", f"the {role} {address} is not registered on this ledger.")
        if profile.status != "active":
            return Refusal(
                "InstitutionNotActive", f"the {role} {address} is {profile.status}: ask the platform to reinstate it."
            )
    recovered = digester.signer(item, digest)
    expected = profiles[interaction.institution].signer
    if recovered != expected:
        # The signer may have just been rotated: read the registry again before refusing.
        try:
            fresh = view.profiles({interaction.institution}, fresh=True)[interaction.institution]
        except Exception:
            fresh = profiles[interaction.institution]
        if recovered != fresh.signer:
            return Refusal(
                "InvalidSigner",
                f"the signature recovers to {recovered}, not to {interaction.institution}'s signer {fresh.signer}: "
                "have the institution sign with its registered key.",
            )
    return price_refusal(item, view.rates())


def addresses_of(items: list[SignedInteraction]) -> set[str]:
    out: set[str] = set()
    for item in items:
        out.add(item.interaction.institution)
        if item.interaction.counterparty != ZERO_ADDRESS:
            out.add(item.interaction.counterparty)
    return out


def jsonable(value: Any) -> Any:
    return value
