"""The adjustment lines a reversal gives each institution (the crediting rule run backwards)."""

from __future__ import annotations

from typing import Any

import pytest

from medmeter.contract.facts import Kind
from medmeter.settlement.corrections import REVERSAL_COLUMNS, RecordedInteraction, reversal_lines
from medmeter.signing.interaction import ZERO_ADDRESS, Interaction

CLINIC = "0x" + "A1" * 20
PROVIDER = "0x" + "B2" * 20
CODES = {CLINIC: "CL-A", PROVIDER: "CL-B"}


def original(kind: Kind, units: int, fee: int = 0, institution: str = CLINIC) -> RecordedInteraction:
    counterparty = PROVIDER if kind is Kind.EXCHANGE else ZERO_ADDRESS
    interaction = Interaction(kind, institution, counterparty, 2, 3, units, "0x" + "cd" * 32, 9, 2**40)
    return RecordedInteraction("0x" + "ee" * 32, interaction, fee, "0x" + "12" * 32, 4, 77)


def recorded(units: int) -> dict[str, Any]:
    return {
        "period": 3,
        "block_number": 90,
        "tx_hash": "0x" + "34" * 32,
        "log_index": 0,
        "institution": CLINIC,
        "original_digest": "0x" + "ee" * 32,
        "units": units,
        "reason_hash": "0x" + "56" * 32,
    }


@pytest.mark.parametrize(("kind", "expected"), [(Kind.SYNC, -12), (Kind.FETCH, 12)])
def test_a_sync_reversed_takes_back_its_credit_and_a_fetch_gives_back_its_debit(kind: Kind, expected: int) -> None:
    [line] = reversal_lines(recorded(12), original(kind, 12), 2, CODES)
    assert list(line) == list(REVERSAL_COLUMNS)
    assert (line["institution"], line["code"], line["side"], line["status"]) == (CLINIC, "CL-A", kind.word, "applied")
    assert (line["adjustment_units"], line["fee_units"], line["original_period"]) == (expected, 0, 2)


def test_an_exchange_reversed_in_part_returns_the_consumers_units_and_the_providers_credit_pro_rata() -> None:
    consumer, provider = reversal_lines(recorded(7), original(Kind.EXCHANGE, 20, fee=3), 2, CODES)
    assert (consumer["side"], consumer["adjustment_units"]) == ("exchange_out", 7)
    fee = 3 * 7 // 20  # 1, rounded down
    assert (provider["institution"], provider["side"]) == (PROVIDER, "exchange_in")
    assert (provider["adjustment_units"], provider["fee_units"]) == (-(7 - fee), fee)
    whole = reversal_lines(recorded(20), original(Kind.EXCHANGE, 20, fee=3), 2, CODES)
    assert [line["adjustment_units"] for line in whole] == [20, -17] and whole[1]["fee_units"] == 3


@pytest.mark.parametrize(
    ("found", "units", "status"),
    [
        (None, 5, "unresolved"),
        (original(Kind.FETCH, 12, institution=PROVIDER), 5, "signed by"),
        (original(Kind.FETCH, 4), 5, "more units than the original's 4"),
    ],
)
def test_a_reversal_that_cannot_apply_moves_nothing_and_says_why(
    found: RecordedInteraction | None, units: int, status: str
) -> None:
    [line] = reversal_lines(recorded(units), found, None, CODES)
    assert line["adjustment_units"] == 0 and line["fee_units"] == 0
    assert status in line["status"] and line["status"] != "applied"
