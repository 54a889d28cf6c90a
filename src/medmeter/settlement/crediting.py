"""The crediting rule, written once for everything that turns recorded interactions into money.

The contract applies it on chain; this module states it for the rows of the export:

* a `sync` credits the institution its units;
* a `fetch` debits the institution its units;
* an `exchange` debits the consuming institution (`institution`) the full units and credits the
  providing institution (`counterparty`) the units less the platform fee, which is burned: the
  fee is no one's balance, it is the platform's income, shown as the provider's `fee_units`.

`postings` expands each row into the entries it makes on institutions' accounts; settlement rows,
balances and the net-position chart are sums of those entries, so none of them restates the rule.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from medmeter.contract.facts import BPS_DENOMINATOR

# Posting names; each is a column pair `<name>_count`, `<name>_units` of a settlement row.
SYNC, FETCH, EXCHANGE_IN, EXCHANGE_OUT = "sync", "fetch", "exchange_in", "exchange_out"
POSTINGS = (SYNC, FETCH, EXCHANGE_IN, EXCHANGE_OUT)
CREDITS = (SYNC, EXCHANGE_IN)
DEBITS = (FETCH, EXCHANGE_OUT)

# The per-institution figures `tally` returns, in settlement-row order.
TALLY_COLUMNS: tuple[str, ...] = (
    *(f"{p}_{what}" for p in POSTINGS for what in ("count", "units")),
    "fee_units",
    "credited_units",
    "debited_units",
    "net_units",
)


def gross_units(kind: str, records: int, sync_rate: int, fetch_rate: int) -> int:
    """What an interaction is worth, as the contract prices it: records x the sync rate for a sync,
    x the fetch rate for a fetch or an exchange. The institution signs exactly this figure."""
    return records * (sync_rate if kind == "sync" else fetch_rate)


def platform_fee(units: int, fee_bps: int) -> int:
    """The fee the contract withholds from an exchange's units (rounded down, as Solidity divides)."""
    return units * fee_bps // BPS_DENOMINATOR


def postings(interactions: pd.DataFrame, carry: Sequence[str] = ()) -> pd.DataFrame:
    """One row per account entry: `block_number`, `institution`, `posting`, `units` (>= 0), `fee`,
    plus the interaction's `carry` columns (e.g. `category_name`).

    `fee` is the fee withheld from that entry (non-zero only on `exchange_in`); `units` is what
    the account is credited or debited, per `CREDITS` and `DEBITS`.
    """
    kind = interactions["kind"]
    exchange = interactions[kind == "exchange"]
    parts = [
        _entries(interactions[kind == "sync"], "institution", SYNC, None, carry),
        _entries(interactions[kind == "fetch"], "institution", FETCH, None, carry),
        _entries(exchange, "institution", EXCHANGE_OUT, None, carry),
        _entries(exchange, "counterparty", EXCHANGE_IN, exchange["fee"], carry),
    ]
    return pd.concat(parts, ignore_index=True)


def _entries(
    rows: pd.DataFrame, account: str, posting: str, fee: pd.Series | None, carry: Sequence[str]
) -> pd.DataFrame:
    withheld = fee.to_numpy(dtype="int64") if fee is not None else np.zeros(len(rows), dtype="int64")
    columns = {
        "block_number": rows["block_number"].to_numpy(dtype="int64"),
        "institution": rows[account].to_numpy(dtype=object),
        "posting": posting,
        "units": rows["units"].to_numpy(dtype="int64") - withheld,
        "fee": withheld,
    }
    columns.update({name: rows[name].to_numpy() for name in carry})
    return pd.DataFrame(columns)


def signed_units(entries: pd.DataFrame) -> pd.Series:
    """Each entry's effect on its account's net position: + for credits, - for debits."""
    return entries["units"].where(entries["posting"].isin(CREDITS), -entries["units"])


def tally(interactions: pd.DataFrame, addresses: Sequence[str]) -> pd.DataFrame:
    """`TALLY_COLUMNS` per institution (index: `addresses`, in that order), zero where none."""
    entries = postings(interactions)
    grouped = entries.groupby(["institution", "posting"])["units"].agg(["size", "sum"])
    out = pd.DataFrame(index=pd.Index(list(addresses), name="institution"))
    for posting in POSTINGS:
        part = grouped.xs(posting, level="posting") if posting in grouped.index.get_level_values(1) else None
        for what, column in (("count", "size"), ("units", "sum")):
            values = part[column] if part is not None else pd.Series(dtype="int64")
            out[f"{posting}_{what}"] = values.reindex(out.index, fill_value=0).astype("int64")
    fees = entries.groupby("institution")["fee"].sum()
    out["fee_units"] = fees.reindex(out.index, fill_value=0).astype("int64")
    out["credited_units"] = sum(out[f"{p}_units"] for p in CREDITS)
    out["debited_units"] = sum(out[f"{p}_units"] for p in DEBITS)
    out["net_units"] = out["credited_units"] - out["debited_units"]
    return out[list(TALLY_COLUMNS)]
