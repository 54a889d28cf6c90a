"""Per-period settlement from the exported interactions, reconciled with the contract's state.

Period `p` spans blocks `fromBlock..toBlock` (inclusive, from `periodRange(p)`); the state at
`toBlock` is final for the period. For each institution registered at `toBlock`:

    opening position (balance - debt at fromBlock - 1) + net_units (from events)
        == closing position (balance - debt at toBlock)

must hold to the unit, or the report stops with a `ReconciliationError` naming the institution.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
from eth_abi import decode as abi_decode

from medmeter.chain.ledger import InstitutionInfo, Ledger, Position
from medmeter.errors import MedmeterError, ReconciliationError
from medmeter.fileio import write_atomic
from medmeter.settlement.crediting import tally
from medmeter.settlement.pricing import check_pricing

# Columns of reports/settlement-<period>.csv, in order (documented in the README).
SETTLEMENT_COLUMNS: tuple[str, ...] = (
    "period",
    "from_block",
    "to_block",
    "institution",
    "code",
    "name",
    "sync_count",
    "sync_units",
    "fetch_count",
    "fetch_units",
    "exchange_in_count",
    "exchange_in_units",
    "exchange_out_count",
    "exchange_out_units",
    "fee_units",
    "credited_units",
    "debited_units",
    "net_units",
    "opening_balance",
    "opening_debt",
    "closing_balance",
    "closing_debt",
)
CATEGORY_COLUMNS: tuple[str, ...] = (
    "period",
    "category",
    "category_name",
    "kind",
    "interactions",
    "records",
    "units",
    "fee_units",
)
PLATFORM_FEE_COLUMNS: tuple[str, ...] = (
    "period",
    "from_block",
    "to_block",
    "from_time",
    "to_time",
    "exchanges",
    "exchanged_units",
    "fee_units",
)
MATRIX_INDEX = "consumer_code"
# The settlement CSV's last row sums every institution; its `code` cell says so.
TOTAL_CODE = "TOTAL"
FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")
KINDS = ("sync", "fetch", "exchange")
_INT64_LIMIT = 2**63


@dataclass(frozen=True)
class PeriodInfo:
    period: int
    from_block: int
    to_block: int
    # Timestamps (UTC) of the period's first and last blocks, for readers who think in dates.
    from_time: datetime | None = None
    to_time: datetime | None = None


@dataclass(frozen=True)
class PeriodSettlement:
    info: PeriodInfo
    institutions: tuple[InstitutionInfo, ...]
    rows: pd.DataFrame  # SETTLEMENT_COLUMNS, one row per institution, in registration order
    matrix: pd.DataFrame  # units consumers (index) were debited for providers' (columns) data
    categories: pd.DataFrame  # CATEGORY_COLUMNS
    interactions: pd.DataFrame  # the period's exported rows

    @property
    def period(self) -> int:
        return self.info.period

    def codes(self) -> dict[str, str]:
        return {i.address: i.code for i in self.institutions}


@dataclass(frozen=True)
class SettlementFiles:
    settlement_csv: Path
    matrix_csv: Path
    categories_csv: Path
    platform_fees_csv: Path

    def all(self) -> tuple[Path, ...]:
        return (self.settlement_csv, self.matrix_csv, self.categories_csv, self.platform_fees_csv)


# ---------------------------------------------------------------------------------- pure steps


def period_interactions(dataset: pd.DataFrame, info: PeriodInfo) -> pd.DataFrame:
    """The period's rows; the dataset's period column must agree with the contract's block range."""
    in_range = dataset["block_number"].between(info.from_block, info.to_block)
    labelled = dataset["period"] == info.period
    disagree = dataset[in_range != labelled]
    if len(disagree):
        first = disagree.iloc[0]
        raise ReconciliationError(
            f"the exported dataset puts {len(disagree)} interaction(s) in the wrong period, first tx "
            f"{first['tx_hash']} (block {first['block_number']}, period {first['period']}) while the contract says "
            f"period {info.period} is blocks {info.from_block}..{info.to_block}: re-export with "
            "`medmeter export --restart` and report again."
        )
    return dataset[labelled].reset_index(drop=True)


def check_attribution(interactions: pd.DataFrame, institutions: Sequence[InstitutionInfo], period: int) -> None:
    """Every row must name registered institutions, with a counterparty exactly when it is an exchange."""
    registered = {i.address for i in institutions}
    is_exchange = interactions["kind"] == "exchange"
    bad = ~interactions["institution"].isin(registered) | ~interactions["kind"].isin(KINDS)
    bad |= is_exchange & ~interactions["counterparty"].isin(registered)
    bad |= ~is_exchange & interactions["counterparty"].notna()
    if bad.any():
        rows = interactions[bad]
        first = rows.iloc[0]
        raise ReconciliationError(
            f"{len(rows)} interaction(s) of period {period} cannot be attributed to registered institutions, "
            f"first: tx {first['tx_hash']} log {first['log_index']} ({first['kind']} by {first['institution']}, "
            f"counterparty {first['counterparty']}): the dataset does not come from this ledger or was altered; "
            "re-export with `medmeter export --restart`."
        )


