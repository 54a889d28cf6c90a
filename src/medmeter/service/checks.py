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

from eth_utils import to_checksum_address

from medmeter.chain.ledger import Ledger
from medmeter.contract.facts import MAX_RECORDS_PER_INTERACTION, Kind
from medmeter.contract.revert_advice import STATUS_NAMES
from medmeter.relay import engine
from medmeter.relay.digests import Digester
from medmeter.settlement.crediting import gross_units
from medmeter.signing.interaction import ZERO_ADDRESS, SignedInteraction

REGISTRY_TTL_SECONDS = 2.0
TARIFF_TTL_SECONDS = 5.0


@dataclass(frozen=True)
class Refusal:
    error: str  # the ledger's custom error name (or WrongDomain, MalformedSignature)
    reason: str  # one sentence that says what to do


@dataclass(frozen=True)
class Profile:
    status: str
    signer: str
    fetched_at: float

    @property
    def signer_bytes(self) -> bytes:
        return bytes.fromhex(self.signer[2:])


class ChainView:
    """Registry entries and the tariff, read from the ledger and kept for a few seconds."""

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger
        self._profiles: dict[str, Profile] = {}
        self._rates: dict[int, tuple[int, int]] | None = None
        self._rates_at = 0.0
        self._lock = threading.Lock()
        self._used_bits: dict[tuple[str, int], int] = {}

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
        """Indices of `items` whose (institution, nonce) is used on chain (`engine.nonce_words`). A used
        bit never clears, so a set bit read once is remembered; an unset one is read again on every POST."""
        asked: dict[engine.NonceWord, int] = {}
        for item in items:
            key = (item.interaction.institution, item.interaction.nonce >> 8)
            asked[key] = asked.get(key, 0) | (1 << (item.interaction.nonce & 0xFF))
        # Bits known set are final; read a word again only if one of its asked bits is not known set.
        wanted = sorted(key for key, mask in asked.items() if mask & ~self._used_bits.get(key, 0))
        if wanted:
            read = engine.nonce_words(self.ledger, wanted)
            with self._lock:
                for key, value in read.items():
                    self._used_bits[key] = self._used_bits.get(key, 0) | value
        return engine.used_in(self._used_bits, items)

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
    recovered_bytes = digester.signer_bytes(item, digest)
    if recovered_bytes != profiles[interaction.institution].signer_bytes:
        recovered = None if recovered_bytes is None else to_checksum_address(recovered_bytes)
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
