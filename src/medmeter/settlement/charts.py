"""PNG charts of a period's settlement (matplotlib, Agg canvas: no display needed).

* net position per institution over the period: cumulative net units by block, from the
  period's first interaction to its last block (setup blocks without traffic are left out);
* each institution's closing net position (balance - debt) as bars;
* the exchange matrix as a heatmap: who used whose data, in units;
* units by category, credits (sync, exchange in) and debits (fetch, exchange out) apart.

Institutions are labelled "code name" everywhere, so a reader needs no lookup table.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from medmeter.fileio import write_atomic
from medmeter.settlement.crediting import (
    CREDITS,
    DEBITS,
    EXCHANGE_IN,
    EXCHANGE_OUT,
    FETCH,
    SYNC,
    postings,
    signed_units,
)
from medmeter.settlement.period import PeriodSettlement

DPI = 120


POSTING_COLOURS = {SYNC: "#2a9d8f", EXCHANGE_IN: "#8ab17d", FETCH: "#e76f51", EXCHANGE_OUT: "#457b9d"}
POSTING_LABELS = {SYNC: "sync", EXCHANGE_IN: "exchange in (after fee)", FETCH: "fetch", EXCHANGE_OUT: "exchange out"}
# Legend labels longer than this are cut, so the legend never crowds out the plot.
LABEL_WIDTH = 34


@dataclass(frozen=True)
class ChartFiles:
    net_position: Path
    closing_net: Path
    exchange_matrix: Path
    categories: Path

    def all(self) -> tuple[Path, ...]:
        return (self.net_position, self.closing_net, self.exchange_matrix, self.categories)


def chart_paths(reports_dir: Path, period: int) -> ChartFiles:
    return ChartFiles(
        net_position=reports_dir / f"settlement-{period}-net-position.png",
        closing_net=reports_dir / f"settlement-{period}-closing-net.png",
        exchange_matrix=reports_dir / f"settlement-{period}-exchange-matrix.png",
        categories=reports_dir / f"settlement-{period}-categories.png",
    )


def institution_labels(settlement: PeriodSettlement) -> dict[str, str]:
    """code -> "code name", cut to LABEL_WIDTH characters."""
    labels = {}
    for info in settlement.institutions:
        text = f"{info.code} {info.name}"
        labels[info.code] = text if len(text) <= LABEL_WIDTH else text[: LABEL_WIDTH - 1] + "…"
    return labels


def _period_dates(settlement: PeriodSettlement) -> str:
    info = settlement.info
    if info.from_time is None or info.to_time is None:
        return f"blocks {info.from_block}-{info.to_block}"
    return (
        f"{info.from_time:%Y-%m-%d %H:%M} - {info.to_time:%Y-%m-%d %H:%M} UTC, blocks {info.from_block}-{info.to_block}"
    )


def _figure(width: float, height: float):  # -> Figure
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _save(figure, path: Path) -> None:  # figure: Figure
    import io

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    write_atomic(path, buffer.getvalue())


def net_by_block(settlement: PeriodSettlement) -> pd.DataFrame:
    """Cumulative net units per institution code (columns) after each block with activity (index),
    starting at 0 at the period's first block and ending at its last block."""
    codes = settlement.codes()
    order = [i.code for i in settlement.institutions]
    entries = postings(settlement.interactions)
    deltas = pd.DataFrame(
        {"block": entries["block_number"], "code": entries["institution"].map(codes), "units": signed_units(entries)}
    )
    per_block = deltas.pivot_table(index="block", columns="code", values="units", aggfunc="sum", fill_value=0)
    # From the block before the first interaction (net 0), not the period's first block: a period that
    # starts with registrations and tariff setup would otherwise spend most of the chart's width flat.
    first = max(settlement.info.from_block, int(per_block.index.min()) - 1) if len(per_block) else None
    blocks = sorted(
        {first if first is not None else settlement.info.from_block, *per_block.index, settlement.info.to_block}
    )
    cumulative = per_block.reindex(index=blocks, columns=order, fill_value=0).cumsum()
    cumulative.index.name = "block"
    return cumulative.astype("int64")


def plot_net_position(settlement: PeriodSettlement, path: Path) -> Path:
    cumulative = net_by_block(settlement)
    labels = institution_labels(settlement)
    figure = _figure(11, 5.5)
    axes = figure.add_subplot()
    for code in cumulative.columns:
        axes.step(cumulative.index, cumulative[code], where="post", label=labels.get(code, code), linewidth=1.6)
    axes.axhline(0, color="grey", linewidth=0.8)
    info = settlement.info
    axes.set_title(f"Period {info.period}: cumulative net units per institution\n{_period_dates(settlement)}")
    axes.set_xlabel("block number")
    from matplotlib.ticker import MaxNLocator

    axes.xaxis.set_major_locator(MaxNLocator(integer=True))  # blocks are whole numbers
    axes.set_ylabel("cumulative net units (credited - debited)")
    axes.grid(True, alpha=0.3)
    axes.ticklabel_format(axis="x", style="plain", useOffset=False)
    axes.legend(title="institution", loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize="small")
    _save(figure, path)
    return path