def _guard_sums(interactions: pd.DataFrame) -> None:
    if len(interactions) and int(interactions["units"].max()) * len(interactions) >= _INT64_LIMIT:
        raise MedmeterError(
            f"period units could exceed 2**63 ({len(interactions)} rows up to {interactions['units'].max()} units): "
            "split the period into shorter ones."
        )


def tally_period(interactions: pd.DataFrame, institutions: Sequence[InstitutionInfo], info: PeriodInfo) -> pd.DataFrame:
    """Counts and units per institution by the crediting rule (positions not yet attached)."""
    _guard_sums(interactions)
    addresses = [i.address for i in institutions]
    figures = tally(interactions, addresses).reset_index(drop=True)
    head = pd.DataFrame(
        {
            "period": info.period,
            "from_block": info.from_block,
            "to_block": info.to_block,
            "institution": addresses,
            "code": [i.code for i in institutions],
            "name": [i.name for i in institutions],
        }
    )
    return pd.concat([head, figures], axis=1)


def attach_positions(rows: pd.DataFrame, opening: dict[str, Position], closing: dict[str, Position]) -> pd.DataFrame:
    out = rows.copy()
    out["opening_balance"] = [opening[a].balance for a in out["institution"]]
    out["opening_debt"] = [opening[a].debt for a in out["institution"]]
    out["closing_balance"] = [closing[a].balance for a in out["institution"]]
    out["closing_debt"] = [closing[a].debt for a in out["institution"]]
    return out[list(SETTLEMENT_COLUMNS)]


def reconcile(rows: pd.DataFrame) -> None:
    """opening position + net units == closing position, per institution; raises naming every mismatch."""
    problems = []
    for row in rows.itertuples(index=False):
        opening = int(row.opening_balance) - int(row.opening_debt)
        closing = int(row.closing_balance) - int(row.closing_debt)
        expected = opening + int(row.net_units)
        if expected != closing:
            problems.append(
                f"{row.code} ({row.institution}): opening position {opening} + net {int(row.net_units)} from events "
                f"= {expected}, but the contract's closing position (balance - debt) at block {row.to_block} is "
                f"{closing} (events differ by {expected - closing:+d} units)"
            )
    if problems:
        period = int(rows["period"].iloc[0])
        raise ReconciliationError(
            f"period {period} does not reconcile for {len(problems)} institution(s): "
            + "; ".join(problems)
            + ". The exported events do not match the chain: re-export with `medmeter export --restart` and report "
            "again; if the difference stays, report this ledger to the platform operator."
        )


def exchange_matrix(interactions: pd.DataFrame, institutions: Sequence[InstitutionInfo]) -> pd.DataFrame:
    """Units each consumer (row) was debited for each provider's (column) data, labelled by code."""
    codes = {i.address: i.code for i in institutions}
    order = [i.code for i in institutions]
    exchange = interactions[interactions["kind"] == "exchange"]
    matrix = (
        exchange.assign(consumer=exchange["institution"].map(codes), provider=exchange["counterparty"].map(codes))
        .pivot_table(index="consumer", columns="provider", values="units", aggfunc="sum", fill_value=0)
        .reindex(index=order, columns=order, fill_value=0)
        .astype("int64")
    )
    matrix.index.name = MATRIX_INDEX
    matrix.columns.name = None
    return matrix


def category_breakdown(interactions: pd.DataFrame, period: int) -> pd.DataFrame:
    """Interactions, records, units and platform fees per (category, kind)."""
    if interactions.empty:
        return pd.DataFrame(
            {c: pd.Series(dtype=object if c in ("category_name", "kind") else "int64") for c in CATEGORY_COLUMNS}
        )
    grouped = (
        interactions.groupby(["category", "category_name", "kind"], sort=True)
        .agg(
            interactions=("units", "size"), records=("records", "sum"), units=("units", "sum"), fee_units=("fee", "sum")
        )
        .reset_index()
    )
    grouped.insert(0, "period", period)
    return grouped[list(CATEGORY_COLUMNS)]


# ---------------------------------------------------------------------------------- chain reads


