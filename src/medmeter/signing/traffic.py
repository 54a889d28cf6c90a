"""Reproducible synthetic traffic: for a seed, the same interactions every time.

Each interaction starts as a synthetic FHIR bundle, is summarized on the "institution's
machine" (hash, category, count) and signed with that institution's own key. The
simulator keeps a shadow of every position so that it only generates debits the
credit line allows: every generated interaction is valid when relayed in order.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from eth_account.signers.local import LocalAccount

from medmeter.intake.categories import CATEGORIES, Category
from medmeter.intake.payload import content_hash, summarize_fhir_bundle
from medmeter.intake.synthetic import synthetic_bundle
from medmeter.settlement.crediting import gross_units, platform_fee
from medmeter.signing.interaction import ZERO_ADDRESS, Domain, Interaction, InteractionSigner, Kind, SignedInteraction

KIND_WEIGHTS = {Kind.SYNC: 0.45, Kind.FETCH: 0.25, Kind.EXCHANGE: 0.30}
MAX_RECORDS = 20
DEADLINE_SECONDS = 30 * 24 * 3600


@dataclass(frozen=True)
class SimulatedInstitution:
    address: str
    signer: LocalAccount
    credit_line: int
    balance: int = 0
    debt: int = 0
    first_nonce: int = 0


@dataclass(frozen=True)
class Tariff:
    rates: dict[int, tuple[int, int]]  # category -> (sync, fetch) units per record
    fee_bps: int


class TrafficGenerator:
    """Synthetic traffic that can be drawn in windows: positions, nonces and the random stream
    carry over, so `take(a)` then `take(b)` gives exactly what `take(a + b)` would."""

    def __init__(
        self,
        institutions: Sequence[SimulatedInstitution],
        tariff: Tariff,
        domain: Domain,
        seed: int,
        now: int,
        *,
        validate_fhir: bool = True,
    ) -> None:
        if len(institutions) < 2:
            raise ValueError("simulation needs at least two institutions for exchanges")
        self.institutions = list(institutions)
        self.tariff = tariff
        self.now = now
        self.validate_fhir = validate_fhir
        self.rng = random.Random(seed)
        self.position = {i.address: i.balance - i.debt for i in institutions}
        self.nonce = {i.address: i.first_nonce for i in institutions}
        self.signers = {i.address: InteractionSigner(domain, i.signer) for i in institutions}
        self.categories: list[Category] = [c for c in CATEGORIES if c.id in tariff.rates]
        self.produced = 0

    def take(self, count: int, progress: Callable[[int], None] | None = None) -> list[SignedInteraction]:
        rng, position, tariff = self.rng, self.position, self.tariff
        kinds, weights = list(KIND_WEIGHTS), list(KIND_WEIGHTS.values())
        out: list[SignedInteraction] = []
        while len(out) < count:
            actor = rng.choice(self.institutions)
            kind = rng.choices(kinds, weights)[0]
            category = rng.choice(self.categories)
            records = rng.randint(1, MAX_RECORDS)
            sync_rate, fetch_rate = tariff.rates[category.id]
            counterparty = ZERO_ADDRESS
            if kind is Kind.SYNC:
                position[actor.address] += records * sync_rate
            else:
                units = records * fetch_rate
                if position[actor.address] - units < -actor.credit_line:
                    kind, units = Kind.SYNC, 0  # the clinic delivers instead, as a real one would have to
                    position[actor.address] += records * sync_rate
                else:
                    position[actor.address] -= units
                if kind is Kind.EXCHANGE:
                    provider = rng.choice([i for i in self.institutions if i.address != actor.address])
                    counterparty = provider.address
                    position[provider.address] += units - platform_fee(units, tariff.fee_bps)
            payload = synthetic_bundle(rng, category, records)
            if self.validate_fhir:
                summary = summarize_fhir_bundle(payload, f"synthetic bundle {self.produced}", category.id)
                data_hash, records = summary.data_hash, summary.records
            else:
                data_hash = content_hash(payload)
            interaction = Interaction(
                kind=kind,
                institution=actor.address,
                counterparty=counterparty,
                category=category.id,
                records=records,
                units=gross_units(kind.word, records, sync_rate, fetch_rate),
                data_hash=data_hash,
                nonce=self.nonce[actor.address],
                deadline=self.now + DEADLINE_SECONDS,
            )
            self.nonce[actor.address] += 1
            self.produced += 1
            out.append(self.signers[actor.address].sign(interaction))
            if progress:
                progress(1)
        return out


def simulate(
    institutions: Sequence[SimulatedInstitution],
    tariff: Tariff,
    domain: Domain,
    count: int,
    seed: int,
    now: int,
    *,
    validate_fhir: bool = True,
    progress: Callable[[int], None] | None = None,
) -> list[SignedInteraction]:
    """`count` signed interactions, all valid when relayed in order."""
    generator = TrafficGenerator(institutions, tariff, domain, seed, now, validate_fhir=validate_fhir)
    return generator.take(count, progress)
