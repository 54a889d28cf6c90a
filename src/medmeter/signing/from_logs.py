"""Signing what a health-information exchange already logs: metering candidates read from FHIR
AuditEvents or a Bulk Data manifest (`medmeter.intake`) become signed interactions.

Each institution signs only the candidates in which it is the one that pays or is credited (its
own code); the nonces come from the events' identity (`intake.audit_events.derive_nonce`), so
signing the same log twice gives the same interactions and the ledger records each at most once.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

from eth_account.signers.local import LocalAccount

from medmeter.chain.ledger import Ledger
from medmeter.contract.facts import Kind
from medmeter.errors import InputError
from medmeter.intake.audit_events import MeteringCandidate
from medmeter.intake.categories import category_by_name
from medmeter.signing.interaction import ZERO_ADDRESS, Interaction, SignedInteraction, sign_interaction


@dataclass(frozen=True)
class SignedFromLog:
    signed: list[SignedInteraction]
    others: int  # candidates another institution signs
    already_used: int  # nonces the ledger has already recorded or cancelled: nothing to sign again


def registered_codes(ledger: Ledger) -> dict[str, str]:
    """Institution code -> address, for every registered institution."""
    return {info.code: info.address for info in ledger.institutions()}


def sign_candidates(
    ledger: Ledger, account: LocalAccount, institution: str, candidates: Sequence[MeteringCandidate], valid_for: int
) -> SignedFromLog:
    codes = registered_codes(ledger)
    mine = [c for c in candidates if codes.get(c.institution) == institution]
    signed, used = [], 0
    deadline = int(time.time()) + valid_for
    prices: dict[tuple[Kind, int], int] = {}  # units per record, read once per (kind, category), not per event
    for candidate in mine:
        if ledger.is_nonce_used(institution, candidate.nonce):
            used += 1
            continue
        kind = Kind.parse(candidate.kind)
        counterparty = ZERO_ADDRESS
        if kind is Kind.EXCHANGE:
            if candidate.counterparty not in codes:
                raise InputError(
                    f"{candidate.source}: the providing institution {candidate.counterparty!r} is not registered."
                )
            counterparty = codes[candidate.counterparty]
        category = category_by_name(candidate.category).id
        if (kind, category) not in prices:
            prices[(kind, category)] = ledger.price(kind, category, 1)
        interaction = Interaction(
            kind=kind,
            institution=institution,
            counterparty=counterparty,
            category=category,
            records=candidate.records,
            units=candidate.records * prices[(kind, category)],
            data_hash=candidate.data_hash,
            nonce=candidate.nonce,
            deadline=deadline,
        )
        signed.append(sign_interaction(interaction, ledger.domain, account))
    return SignedFromLog(signed, len(candidates) - len(mine), used)