def read_positions(ledger: Ledger, addresses: Sequence[str], block: int) -> dict[str, Position]:
    """balanceOf and debtOf of every address at `block`, in one JSON-RPC batch; zero before the deployment."""
    if block < ledger.deployment.block:
        return {a: Position(0, 0) for a in addresses}
    calls = []
    for address in addresses:
        for name in ("balanceOf", "debtOf"):
            data = ledger.contract.encode_abi(name, [address])
            calls.append(("eth_call", [{"to": ledger.address, "data": data}, hex(block)]))
    if not calls:
        return {}
    responses = ledger.w3.provider.make_batch_request(calls)
    if not isinstance(responses, list):
        responses = [responses] * len(calls)
    values = []
    for response in responses:
        if "error" in response or response.get("result") in (None, "0x"):
            raise MedmeterError(
                f"the node could not read balances at block {block} ({response.get('error')}): it must keep "
                "historical state (an archive node, or anvil/ganache); point --rpc-url at one."
            )
        values.append(int(response["result"], 16))
    return {a: Position(values[2 * i], values[2 * i + 1]) for i, a in enumerate(addresses)}


# The contract's `Counters` fields, each the settlement column it is the cumulative total of.
COUNTER_FIELDS: dict[str, str] = {
    "syncCount": "sync_count",
    "syncUnits": "sync_units",
    "fetchCount": "fetch_count",
    "fetchUnits": "fetch_units",
    "exchangeInCount": "exchange_in_count",
    "exchangeInUnits": "exchange_in_units",
    "exchangeOutCount": "exchange_out_count",
    "exchangeOutUnits": "exchange_out_units",
    "feeUnits": "fee_units",
}


def read_counters(ledger: Ledger, addresses: Sequence[str], block: int) -> dict[str, dict[str, int]]:
    """`countersOf` of every address at `block` (settlement column -> cumulative total), in one JSON-RPC
    batch; zero before the deployment."""
    zero = dict.fromkeys(COUNTER_FIELDS.values(), 0)
    if block < ledger.deployment.block or not addresses:
        return {a: dict(zero) for a in addresses}
    fn = ledger.contract.get_function_by_name("countersOf")
    calls = [
        ("eth_call", [{"to": ledger.address, "data": ledger.contract.encode_abi("countersOf", [a])}, hex(block)])
        for a in addresses
    ]
    responses = ledger.w3.provider.make_batch_request(calls)
    if not isinstance(responses, list):
        responses = [responses] * len(calls)
    output_types = [f"({','.join(o['type'] for o in fn.abi['outputs'][0]['components'])})"]
    names = [o["name"] for o in fn.abi["outputs"][0]["components"]]
    out = {}
    for address, response in zip(addresses, responses, strict=True):
        if "error" in response or response.get("result") in (None, "0x"):
            raise MedmeterError(
                f"the node could not read the counters of {address} at block {block} ({response.get('error')}): it "
                "must keep historical state (an archive node, or anvil/ganache); point --rpc-url at one."
            )
        (values,) = abi_decode(output_types, bytes.fromhex(response["result"][2:]))
        out[address] = {COUNTER_FIELDS[name]: int(value) for name, value in zip(names, values, strict=True)}
    return out


def reconcile_counters(
    rows: pd.DataFrame, opening: dict[str, dict[str, int]], closing: dict[str, dict[str, int]]
) -> None:
    """Every counted figure of every row equals the contract's counters at `to_block` minus those at
    `from_block - 1`; raises naming each institution, field and both figures."""
    problems = []
    for row in rows.itertuples(index=False):
        for column in COUNTER_FIELDS.values():
            on_chain = closing[row.institution][column] - opening[row.institution][column]
            from_events = int(getattr(row, column))
            if on_chain != from_events:
                problems.append(f"{row.code} ({row.institution}) {column}: events {from_events}, chain {on_chain}")
    if problems:
        period = int(rows["period"].iloc[0])
        shown = "; ".join(problems[:12]) + (f"; and {len(problems) - 12} more" if len(problems) > 12 else "")
        raise ReconciliationError(
            f"period {period} does not reconcile with the contract's counters in {len(problems)} figure(s): {shown}. "
            "The exported events are not the chain's: re-export with `medmeter export --restart` from a node you "
            "trust and report again; if the difference stays, report this ledger to the platform operator."
        )


def period_info(ledger: Ledger, period: int) -> PeriodInfo:
    from_block, to_block = ledger.period_range(period)
    times = [datetime.fromtimestamp(ledger.w3.eth.get_block(n)["timestamp"], UTC) for n in (from_block, to_block)]
    return PeriodInfo(period, from_block, to_block, times[0], times[1])


