"""The per-institution tally (the patent's settlement metering value) from events, next to
the contract's own balance and debt."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from medmeter.chain.ledger import InstitutionInfo, Position
from medmeter.export.reference_decoder import RecordedInteraction
from medmeter.signing.interaction import Kind


@dataclass
class InstitutionTally:
    credited: int = 0
    debited: int = 0
    counts: dict[Kind, int] = field(default_factory=lambda: dict.fromkeys(Kind, 0))

    @property
    def net(self) -> int:
        return self.credited - self.debited


def tally(interactions: Iterable[RecordedInteraction]) -> dict[str, InstitutionTally]:
    """Credits and debits per institution, by the ledger's rules, from events alone."""
    tallies: dict[str, InstitutionTally] = {}

    def of(address: str) -> InstitutionTally:
        return tallies.setdefault(address, InstitutionTally())

    for event in interactions:
        kind = Kind(event.kind)
        actor = of(event.institution)
        actor.counts[kind] += 1
        if kind is Kind.SYNC:
            actor.credited += event.units
        else:
            actor.debited += event.units
            if kind is Kind.EXCHANGE:
                of(event.counterparty).credited += event.units - event.fee
    return tallies


@dataclass(frozen=True)
class BalanceRow:
    institution: InstitutionInfo
    position: Position
    tally: InstitutionTally

    @property
    def reconciles(self) -> bool:
        """balance - debt from the contract equals credits - debits from events."""
        return self.position.balance - self.position.debt == self.tally.net


def balance_rows(
    institutions: list[InstitutionInfo], positions: dict[str, Position], tallies: dict[str, InstitutionTally]
) -> list[BalanceRow]:
    return [BalanceRow(i, positions[i.address], tallies.get(i.address, InstitutionTally())) for i in institutions]
