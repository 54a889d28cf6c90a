"""Every exported interaction priced again from the tariff the chain held when it was recorded.

The contract computes `units = records x rate(kind, category)` and the exchange fee from the
platform fee in force; counters (see `settlement.period.reconcile_counters`) prove the sums per
institution, and this check proves each row: a node or an edited export that changes a row's
category or record count while keeping every sum is caught here, unless the two categories have
the same rate (then the row's price is right and only its label is wrong, which no on-chain figure
can show).

The tariff in force at the start of the period is read with `rateOf`/`platformFeeBps` at
`from_block - 1`; changes inside the period come from the `TariffRateSet` and `PlatformFeeSet`
events, applied in (block, log index) order before the interactions that follow them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from medmeter.chain.ledger import Ledger
from medmeter.errors import ReconciliationError
from medmeter.settlement.crediting import platform_fee

# Rows shown in the error before "and N more".
SHOWN = 8


def _tariff_at(ledger: Ledger, categories: Sequence[int], block: int) -> tuple[dict[int, tuple[int, int]], int]:
    if block < ledger.deployment.block:
        return {}, 0
    functions = ledger.contract.functions
    rates = {}
    for category in categories:
        sync_rate, fetch_rate, defined = ledger.call(functions.rateOf(category), block)
        if defined:
            rates[category] = (int(sync_rate), int(fetch_rate))
    return rates, int(ledger.call(functions.platformFeeBps(), block))


def _changes(ledger: Ledger, from_block: int, to_block: int) -> list[tuple[int, int, str, Any]]:
    """(block, log index, what, value) of every tariff change in the blocks, in chain order."""
    events = ledger.contract.events
    changes: list[tuple[int, int, str, Any]] = []
    for log in events.TariffRateSet.get_logs(from_block=from_block, to_block=to_block):
        args = log["args"]
        changes.append(
            (
                log["blockNumber"],
                log["logIndex"],
                "rate",
                (int(args["category"]), int(args["syncUnitsPerRecord"]), int(args["fetchUnitsPerRecord"])),
            )
        )
    for log in events.PlatformFeeSet.get_logs(from_block=from_block, to_block=to_block):
        changes.append((log["blockNumber"], log["logIndex"], "fee", int(log["args"]["feeBps"])))
    return sorted(changes)


def _expected(kind: str, category: int, records: int, units: int, rates: dict[int, tuple[int, int]], fee_bps: int):
    rate = rates.get(category)
    if rate is None:
        return None, None
    expected_units = records * (rate[0] if kind == "sync" else rate[1])
    expected_fee = platform_fee(units, fee_bps) if kind == "exchange" else 0
    return expected_units, expected_fee


def check_pricing(ledger: Ledger, interactions: pd.DataFrame, period: int, from_block: int, to_block: int) -> None:
    """Raise `ReconciliationError` naming each row whose units or fee are not what the tariff gives."""
    if interactions.empty:
        return
    categories = sorted({int(c) for c in interactions["category"].unique()})
    rates, fee_bps = _tariff_at(ledger, categories, from_block - 1)
    changes = _changes(ledger, max(from_block, ledger.deployment.block), to_block)
    bad: list[str] = []
    wrong = 0
    if not changes:
        wrong, bad = _check_constant(interactions, rates, fee_bps)
    else:
        ordered = interactions.sort_values(["block_number", "log_index"])
        pending = iter(changes)
        upcoming = next(pending, None)
        for row in ordered.itertuples(index=False):
            while upcoming is not None and (upcoming[0], upcoming[1]) < (row.block_number, row.log_index):
                if upcoming[2] == "rate":
                    category, sync_rate, fetch_rate = upcoming[3]
                    rates[category] = (sync_rate, fetch_rate)
                else:
                    fee_bps = upcoming[3]
                upcoming = next(pending, None)
            units, fee = _expected(row.kind, int(row.category), int(row.records), int(row.units), rates, fee_bps)
            if (units, fee) != (int(row.units), int(row.fee)):
                wrong += 1
                if len(bad) < SHOWN:
                    bad.append(_describe(row, units, fee))
    if wrong:
        shown = "; ".join(bad) + (f"; and {wrong - len(bad)} more" if wrong > len(bad) else "")
        raise ReconciliationError(
            f"period {period}: {wrong} exported interaction(s) are not priced as the chain's tariff prices them: "
            f"{shown}. The exported events are not the chain's: re-export with `medmeter export --restart` from a "
            "node you trust and report again."
        )


def _check_constant(
    interactions: pd.DataFrame, rates: dict[int, tuple[int, int]], fee_bps: int
) -> tuple[int, list[str]]:
    """The vectorised case: one tariff for the whole period. (rows wrong, the first SHOWN described)"""
    category = interactions["category"].to_numpy(dtype="int64")
    known = np.isin(category, list(rates))
    sync_rate = np.array([rates.get(int(c), (0, 0))[0] for c in category], dtype="int64")
    fetch_rate = np.array([rates.get(int(c), (0, 0))[1] for c in category], dtype="int64")
    is_sync = (interactions["kind"] == "sync").to_numpy()
    is_exchange = (interactions["kind"] == "exchange").to_numpy()
    units = interactions["units"].to_numpy(dtype="int64")
    expected_units = interactions["records"].to_numpy(dtype="int64") * np.where(is_sync, sync_rate, fetch_rate)
    expected_fee = np.where(is_exchange, platform_fee(units, fee_bps), 0)
    wrong = ~known | (expected_units != units) | (expected_fee != interactions["fee"].to_numpy(dtype="int64"))
    out = []
    for index in np.flatnonzero(wrong)[:SHOWN]:
        row = interactions.iloc[int(index)]
        out.append(
            _describe(
                row,
                int(expected_units[index]) if known[index] else None,
                int(expected_fee[index]) if known[index] else None,
            )
        )
    return int(wrong.sum()), out


def _describe(row: Any, units: int | None, fee: int | None) -> str:
    where = f"tx {row.tx_hash} log {row.log_index} ({row.kind}, category {row.category}, {row.records} records)"
    if units is None:
        return f"{where} names a category with no tariff"
    return f"{where} has units {row.units} and fee {row.fee}, the tariff gives {units} and {fee}"