def settle_period(ledger: Ledger, dataset: pd.DataFrame, period: int) -> PeriodSettlement:
    """The settlement of a closed period from the exported `dataset`, reconciled with the chain."""
    info = period_info(ledger, period)
    institutions = tuple(ledger.institutions(info.to_block))
    interactions = period_interactions(dataset, info)
    check_attribution(interactions, institutions, period)
    addresses = [i.address for i in institutions]
    rows = attach_positions(
        tally_period(interactions, institutions, info),
        read_positions(ledger, addresses, info.from_block - 1),
        read_positions(ledger, addresses, info.to_block),
    )
    reconcile(rows)
    # Counters first: they name the institution, the field and both figures; pricing then catches
    # what keeps every sum (a row's records or category).
    reconcile_counters(
        rows,
        read_counters(ledger, addresses, info.from_block - 1),
        read_counters(ledger, addresses, info.to_block),
    )
    check_pricing(ledger, interactions, period, info.from_block, info.to_block)
    return PeriodSettlement(
        info=info,
        institutions=institutions,
        rows=rows,
        matrix=exchange_matrix(interactions, institutions),
        categories=category_breakdown(interactions, period),
        interactions=interactions,
    )


# ---------------------------------------------------------------------------------- files


def settlement_paths(reports_dir: Path, period: int) -> SettlementFiles:
    return SettlementFiles(
        settlement_csv=reports_dir / f"settlement-{period}.csv",
        matrix_csv=reports_dir / f"settlement-{period}-exchange-matrix.csv",
        categories_csv=reports_dir / f"settlement-{period}-categories.csv",
        platform_fees_csv=reports_dir / f"settlement-{period}-platform-fees.csv",
    )


def _iso(moment: datetime | None) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ") if moment else ""


def settlement_sheet(settlement: PeriodSettlement) -> pd.DataFrame:
    """The settlement CSV: the rows with the period's UTC dates beside its blocks, then a TOTAL row
    (its figures summed over institutions; balances and debts too, so the ledger-wide position shows)."""
    rows = settlement.rows.copy()
    info = settlement.info
    rows.insert(rows.columns.get_loc("to_block") + 1, "from_time", _iso(info.from_time))
    rows.insert(rows.columns.get_loc("from_time") + 1, "to_time", _iso(info.to_time))
    summed = [c for c in SETTLEMENT_COLUMNS if c.endswith(("_count", "_units", "_balance", "_debt"))]
    total = {c: "" for c in rows.columns} | {c: int(rows[c].sum()) for c in summed}
    total |= {"period": info.period, "from_block": info.from_block, "to_block": info.to_block, "code": TOTAL_CODE}
    total |= {"from_time": _iso(info.from_time), "to_time": _iso(info.to_time), "name": "all institutions"}
    return pd.concat([rows, pd.DataFrame([total], columns=rows.columns)], ignore_index=True)


def platform_fees(settlement: PeriodSettlement) -> pd.DataFrame:
    """The platform's income for the period: the fee withheld from every exchange. The contract burns
    it (it is no institution's balance and no one's ERC-20 balance); this row is where it shows."""
    exchanges = settlement.interactions[settlement.interactions["kind"] == "exchange"]
    info = settlement.info
    return pd.DataFrame(
        [
            {
                "period": info.period,
                "from_block": info.from_block,
                "to_block": info.to_block,
                "from_time": _iso(info.from_time),
                "to_time": _iso(info.to_time),
                "exchanges": len(exchanges),
                "exchanged_units": int(exchanges["units"].sum()),
                "fee_units": int(exchanges["fee"].sum()),
            }
        ],
        columns=list(PLATFORM_FEE_COLUMNS),
    )


def spreadsheet_safe(frame: pd.DataFrame) -> pd.DataFrame:
    """Text cells a spreadsheet would run as a formula (=, +, -, @, tab, CR first) get a leading `'`
    (OWASP's CSV-injection advice), so a registered name such as `=HYPERLINK(...)` stays text."""
    out = frame.copy()
    for column in out.columns:
        if out[column].dtype == object or pd.api.types.is_string_dtype(out[column]):
            out[column] = out[column].map(
                lambda v: "'" + v if isinstance(v, str) and v.startswith(FORMULA_PREFIXES) else v
            )
    if out.index.dtype == object:
        out.index = out.index.map(lambda v: "'" + v if isinstance(v, str) and v.startswith(FORMULA_PREFIXES) else v)
    return out


def _csv(frame: pd.DataFrame, path: Path, **kwargs: Any) -> None:
    write_atomic(path, spreadsheet_safe(frame).to_csv(lineterminator="\n", **kwargs))


def write_settlement_csvs(settlement: PeriodSettlement, reports_dir: Path) -> SettlementFiles:
    paths = settlement_paths(reports_dir, settlement.period)
    _csv(settlement_sheet(settlement), paths.settlement_csv, index=False)
    _csv(settlement.matrix, paths.matrix_csv, index=True)
    _csv(settlement.categories, paths.categories_csv, index=False)
    _csv(platform_fees(settlement), paths.platform_fees_csv, index=False)
    return paths