def plot_closing_net(settlement: PeriodSettlement, path: Path) -> Path:
    """Each institution's closing net position (balance - debt at the period's last block)."""
    rows = settlement.rows
    labels = institution_labels(settlement)
    net = (rows["closing_balance"] - rows["closing_debt"]).to_numpy()
    names = [labels.get(code, code) for code in rows["code"]]
    figure = _figure(9, max(3.0, 1.2 + 0.45 * len(rows)))
    axes = figure.add_subplot()
    colours = ["#2a9d8f" if value >= 0 else "#e76f51" for value in net]
    axes.barh(names, net, color=colours)
    axes.axvline(0, color="grey", linewidth=0.8)
    axes.invert_yaxis()  # registration order, top to bottom
    for index, value in enumerate(net):
        axes.text(
            value, index, f" {int(value):,} ", va="center", ha="left" if value >= 0 else "right", fontsize="small"
        )
    axes.set_title(f"Period {settlement.period}: closing net position (balance - debt)\n{_period_dates(settlement)}")
    axes.set_xlabel("units (green: in credit, red: owes the platform)")
    axes.grid(True, axis="x", alpha=0.3)
    _save(figure, path)
    return path


def plot_exchange_matrix(settlement: PeriodSettlement, path: Path) -> Path:
    matrix = settlement.matrix
    n = max(len(matrix), 1)
    figure = _figure(max(6.0, 1.0 + 0.9 * n), max(5.0, 0.8 + 0.75 * n))
    axes = figure.add_subplot()
    values = matrix.to_numpy(dtype=float) if len(matrix) else np.zeros((1, 1))
    image = axes.imshow(values, cmap="Blues", aspect="auto")
    labels = institution_labels(settlement)
    axes.set_xticks(
        range(len(matrix.columns)), labels=[labels.get(c, c) for c in matrix.columns], rotation=45, ha="right"
    )
    axes.set_yticks(range(len(matrix.index)), labels=[labels.get(c, c) for c in matrix.index])
    axes.set_xlabel("provider (whose data was used)")
    axes.set_ylabel("consumer (who used it)")
    axes.set_title(f"Period {settlement.period}: exchanged units, consumer x provider")
    peak = values.max() if values.size else 0
    for (row, column), value in np.ndenumerate(values):
        if value:
            colour = "white" if value > peak / 2 else "black"
            axes.text(column, row, f"{int(value):,}", ha="center", va="center", color=colour, fontsize="small")
    figure.colorbar(image, ax=axes, label="units debited from the consumer")
    _save(figure, path)
    return path


def plot_categories(settlement: PeriodSettlement, path: Path) -> Path:
    """Units per data category: what institutions were credited (left) and debited (right), by posting."""
    entries = postings(settlement.interactions, carry=("category_name",))
    table = entries.pivot_table(index="category_name", columns="posting", values="units", aggfunc="sum", fill_value=0)
    figure = _figure(12, 5)
    panels = ((CREDITS, "credited to institutions"), (DEBITS, "debited from institutions"))
    for index, (kinds, title) in enumerate(panels, start=1):
        axes = figure.add_subplot(1, 2, index)
        present = [k for k in kinds if k in table.columns]
        bottom = np.zeros(len(table))
        for posting in present:
            axes.bar(
                table.index,
                table[posting],
                bottom=bottom,
                label=POSTING_LABELS[posting],
                color=POSTING_COLOURS[posting],
            )
            bottom += table[posting].to_numpy()
        axes.set_title(title)
        axes.set_xlabel("data category")
        axes.set_ylabel("units")
        axes.tick_params(axis="x", labelrotation=30)
        axes.grid(True, axis="y", alpha=0.3)
        if present:
            axes.legend(title="posting", fontsize="small")
        else:
            axes.text(0.5, 0.5, "none in this period", ha="center", va="center", transform=axes.transAxes)
    figure.suptitle(f"Period {settlement.period}: units by data category ({_period_dates(settlement)})")
    _save(figure, path)
    return path


def write_charts(settlement: PeriodSettlement, reports_dir: Path) -> ChartFiles:
    paths = chart_paths(reports_dir, settlement.period)
    plot_net_position(settlement, paths.net_position)
    plot_closing_net(settlement, paths.closing_net)
    plot_exchange_matrix(settlement, paths.exchange_matrix)
    plot_categories(settlement, paths.categories)
    return paths
