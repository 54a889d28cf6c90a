"""PNG charts of a period's settlement (matplotlib, Agg canvas: no display needed).

* net position per institution over the period: cumulative net units by block;
* the exchange matrix as a heatmap: who used whose data, in units;
* units by category, stacked by kind.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from medmeter.fileio import write_atomic
from medmeter.settlement.crediting import postings, signed_units
from medmeter.settlement.period import PeriodSettlement

KIND_COLOURS = {"sync": "#2a9d8f", "fetch": "#e76f51", "exchange": "#457b9d"}
DPI = 120


@dataclass(frozen=True)
class ChartFiles:
    net_position: Path
    exchange_matrix: Path
    categories: Path

    def all(self) -> tuple[Path, ...]:
        return (self.net_position, self.exchange_matrix, self.categories)


def chart_paths(reports_dir: Path, period: int) -> ChartFiles:
    return ChartFiles(
        net_position=reports_dir / f"settlement-{period}-net-position.png",
        exchange_matrix=reports_dir / f"settlement-{period}-exchange-matrix.png",
        categories=reports_dir / f"settlement-{period}-categories.png",
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
    blocks = sorted({settlement.info.from_block, *per_block.index, settlement.info.to_block})
    cumulative = per_block.reindex(index=blocks, columns=order, fill_value=0).cumsum()
    cumulative.index.name = "block"
    return cumulative.astype("int64")


def plot_net_position(settlement: PeriodSettlement, path: Path) -> Path:
    cumulative = net_by_block(settlement)
    figure = _figure(10, 5.5)
    axes = figure.add_subplot()
    for code in cumulative.columns:
        axes.step(cumulative.index, cumulative[code], where="post", label=code, linewidth=1.6)
    axes.axhline(0, color="grey", linewidth=0.8)
    info = settlement.info
    axes.set_title(
        f"Period {info.period}: cumulative net units per institution (blocks {info.from_block}-{info.to_block})"
    )
    axes.set_xlabel("block number")
    from matplotlib.ticker import MaxNLocator

    axes.xaxis.set_major_locator(MaxNLocator(integer=True))  # blocks are whole numbers
    axes.set_ylabel("cumulative net units (credited - debited)")
    axes.grid(True, alpha=0.3)
    axes.ticklabel_format(axis="x", style="plain", useOffset=False)
    axes.legend(title="institution", loc="best", fontsize="small", ncols=2 if len(cumulative.columns) > 6 else 1)
    _save(figure, path)
    return path


def plot_exchange_matrix(settlement: PeriodSettlement, path: Path) -> Path:
    matrix = settlement.matrix
    n = max(len(matrix), 1)
    figure = _figure(max(6.0, 1.0 + 0.9 * n), max(5.0, 0.8 + 0.75 * n))
    axes = figure.add_subplot()
    values = matrix.to_numpy(dtype=float) if len(matrix) else np.zeros((1, 1))
    image = axes.imshow(values, cmap="Blues", aspect="auto")
    axes.set_xticks(range(len(matrix.columns)), labels=list(matrix.columns), rotation=45, ha="right")
    axes.set_yticks(range(len(matrix.index)), labels=list(matrix.index))
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
    table = settlement.categories.pivot_table(
        index="category_name", columns="kind", values="units", aggfunc="sum", fill_value=0
    )
    kinds = [k for k in KIND_COLOURS if k in table.columns]
    figure = _figure(9, 5)
    axes = figure.add_subplot()
    bottom = np.zeros(len(table))
    for kind in kinds:
        axes.bar(table.index, table[kind], bottom=bottom, label=kind, color=KIND_COLOURS[kind])
        bottom += table[kind].to_numpy()
    axes.set_title(f"Period {settlement.period}: units by data category and interaction kind")
    axes.set_xlabel("data category")
    axes.set_ylabel("units")
    axes.tick_params(axis="x", labelrotation=30)
    axes.grid(True, axis="y", alpha=0.3)
    if kinds:
        axes.legend(title="kind")
    else:
        axes.text(0.5, 0.5, "no interactions in this period", ha="center", va="center", transform=axes.transAxes)
    _save(figure, path)
    return path


def write_charts(settlement: PeriodSettlement, reports_dir: Path) -> ChartFiles:
    paths = chart_paths(reports_dir, settlement.period)
    plot_net_position(settlement, paths.net_position)
    plot_exchange_matrix(settlement, paths.exchange_matrix)
    plot_categories(settlement, paths.categories)
    return paths
